"""Fast paths give the ids of the plain path: flat arrays with eos, dtypes, and huge documents cut in pieces."""

import importlib.util

import numpy as np
import pytest
from tokenizers import Tokenizer, models

import slimtok.tokenizer.encoder as tokmod
from helpers.corpus import sample_documents
from helpers.tokenizer_families import slow_qwen3
from slimtok.tokenizer import DocumentPolicy, Encoder, TokenizerError, load_tokenizer, max_id_plus_one

BACKENDS = ["tokenizers", pytest.param("fastokens", marks=pytest.mark.skipif(
    importlib.util.find_spec("fastokens") is None, reason="fastokens not installed"))]


def whole_ids(tokenizer_json: str, text: str) -> list[int]:
    """The reference: the whole document in one tokenizers call."""
    tok = Tokenizer.from_str(tokenizer_json)
    tok.encode_special_tokens = True
    return tok.encode(text, add_special_tokens=False).ids


def huge_text(seed: int) -> str:
    """Real text joined with the shapes that matter at a cut: newline runs, whitespace before
    newlines, letters, marks and CJK right after newlines, special-token strings next to them."""
    glue = ["\n", "\n\n", " \n", "\t\n  ", "\r\n", "\n\n\n   ", "\n<|endoftext|>", "<|im_end|>\n"]
    starts = ["word", "Émile", "東京", "\u0301accent", "123", " space", "'s", "ёлка", "\u1100\u1161"]
    rng = np.random.default_rng(seed)
    parts = []
    for doc in sample_documents(120, seed=seed):
        parts += [doc, glue[rng.integers(len(glue))], starts[rng.integers(len(starts))]]
    return "".join(parts)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", [slow_qwen3("bpe"), slow_qwen3("qwen3")])
def test_huge_document_cut_in_pieces_equals_whole_document(which, backend, bpe_tokenizer, qwen3_tokenizer,
                                                           monkeypatch):
    folder = bpe_tokenizer if which == "bpe" else qwen3_tokenizer
    loaded = load_tokenizer(str(folder))
    enc = Encoder(loaded.tokenizer, loaded.policy, "uint32", backend)
    monkeypatch.setattr(tokmod, "HUGE_DOC_CHARS", 4000)
    text = huge_text(seed=11)
    step = tokmod.HUGE_DOC_CHARS // 2
    assert len(list(enc.encode_pieces(text[i:i + step] for i in range(0, len(text), step)))) > 20  # really cut
    small = "a short one"
    flat, lengths = enc.encode([small, text, small])
    spec = loaded.to_json()
    want = np.concatenate([whole_ids(spec, small), [loaded.eos_token_id], whole_ids(spec, text),
                           [loaded.eos_token_id], whole_ids(spec, small), [loaded.eos_token_id]])
    assert np.array_equal(flat, want)
    assert lengths == [len(whole_ids(spec, small)) + 1, len(whole_ids(spec, text)) + 1,
                       len(whole_ids(spec, small)) + 1]


def newline_a_encoder() -> tuple[Encoder, Tokenizer, int]:
    """(encoder, reference, eos) of a vocabulary with a merged "\\n" + "a" token and no
    pre-tokenizer, where cutting between a newline and "a" changes ids."""
    chars = sorted(set("\nabc <|endoftext|>"))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["\na"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("\n", "a")]))
    tok.add_special_tokens(["<|endoftext|>"])
    reference = Tokenizer.from_str(tok.to_str())  # the encoder configures and keeps tok
    eos = tok.token_to_id("<|endoftext|>")
    return Encoder(tok, DocumentPolicy(eos, "<|endoftext|>"), "uint32", "tokenizers"), reference, eos


def test_a_cut_that_would_change_ids_is_not_taken(monkeypatch):
    """Every newline is followed by "a" (and no space by a letter): the window check must refuse
    every such place and the result stays the whole encoding, in one piece."""
    enc, tok, eos = newline_a_encoder()
    monkeypatch.setattr(tokmod, "HUGE_DOC_CHARS", 200)
    monkeypatch.setattr(tokmod, "CUT_RETRY_CHARS", 1)
    text = "abc\nab\nab\n" * 200  # every newline is followed by "a"
    assert len(list(enc.encode_pieces(text[i:i + 100] for i in range(0, len(text), 100)))) == 1
    flat, _ = enc.encode([text])
    assert np.array_equal(flat, whole_ids(tok.to_str(), text) + [eos])


def test_pieces_whose_meeting_point_changes_ids_are_carried_over(monkeypatch):
    """encode_pieces cuts after newlines before "b" or "c" but carries the text over before "a",
    so the ids stay the whole encoding."""
    enc, tok, eos = newline_a_encoder()
    monkeypatch.setattr(tokmod, "CUT_RETRY_CHARS", 1)
    pieces = ["abc\n", "ab\nab c\n", "a\n", "b\n", "c", "ab\n", "abc"] * 400
    chunks = list(enc.encode_pieces(pieces))
    assert 1 < len(chunks) < len(pieces)
    assert np.array_equal(np.concatenate(chunks), whole_ids(tok.to_str(), "".join(pieces)) + [eos])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_flat_array_has_eos_after_each_document_in_the_asked_dtype(backend, dtype, bpe_tokenizer):
    loaded = load_tokenizer(str(bpe_tokenizer))
    enc = Encoder(loaded.tokenizer, DocumentPolicy(0, "<|endoftext|>"), dtype, backend)
    texts = sample_documents(30, seed=5) + ["", "x"]  # an empty text still gets its eos
    flat, lengths = enc.encode(texts)
    spec = loaded.to_json()
    docs = [whole_ids(spec, t) for t in texts]
    assert flat.dtype == np.dtype(dtype)
    assert np.array_equal(flat, np.concatenate([np.append(np.array(d, dtype=np.int64), 0) for d in docs]))
    assert lengths == [len(d) + 1 for d in docs]


def test_ids_the_dtype_cannot_hold_are_refused(qwen3_tokenizer):
    loaded = load_tokenizer(str(qwen3_tokenizer))
    enc = Encoder(loaded.tokenizer, loaded.policy, "uint16", "tokenizers")
    with pytest.raises(TokenizerError, match="uint16 cannot hold"):
        enc.encode(["plain ascii ends with the eos id 151645, which needs uint32"])


def test_id_count_of_a_vocabulary_with_gaps_is_its_highest_id_plus_one():
    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 7, "c": 3}, merges=[]))
    assert max_id_plus_one(tok) == 8
    tok.add_special_tokens(["<eos>"])
    assert max_id_plus_one(tok) == max(tok.get_vocab(with_added_tokens=True).values()) + 1
