"""The files a shard task writes: append-only part files with a running sha256, and prefix copies."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

#: Bytes per read when a resume copies a checkpointed prefix.
COPY_BLOCK = 8 << 20


class PartFile:
    """One claim's part file: created empty, appended to, hashed as written, synced on commit.

    Invariant: ``size`` bytes have been written and ``sha256()`` is their digest.
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1
        self.size = 0
        self._hasher = hashlib.sha256()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)
        write_all(self.fd, data)
        self.size += len(data) if isinstance(data, bytes) else data.nbytes

    def restart(self) -> None:
        """Empty the file again (a resume that found its prefix short)."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.size = 0
        self._hasher = hashlib.sha256()

    def datasync(self) -> None:
        os.fdatasync(self.fd)

    def sync_close(self) -> None:
        try:
            os.fsync(self.fd)
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def sha256(self) -> str:
        return self._hasher.hexdigest()


def copy_prefix(source: Path, part: PartFile, size: int) -> bool:
    """Append the first ``size`` bytes of ``source`` to ``part`` and sync; False if it is short."""
    if size == 0:
        return True
    try:
        src = open(source, "rb")
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
    then says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.R_OK):
        return None
    return st.st_size, st.st_mtime_ns


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
