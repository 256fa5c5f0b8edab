"""The binary records' dtypes and the checksums done records give their data.

Writes nothing. The dtypes are built on first use (:func:`dtype`), so a process that only handles
JSON records (a launcher, a relaunch, ``slimtok status``) never imports numpy, whose import costs
about a third of a tokenizer's load; ``slimtok.protocol.DOC_TABLE_DTYPE`` and the other names of
``DTYPE_FIELDS`` resolve through it. Each binary file format has its own module with its file
names, writer and reader (:mod:`.doctable`, :mod:`.docindex`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import xxhash

from ..errors import IntegrityError, SlimtokError
from .storage import storage_for

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

#: The fields of the binary records, as numpy dtypes named ``DOC_TABLE_DTYPE``, ``DEDUP_ROW_DTYPE``
#: and ``DEDUP_DROP_DTYPE`` (attributes of ``slimtok.protocol``, built on first use by :func:`dtype`).
DTYPE_FIELDS: dict[str, list[tuple[str, str]]] = {
    # One row of a shard's document table (24 bytes, little-endian, no header; docs/FORMATS.md).
    # hash_hi/hash_lo are the high and low 64 bits of xxh3-128 of the document's UTF-8 text.
    "DOC_TABLE_DTYPE": [("tokens", "<u4"), ("source", "<u4"), ("hash_hi", "<u8"), ("hash_lo", "<u8")],
    # One scatter row: a document's hash and its place in the global order (see slimtok.dedup.plan).
    "DEDUP_ROW_DTYPE": [("hash_hi", "<u8"), ("hash_lo", "<u8"), ("order", "<u8")],
    # One dropped document: its global order and why (DEDUP_REASONS index).
    "DEDUP_DROP_DTYPE": [("order", "<u8"), ("reason", "u1")],
}

_DTYPES: dict[str, Any] = {}


def dtype(name: str) -> np.dtype:
    """The numpy dtype ``name`` (a ``DTYPE_FIELDS`` key), built once."""
    built = _DTYPES.get(name)
    if built is None:
        import numpy as np

        built = _DTYPES[name] = np.dtype(DTYPE_FIELDS[name])
    return built


def read_tokens(path: Path, token_dtype: str | np.dtype) -> np.ndarray:
    """A token file (a shard's data, a combined split) as a read-only array of ``token_dtype``,
    memory-mapped. An empty file is an empty array: a split with no documents is valid data (zero
    tokens), and mmap(2) cannot map zero bytes. FileNotFoundError when the file is missing; a size
    that is not whole tokens is refused (IntegrityError naming the file), never mapped short."""
    import numpy as np

    size = storage_for(path).stat(path).size
    if size % np.dtype(token_dtype).itemsize:
        raise IntegrityError(f"{size:,} bytes, not a whole number of {np.dtype(token_dtype).name} tokens (cut or "
                           "appended to after it was written)", path, "write it again with the command that wrote it")
    if size == 0:
        return np.zeros(0, dtype=token_dtype)
    return np.memmap(path, dtype=token_dtype, mode="r")


#: The checksums a done record may give its data, by name. sha256 is what tokenize records (and
#: every record before ``DoneRecord.checksum`` existed); a mix records xxh3-128, which runs at
#: memory speed where sha256 runs slower than the copy it checks. Both detect corruption and
#: truncation; neither is a defence against someone who rewrites a record on purpose.
CHECKSUMS: dict[str, Callable[[], Any]] = {"sha256": hashlib.sha256, "xxh3-128": xxhash.xxh3_128}


@dataclass(frozen=True)
class Checksum:
    """A digest and the algorithm (a ``CHECKSUMS`` name) that made it; ``str()`` is ``algorithm:hex``."""

    algorithm: str
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """The inverse of ``str()``; an unknown algorithm is kept (``hasher`` refuses it)."""
        algorithm, _, hexdigest = text.partition(":")
        return cls(algorithm, hexdigest)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"

    def hasher(self) -> Any:
        """A fresh hash object of the algorithm (``update``, ``hexdigest``); SlimtokError for a
        name this version does not know (a record from a newer writer)."""
        return hasher(self.algorithm)

    def matches(self, h: Any) -> bool:
        return h.hexdigest() == self.hexdigest


def hasher(algorithm: str) -> Any:
    """A fresh hash object of the ``CHECKSUMS`` algorithm ``algorithm``."""
    try:
        return CHECKSUMS[algorithm]()
    except KeyError:
        raise SlimtokError(f"unknown checksum algorithm {algorithm!r} (this slimtok knows {', '.join(CHECKSUMS)})",
                           fix="a newer slimtok wrote the record: read the root with that version") from None
