"""An export's own folder: files linked from the source root where the bytes match, published as one
set, with a record of what the export wrote there.

Reads the source root's files it links (``<split>.bin``, ``<split>.idx``) and, in the export
folder, ``slimtok-export.json`` (:data:`EXPORT_RECORD`); writes only in the export folder. The
record lists the files the last export there wrote: an export replaces or removes only those, and
refuses a name it needs that another program's file holds. Every file of a set, the record last,
is published through :class:`~slimtok.publish.PendingSet`, so a kill leaves the old set or the
new one.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import orjson

from ..errors import ExportError
from ..protocol import SPLIT_FILES, Meta, storage_for
from ..publish import PendingSet, require_free
from ..spans import copy_range

#: In each export folder: the target and the files the last export there wrote (JSON).
EXPORT_RECORD = "slimtok-export.json"


def chosen_splits(meta: Meta, splits: Sequence[str] | None) -> list[str]:
    """``splits`` as given, else every combined split in the order of SPLIT_FILES."""
    return list(splits) if splits else [s for s in SPLIT_FILES if s in meta.splits]


def link_or_copy(src: Path, tmp: Path) -> str:
    """Make ``tmp`` (a new file) hold ``src``'s bytes without a user-space copy; returns how: a hard
    link, else (another filesystem, links not allowed) a kernel copy, which copy_file_range makes a
    reflink on XFS/btrfs."""
    storage = storage_for(tmp)
    try:
        storage.link(src, tmp)
        return "hard link"
    except OSError:
        pass
    require_free(tmp.parent, storage_for(src).stat(src).size, f"copying {src.name}")
    with storage_for(src).open_read(src) as s, storage.open_write(tmp, "create") as d:
        copy_range(s.fileno(), d.fileno(), 0, os.fstat(s.fileno()).st_size)
        storage.sync(d)
    return "kernel copy"


def write_blocks(tmp: Path, blocks: Iterable[np.ndarray], header: bytes = b"") -> None:
    """``tmp`` (a new file, created exclusively through the storage, so a link planted at its name is
    never written through) holds ``header`` then each block's C-order bytes; streamed, so a block
    bounds the memory used."""
    storage = storage_for(tmp)
    with storage.open_write(tmp, "create") as f:
        f.write(header)
        for block in blocks:
            f.write(np.ascontiguousarray(block).data)
        storage.sync(f)


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """numpy's .npy header (format 1.0, C order) for an array of ``dtype`` and ``shape``: with the
    array's bytes after it, the file ``np.load`` and ``open_memmap`` read."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})
    return out.getvalue()


def recorded_files(folder: Path) -> set[str]:
    """The files an earlier export recorded writing in ``folder`` (none without a record). A record
    that is not an export's is refused rather than replaced."""
    path = folder / EXPORT_RECORD
    try:
        raw = storage_for(path).read_whole(path)
    except FileNotFoundError:
        return set()
    try:
        names = orjson.loads(raw)["files"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ExportError("is not a slimtok export record (no list of files), so it is not replaced", path,
                          "move it away, or pass another --prefix") from None
    # a listed name is a plain file of this folder, never a path elsewhere
    return {n for n in names if isinstance(n, str) and n == Path(n).name and n != EXPORT_RECORD}


class ExportFolder:
    """The new files ``names`` of one export folder (the first is the data file, the rest its
    partners), written under temporary names and published with the record, replacing the files the
    previous export there recorded (those it no longer writes are removed)."""

    def __init__(self, folder: Path, target: str, names: Sequence[str]):
        self.folder, self.target, self.names = folder, target, list(names)
        self.recorded: set[str] = set()
        self._pending = PendingSet([folder / n for n in self.names] + [folder / EXPORT_RECORD])

    def __enter__(self) -> ExportFolder:
        storage = storage_for(self.folder)
        self.recorded = recorded_files(self.folder) if storage.exists(self.folder) else set()
        foreign = [n for n in self.names if n not in self.recorded and storage.exists(self.folder / n)]
        if foreign:
            raise ExportError(f"holds {foreign[0]}, which no earlier export there recorded writing (its "
                              f"{EXPORT_RECORD} does not list it), so it is not replaced", self.folder,
                              "move it away, or pass another --prefix")
        self._pending.__enter__()
        return self

    def tmp(self, name: str) -> Path:
        """The temporary file to write ``name``'s new version to."""
        return self._pending.tmp(self.folder / name)

    def write(self, name: str, data: bytes) -> None:
        """``name``'s new version holds ``data``."""
        tmp = self.tmp(name)
        storage = storage_for(tmp)
        with storage.open_write(tmp, "create") as f:
            f.write(data)
            storage.sync(f)

    def publish(self) -> None:
        """Every file written and the record appear together; recorded files not written again go."""
        self.write(EXPORT_RECORD, orjson.dumps({"target": self.target, "files": self.names},
                                               option=orjson.OPT_INDENT_2))
        self._pending.publish(obsolete=[self.folder / n for n in sorted(self.recorded - set(self.names))])

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._pending.__exit__(kind, exc, tb)
