"""The document index format: ``<name>.idx`` beside its token file ``<name>.bin`` (:func:`index_path`).

One uint64 (little-endian, no header) per document of the split file: the document's end offset
in tokens, exclusive, so the last entry equals the split's token count and entries strictly
increase. :class:`DocEnds` writes it from per-document token counts (or absolute ends);
:func:`read_doc_index` reads it back. combine, consume and mix write it; ``slimtok.data`` and
validate read it. numpy is imported on first use, so ``import slimtok.protocol`` stays without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .storage import storage_for

if TYPE_CHECKING:
    import numpy as np

#: The numpy dtype of one entry.
DOC_INDEX_DTYPE = "<u8"


def index_path(data: Path) -> Path:
    """The document index of the token file ``data`` (``train.bin`` -> ``train.idx``)."""
    return data.with_suffix(".idx")


class DocEnds:
    """Writes a document index: for each document, its end offset in tokens (exclusive, uint64
    little-endian), from a stream of per-document token counts. ``tokens``/``documents`` so far."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.tokens = 0
        self.documents = 0

    def add(self, counts: np.ndarray | Sequence[int]) -> None:
        """Append the documents whose token counts are ``counts``, in order."""
        import numpy as np

        counts = np.asarray(counts, dtype=np.uint64)
        ends = np.cumsum(counts, dtype=np.uint64) + np.uint64(self.tokens)
        self.out.write(ends.astype(DOC_INDEX_DTYPE, copy=False).tobytes())
        self.tokens = int(ends[-1]) if ends.size else self.tokens
        self.documents += int(counts.size)

    def add_absolute(self, ends: np.ndarray) -> None:
        """Append documents given by their end offsets in the whole output (an eos scan's output)."""
        import numpy as np

        ends = np.asarray(ends, dtype=np.uint64)
        self.out.write(ends.astype(DOC_INDEX_DTYPE, copy=False).tobytes())
        if ends.size:
            self.tokens = int(ends[-1])
            self.documents += int(ends.size)


def read_doc_index(path: Path) -> np.ndarray:
    """The document ends of ``path`` as a read-only uint64 array (memory-mapped; empty file: none).
    FileNotFoundError when the index is missing (its reader says which command writes it)."""
    import numpy as np

    if storage_for(path).stat(path).size == 0:
        return np.zeros(0, dtype=DOC_INDEX_DTYPE)
    return np.memmap(path, dtype=DOC_INDEX_DTYPE, mode="r")
