"""The files a shard task writes: append-only part files with a running sha256, and prefix copies.

Part files (``OutputRoot.part``/``table_part``) are opened, synced and read through their
:class:`~slimtok.protocol.Storage`; ``source_state`` stats an input shard (outside the root).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import ObjectStoreError
from ..protocol import storage_for
from ..remote import is_remote, stat_object

#: Bytes per read when a resume copies a checkpointed prefix.
COPY_BLOCK = 8 << 20


class PartFile:
    """One claim's part file: created empty, appended to, hashed as written, synced on commit.

    Invariant: ``size`` bytes have been written and ``sha256()`` is their digest.
    """

    def __init__(self, path: Path):
        self.path = path
        self.storage = storage_for(path)
        self.file: BinaryIO | None = None
        self.size = 0
        self._hasher = hashlib.sha256()

    def open(self) -> None:
        self.file = self.storage.open_write(self.path, "truncate")

    def _open(self) -> BinaryIO:
        if self.file is None:
            raise ValueError(f"{self.path} is not open")
        return self.file

    def write(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)
        f = self._open()
        f.write(data)
        f.flush()  # in the kernel at once: closing an abandoned part then has nothing left to fail on
        self.size += len(data) if isinstance(data, bytes) else data.nbytes

    def restart(self) -> None:
        """Empty the file again (a resume that found its prefix short)."""
        f = self._open()
        f.truncate(0)
        f.seek(0)
        self.size = 0
        self._hasher = hashlib.sha256()

    def datasync(self) -> None:
        self.storage.sync(self._open(), data_only=True)

    def sync_close(self) -> None:
        try:
            self.storage.sync(self._open())
        finally:
            self.close()

    def close(self) -> None:
        if self.file is not None:
            f, self.file = self.file, None
            f.close()

    def sha256(self) -> str:
        return self._hasher.hexdigest()


def copy_prefix(source: Path, part: PartFile, size: int) -> bool:
    """Append the first ``size`` bytes of ``source`` to ``part`` and sync; False if it is short."""
    if size == 0:
        return True
    try:
        src = storage_for(source).open_read(source)
    except FileNotFoundError:
        return False
    with src:
        if os.fstat(src.fileno()).st_size < size:
            return False
        remaining = size
        while remaining:
            block = src.read(min(COPY_BLOCK, remaining))
            if not block:
                return False
            part.write(block)
            remaining -= len(block)
    part.datasync()
    return True


def source_state(path: str | Path) -> tuple[int, int] | None:
    """(size, mtime in ns) of an input shard; None if it is not a readable regular file (the reader
    then says why). An object's mtime is its store's last-modified time (one HEAD)."""
    if is_remote(path):
        try:
            info = stat_object(str(path))
        except ObjectStoreError:
            return None
        return info.size, info.mtime_ns
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.R_OK):
        return None
    return st.st_size, st.st_mtime_ns
