"""The document table format: ``documents/<id>.docs``, one ``DOC_TABLE_DTYPE`` row per document.

A row is 24 bytes, little-endian, no header (docs/FORMATS.md): the document's token count
(separators included; a table's counts sum to its shard's tokens), its source (an index into the
done record's ``source_names``) and the xxh3-128 hash of its exact text bytes. The file names are
``OutputRoot.table`` (finished) and ``OutputRoot.table_part`` (being written by a claim); a worker
appends :func:`table_rows` to the part file and renames it into place on commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .binary import dtype
from .storage import storage_for

if TYPE_CHECKING:
    import numpy as np

#: Written into checkpoints and done records as ``table_version``; 0 there means no table.
DOC_TABLE_VERSION = 1


def table_rows(lengths: Sequence[int], sources: Sequence[int], digests: bytes) -> np.ndarray:
    """Rows for consecutive documents: token counts, source indexes and their xxh3-128 digests
    (16 bytes each, big-endian high half then low half, as ``xxh3_128().digest()`` gives them)."""
    import numpy as np

    rows = np.empty(len(lengths), dtype=dtype("DOC_TABLE_DTYPE"))
    rows["tokens"] = lengths
    rows["source"] = sources
    halves = np.frombuffer(digests, dtype=">u8").reshape(-1, 2)
    rows["hash_hi"] = halves[:, 0]
    rows["hash_lo"] = halves[:, 1]
    return rows


def read_doc_table(path: Path) -> np.ndarray:
    """A document table as a read-only structured array (memory-mapped; empty file: no rows)."""
    import numpy as np

    row = dtype("DOC_TABLE_DTYPE")
    if storage_for(path).stat(path).size == 0:
        return np.zeros(0, dtype=row)
    return np.memmap(path, dtype=row, mode="r")
