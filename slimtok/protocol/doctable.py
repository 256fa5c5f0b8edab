"""The document table format: ``documents/<id>.docs``, one ``DOC_TABLE_DTYPE`` row per document.

A row is 24 bytes, little-endian, no header (docs/FORMATS.md): the document's token count
(separators included; a table's counts sum to its shard's tokens), its source (an index into the
done record's ``source_names``) and the xxh3-128 hash of its exact text bytes. The file names are
``OutputRoot.table`` (finished) and ``OutputRoot.table_part`` (being written by a claim); a worker
appends :func:`table_rows` to the part file and renames it into place on commit.

Every reader of a finished table goes through :func:`read_checked_table`, which holds the table's
bytes in memory and checks exactly those against the shard's done record (size, sha256, token sum,
per-source counts) before returning them: a table is at most 1/100 of its shard's data, and a check
over the very bytes used cannot pass a byte that changed between the check and the use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import IntegrityError
from .binary import dtype
from .records import DoneRecord
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


def redo_shard(record: DoneRecord) -> str:
    """The fix for a shard whose files disagree with its done record."""
    return f"delete done/{record.shard}.json and relaunch tokenize to redo the shard"


def read_checked_table(path: Path, record: DoneRecord, done: Path, verify: bool = True) -> np.ndarray:
    """The table of ``record``'s shard at ``path`` (read-only rows in memory), after checking it
    against the record: its size is ``table_bytes`` = one row per document, its sha256 (with
    ``verify``) is ``table_sha256``, its token counts sum to ``tokens``, and per source name its
    rows' documents and tokens are the record's ``sources`` (a record edited after it was written is
    refused rather than copied into meta.json). IntegrityError naming the table otherwise, or the
    done record (at ``done``) when its per-source counts are what disagree."""
    import hashlib

    import numpy as np

    row = dtype("DOC_TABLE_DTYPE")
    try:
        payload = storage_for(path).read_whole(path)
    except FileNotFoundError as exc:
        raise IntegrityError(f"missing, but done/{record.shard}.json says the shard is finished", path,
                             redo_shard(record)) from exc
    if len(payload) != record.table_bytes or len(payload) != record.documents * row.itemsize:
        raise IntegrityError(f"{len(payload):,} bytes, but its done record says {record.table_bytes:,} "
                             f"({record.documents:,} documents of {row.itemsize} bytes): changed after it was written",
                             path, redo_shard(record))
    if verify and hashlib.sha256(payload).hexdigest() != record.table_sha256:
        raise IntegrityError("sha256 does not match its done record (changed after it was written)", path,
                             redo_shard(record))
    table = np.frombuffer(payload, dtype=row)
    tokens = int(table["tokens"].sum(dtype=np.int64))
    if tokens != record.tokens:
        raise IntegrityError(f"its rows hold {tokens:,} tokens, but its done record says {record.tokens:,}", path,
                             redo_shard(record))
    _check_sources(table, record, done)
    return table


def _check_sources(table: np.ndarray, record: DoneRecord, done: Path) -> None:
    """Per named source, the table's documents and tokens equal the record's ``sources``. Rows with
    the empty name are documents without a source (not counted in ``sources``) or with an empty
    one (counted under ""), so the record's "" entry may only be at most the table's."""
    import numpy as np

    names = record.source_names
    column = np.asarray(table["source"], dtype=np.int64)
    if column.size and int(column.max()) >= max(len(names), 1):
        raise IntegrityError(f"the shard's document table names source {int(column.max())}, but the record lists "
                             f"{len(names)} source names", done, redo_shard(record))
    documents = np.bincount(column, minlength=len(names)) if column.size else np.zeros(len(names), np.int64)
    tokens = (np.bincount(column, weights=table["tokens"], minlength=len(names)) if column.size
              else np.zeros(len(names)))
    found = {name: {"documents": int(documents[i]), "tokens": int(tokens[i])} for i, name in enumerate(names)}
    for name in set(found) | set(record.sources):
        have = found.get(name, {"documents": 0, "tokens": 0})
        said = record.sources.get(name, {"documents": 0, "tokens": 0})
        keys = ("documents", "tokens")
        if any(said.get(k, 0) != have[k] if name else said.get(k, 0) > have[k] for k in keys):
            raise IntegrityError(f"counts source {name!r} as {said}, but the shard's document table holds "
                                 f"{have}: the record was changed after it was written", done, redo_shard(record))
