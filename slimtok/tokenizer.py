"""Step 4: turn document texts into token ids.

Loads a tokenizer from a ``tokenizer.json`` file, a local folder, or a Hugging Face Hub repo id,
and encodes batches of documents into one flat array: ``tokens(doc) + [eos]`` per document, with
no BOS or template tokens, and with special-token strings inside the text (``<|endoftext|>`` in
a web page) encoded as ordinary text. The eos id is the only special id that ever reaches the
output, which is what lets readers find document boundaries by scanning for it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import orjson
from tokenizers import Tokenizer

DTYPES = ("uint32", "uint16", "auto")
#: eos strings tried, in order, when neither --eos-id nor tokenizer_config.json names one.
COMMON_EOS = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")
_REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


class TokenizerError(Exception):
    """The tokenizer cannot be loaded or used as asked; the message says what to do."""


@dataclass(frozen=True)
class LoadedTokenizer:
    """A tokenizer with the identity facts a job is pinned to."""

    tokenizer: Tokenizer
    source: str
    sha256: str
    vocab_size: int
    eos_token_id: int
    eos_token: str | None

    def to_json(self) -> str:
        return self.tokenizer.to_str()


def _eos_from_config(folder: Path) -> str | None:
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        data = orjson.loads(config.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise TokenizerError(f"{config}: not valid JSON ({exc})") from exc
    eos = data.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None


def _from_transformers(source: str) -> tuple[Tokenizer, str | None]:
    """Load through transformers, for folders and repos without a tokenizer.json."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # transformers raises many types; all mean "cannot load"
        raise TokenizerError(f"cannot load tokenizer {source!r}: {exc}") from exc
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"tokenizer {source!r} has no fast (tokenizers) version; "
                             "convert it and save a tokenizer.json")
    return backend, tok.eos_token


def _resolve(source: str) -> tuple[Tokenizer, str | None]:
    path = Path(source).expanduser()
    if path.is_file():
        return _read_file(path), _eos_from_config(path.parent)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return _read_file(path / "tokenizer.json"), _eos_from_config(path)
        return _from_transformers(str(path))
    if not _REPO_ID.fullmatch(source) or source.startswith((".", "~")):
        raise TokenizerError(f"tokenizer {source!r}: no such file or folder")
    return _from_hub(source)


def _read_file(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust loader raises a bare Exception
        raise TokenizerError(f"{path}: not a tokenizers JSON file ({exc})") from exc


def _from_hub(repo_id: str) -> tuple[Tokenizer, str | None]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(hf_hub_download(repo_id, "tokenizer.json"))
    except EntryNotFoundError:
        return _from_transformers(repo_id)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise TokenizerError(f"cannot fetch tokenizer {repo_id!r} from the Hub: {exc}. Mirror it with "
                             f"`slimtok mirror {repo_id} --repo-type model --include 'tokenizer*'` and pass "
                             "the folder instead") from exc
    try:
        hf_hub_download(repo_id, "tokenizer_config.json")
    except (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError):
        pass
    return _read_file(path), _eos_from_config(path.parent)


def max_id_plus_one(tok: Tokenizer) -> int:
    """Number of ids a reader must allow: highest id + 1, added tokens included."""
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1


def load_tokenizer(source: str, eos_id: int | None = None) -> LoadedTokenizer:
    """Load ``source`` and settle the eos id (explicit, from tokenizer_config.json, or well known)."""
    tok, eos_token = _resolve(source)
    vocab_size = max_id_plus_one(tok)
    if eos_id is None:
        candidates = [eos_token] if eos_token else list(COMMON_EOS)
        for name in candidates:
            found = tok.token_to_id(name) if name else None
            if found is not None:
                eos_id, eos_token = found, name
                break
        else:
            raise TokenizerError(f"tokenizer {source!r} names no eos token that it knows "
                                 f"(tried {', '.join(c for c in candidates if c)}); pass --eos-id")
    elif not 0 <= eos_id < vocab_size:
        raise TokenizerError(f"--eos-id {eos_id} is outside the vocabulary (0..{vocab_size - 1})")
    else:
        eos_token = tok.id_to_token(eos_id)
    sha = hashlib.sha256(tok.to_str().encode()).hexdigest()
    return LoadedTokenizer(tok, source, sha, vocab_size, eos_id, eos_token)


def resolve_dtype(requested: str, vocab_size: int) -> str:
    """The on-disk dtype: uint32, or uint16 when asked (or auto) and every id fits."""
    if requested not in DTYPES:
        raise TokenizerError(f"dtype {requested!r} is not one of {', '.join(DTYPES)}")
    fits16 = vocab_size <= 1 << 16
    if requested == "uint16" and not fits16:
        raise TokenizerError(f"--dtype uint16 cannot hold {vocab_size} ids (at most 65536); use uint32")
    if requested == "auto":
        return "uint16" if fits16 else "uint32"
    return requested


class Encoder:
    """Encodes batches of documents into one flat id array, eos after each document."""

    def __init__(self, tokenizer: Tokenizer, eos_id: int, dtype: str):
        tok = Tokenizer.from_str(tokenizer.to_str())  # a private copy: its settings change below
        tok.no_padding()
        tok.no_truncation()
        tok.encode_special_tokens = True
        self._tok = tok
        self.eos_id = eos_id
        self.dtype = np.dtype(dtype)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """(flat ids, per-document lengths including eos) for ``texts``."""
        encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        ids = [e.ids for e in encodings]
        lengths = [len(x) + 1 for x in ids]
        flat = np.empty(sum(lengths), dtype=self.dtype)
        pos = 0
        for doc, n in zip(ids, lengths):
            flat[pos:pos + n - 1] = doc
            flat[pos + n - 1] = self.eos_id
            pos += n
        return flat, lengths
