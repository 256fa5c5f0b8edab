"""The document index format: ``<name>.idx`` beside its token file ``<name>.bin`` (:func:`index_path`).

One uint64 (little-endian, no header) per document of the split file: the document's end offset
in tokens, exclusive, so the last entry equals the split's token count and entries strictly
increase. :class:`DocEnds` writes it from per-document token counts (or absolute ends);
:func:`read_doc_index` reads it back. combine, consume and mix write it; ``slimtok.data`` and
validate read it. numpy is imported on first use, so ``import slimtok.protocol`` stays without it.

Integrity: :class:`DocEnds` hashes what it writes (xxh3-128, :attr:`DocEnds.checksum`), which its
writer records in the split's meta entry as ``index_checksum``; every reader goes through
:func:`read_checked_index`, which checks the index against that entry (entry count, last end, the
checksum over the whole file) before it serves a single end. An entry without a checksum (meta.json
of an older slimtok) gets the structural checks: strictly increasing ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import xxhash

from ..errors import IntegrityError
from .binary import Checksum
from .storage import storage_for

if TYPE_CHECKING:
    import numpy as np

#: The numpy dtype of one entry.
DOC_INDEX_DTYPE = "<u8"
#: The checksum ``DocEnds`` records (a ``protocol.CHECKSUMS`` name): at memory speed, so a reader
#: hashing the whole index costs about one read of it (docs/BENCHMARKS.md, "Integrity on read").
INDEX_CHECKSUM = "xxh3-128"
#: Index entries hashed or scanned at once by a reader (64 MiB).
_CHECK_ENTRIES = 1 << 23


def index_path(data: Path) -> Path:
    """The document index of the token file ``data`` (``train.bin`` -> ``train.idx``)."""
    return data.with_suffix(".idx")


class DocEnds:
    """Writes a document index: for each document, its end offset in tokens (exclusive, uint64
    little-endian), from a stream of per-document token counts. ``tokens``/``documents`` so far.
    ``out`` None: nothing is written, only :attr:`checksum` computed (what the index should hash to)."""

    def __init__(self, out: BinaryIO | None):
        self.out = out
        self.tokens = 0
        self.documents = 0
        self._digest = xxhash.xxh3_128()

    @property
    def checksum(self) -> str:
        """``xxh3-128:<hex>`` of every byte written so far (a meta entry's ``index_checksum``)."""
        return str(Checksum(INDEX_CHECKSUM, self._digest.hexdigest()))

    def _write(self, ends: np.ndarray) -> None:
        payload = ends.astype(DOC_INDEX_DTYPE, copy=False).tobytes()
        self._digest.update(payload)
        if self.out is not None:
            self.out.write(payload)

    def add(self, counts: np.ndarray | Sequence[int]) -> None:
        """Append the documents whose token counts are ``counts``, in order."""
        import numpy as np

        counts = np.asarray(counts, dtype=np.uint64)
        ends = np.cumsum(counts, dtype=np.uint64) + np.uint64(self.tokens)
        self._write(ends)
        self.tokens = int(ends[-1]) if ends.size else self.tokens
        self.documents += int(counts.size)

    def add_absolute(self, ends: np.ndarray) -> None:
        """Append documents given by their end offsets in the whole output (an eos scan's output)."""
        import numpy as np

        ends = np.asarray(ends, dtype=np.uint64)
        self._write(ends)
        if ends.size:
            self.tokens = int(ends[-1])
            self.documents += int(ends.size)


def read_doc_index(path: Path) -> np.ndarray:
    """The document ends of ``path`` as a read-only uint64 array (memory-mapped; empty file: none).
    FileNotFoundError when the index is missing (its reader says which command writes it),
    IntegrityError when its size is not whole entries."""
    import numpy as np

    size = storage_for(path).stat(path).size
    if size % np.dtype(DOC_INDEX_DTYPE).itemsize:
        raise IntegrityError(f"{size:,} bytes, not a whole number of 8-byte document ends (cut or appended to after "
                             "it was written)", path, "write it again with the command that wrote its split")
    if size == 0:
        return np.zeros(0, dtype=DOC_INDEX_DTYPE)
    return np.memmap(path, dtype=DOC_INDEX_DTYPE, mode="r")


def read_checked_index(path: Path, documents: int, tokens: int, checksum: str | None, fix: str) -> np.ndarray:
    """The document ends of ``path`` (as :func:`read_doc_index`), served only after checking them
    against what their writer recorded: ``documents`` entries, the last equal to ``tokens`` (the
    token file's length), and with ``checksum`` (a meta entry's ``index_checksum``) the hash of the
    whole file; without one, strictly increasing ends. IntegrityError naming the index, with
    ``fix`` (the command that writes it again), otherwise."""
    import numpy as np

    try:
        size = storage_for(path).stat(path).size
    except FileNotFoundError as exc:
        raise IntegrityError("is missing beside its token file (the pair was not published together)", path,
                             fix) from exc
    itemsize = np.dtype(DOC_INDEX_DTYPE).itemsize
    if size != documents * itemsize:
        raise IntegrityError(f"{size:,} bytes, but meta.json records {documents:,} documents ({itemsize} bytes each)",
                             path, fix)
    ends = read_doc_index(path)
    last = int(ends[-1]) if len(ends) else 0
    if last != tokens:
        raise IntegrityError(f"its last document ends at token {last:,}, but the token file holds {tokens:,}",
                             path, fix)
    if checksum:
        want = Checksum.parse(checksum)
        h = want.hasher()
        for lo in range(0, len(ends), _CHECK_ENTRIES):
            h.update(np.ascontiguousarray(ends[lo:lo + _CHECK_ENTRIES]).data.cast("B"))
        if not want.matches(h):
            raise IntegrityError(f"{want.algorithm} does not match meta.json's index_checksum (changed after it was "
                                 "written)", path, fix)
        return ends
    previous = 0
    for lo in range(0, len(ends), _CHECK_ENTRIES):
        block = np.asarray(ends[lo:lo + _CHECK_ENTRIES])
        if int(block[0]) <= previous or not bool((block[1:] > block[:-1]).all()):
            raise IntegrityError("its document ends do not strictly increase (damaged)", path, fix)
        previous = int(block[-1])
    return ends
