"""Small tokenizers of each family slimtok supports, trained here on real text (no network).

``build_family(name, folder)`` writes ``tokenizer.json`` (and ``tokenizer_config.json`` where the
family has one) into ``folder`` and returns it. ``FAMILIES`` maps each name to what a test needs
to know independently of slimtok: the eos string, and the bos string the family's own template
puts before a sequence (None: none) and the one its config names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from helpers.corpus import sample_documents

#: Llama-3's split regex (letters, 1-3 digits, punctuation runs, newlines, spaces).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
VOCAB = 2000


@dataclass(frozen=True)
class Family:
    """What a tokenizer family is expected to do, stated without asking slimtok."""

    build: Callable[[Path], Tokenizer | None]
    eos: str
    #: what the family's post-processor template puts before a single sequence
    template_bos: str | None
    #: the bos_token its tokenizer_config.json names (None: the config names none)
    config_bos: str | None
    #: whether the folder has a tokenizer_config.json
    has_config: bool = True


def _texts() -> list[str]:
    return sample_documents(300, seed=1) + ["東京 Москва مرحبا नमस्ते 안녕하세요 👍 café naïve"] * 20


def _write(tok: Tokenizer, folder: Path, config: dict | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    if config is not None:
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
        (folder / "tokenizer_config.json").write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))


def _gpt2(folder: Path) -> None:
    """Byte-level BPE with GPT-2's one special token serving as bos and eos."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_texts(), trainer)
    _write(tok, folder, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})


def _llama3(folder: Path) -> None:
    """Llama-3 style: split regex, then byte-level without its own regex; a BOS template."""
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_texts(), trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    _write(tok, folder, {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})


def _llama2(folder: Path) -> None:
    """Llama-2/Mistral style: BPE over "▁"-joined text with byte fallback, a ``<s> $A`` template."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(_texts(), trainer)
    tok = _with_byte_fallback(tok)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", bos)])
    _write(tok, folder, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})


def _with_byte_fallback(tok: Tokenizer) -> Tokenizer:
    """``tok`` with the 256 byte pieces in its BPE vocabulary and byte fallback on (the trainer adds none)."""
    data = orjson.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    data["model"]["byte_fallback"] = True
    return Tokenizer.from_str(orjson.dumps(data).decode())


def _sentencepiece_bpe(normalizer: normalizers.Normalizer | None,
                       pre_tokenizer: pre_tokenizers.PreTokenizer | None) -> Tokenizer:
    """A BPE shaped as SentencePiece trains one (pieces never span a word's leading "▁", as real
    Llama-2/Mistral vocabularies), with byte fallback and a ``<s> $A`` template, then given the
    normalizer and pre-tokenizer a converted tokenizer.json has."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(_texts(), trainer)
    tok = _with_byte_fallback(tok)
    tok.normalizer = normalizer  # type: ignore[assignment]  # None: no normalizer, as the JSON's null
    tok.pre_tokenizer = pre_tokenizer  # type: ignore[assignment]
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def _llama2_prepend(folder: Path) -> None:
    """Llama-2/Mistral as their tokenizer.json is: ``Prepend("▁")`` + ``Replace(" ", "▁")``, no
    pre-tokenizer (the model sees each text whole), byte fallback."""
    tok = _sentencepiece_bpe(normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]), None)
    _write(tok, folder, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})


def _metaspace(scheme: str, split: bool) -> Callable[[Path], None]:
    """Llama-2 as newer converters write it: no normalizer, a ``Metaspace`` pre-tokenizer."""
    def build(folder: Path) -> None:
        tok = _sentencepiece_bpe(None, pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=split))
        _write(tok, folder, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    return build


def _unigram(folder: Path) -> None:
    """SentencePiece-style Unigram with Metaspace; ``</s>`` is eos and also a piece of the vocabulary."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(_texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B:1 </s>:1",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    _write(tok, folder, {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})


def _wordpiece(folder: Path) -> None:
    """BERT-style WordPiece; ``[CLS] $A [SEP]`` template, ``[SEP]`` as eos."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_texts(), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    _write(tok, folder, {"eos_token": "[SEP]", "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]"})


def _qwen3(folder: Path) -> None:
    from slimtok.demo import write_qwen3_tokenizer

    write_qwen3_tokenizer(folder)


FAMILIES: dict[str, Family] = {
    "gpt2": Family(_gpt2, "<|endoftext|>", None, "<|endoftext|>"),
    "llama3": Family(_llama3, "<|end_of_text|>", "<|begin_of_text|>", "<|begin_of_text|>"),
    "llama2": Family(_llama2, "</s>", "<s>", "<s>"),
    "unigram": Family(_unigram, "</s>", None, None),
    "wordpiece": Family(_wordpiece, "[SEP]", "[CLS]", None),
    "qwen3": Family(_qwen3, "<|im_end|>", None, None),
}

#: Variants of the families above by the normalizer and pre-tokenizer shapes a huge document's cut
#: rule depends on (``Prepend``, ``Metaspace`` with each prepend scheme, split or not), built like them.
CUT_VARIANTS: dict[str, Family] = {
    "llama2_prepend": Family(_llama2_prepend, "</s>", "<s>", "<s>"),
    "metaspace_first": Family(_metaspace("first", False), "</s>", "<s>", "<s>"),
    "metaspace_always": Family(_metaspace("always", True), "</s>", "<s>", "<s>"),
    "metaspace_never": Family(_metaspace("never", True), "</s>", "<s>", "<s>"),
}


def slow_qwen3(*values: str) -> object:
    """One parametrize case; marked slow where it names Qwen3, whose 151k-id tokenizer every such
    case loads (most of the unit tests' time: they run in the README command, not in the fast lane)."""
    if "qwen3" in values:
        return pytest.param(*values, marks=pytest.mark.slow)
    return values[0] if len(values) == 1 else values


def build_family(name: str, folder: str | Path) -> Path:
    """Write family (or cut variant) ``name``'s tokenizer folder at ``folder``; returns the folder."""
    folder = Path(folder)
    (FAMILIES.get(name) or CUT_VARIANTS[name]).build(folder)
    return folder


def documents(folder: Path) -> list[str]:
    """Real text, every special-token string of the tokenizer inside text, empty and multi-script texts."""
    specials = [t.content for t in Tokenizer.from_file(str(folder / "tokenizer.json"))
                .get_added_tokens_decoder().values()]
    inside = [f"x{s}y {s} {s}{s}\n{s}" for s in specials]
    return sample_documents(12, seed=9) + inside + ["", " ", "東京 Москва مرحبا नमस्ते 안녕 👩‍👩‍👧 e\u0301", ""]


def expected_bos(name: str, bos: str) -> str | None:
    """The bos string the documented policy gives, from the family's facts (not from slimtok)."""
    fam = FAMILIES[name]
    if bos == "never":
        return None
    if bos == "auto":
        return fam.template_bos
    return fam.config_bos or fam.template_bos


def independent(folder: Path, texts: list[str], bos: str | None, eos: str, special_text: str) -> list[list[int]]:
    """Each document's ids by tokenizers alone: no template, separators added here."""
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.encode_special_tokens = special_text == "literal"
    head = [] if bos is None else [tok.token_to_id(bos)]
    return [head + tok.encode(t, add_special_tokens=False).ids + [tok.token_to_id(eos)] for t in texts]
