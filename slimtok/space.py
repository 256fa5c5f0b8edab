"""Free space on a filesystem, and byte counts as people read them: the one free-space check of
every stage that writes (tokenize's disk budget, publish, mirror, export) and the one byte
formatter of every message and status column."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError


@dataclass
class DiskSpace:
    """Free (for unprivileged writers) and total bytes of the filesystem holding ``path``."""

    path: str
    free: int
    total: int


def disk_space(path: str | os.PathLike[str]) -> DiskSpace:
    """Free and total bytes of the filesystem of ``path``, or of its nearest existing parent."""
    here = Path(path).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    st = os.statvfs(here)
    return DiskSpace(str(here), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def lacks_room(path: str | os.PathLike[str], needed_bytes: int, keep_fraction: float = 0.0) -> DiskSpace | None:
    """The free-space check of every stage that writes: the filesystem of ``path`` when writing
    ``needed_bytes`` there would not fit or would leave less than ``keep_fraction`` of it free
    (for the caller's message); None when it fits."""
    space = disk_space(path)
    return space if space.free - needed_bytes < keep_fraction * space.total else None


def has_room(path: str | os.PathLike[str], needed_bytes: int, min_free_fraction: float) -> bool:
    """Whether writing ``needed_bytes`` under ``path`` leaves ``min_free_fraction`` of its filesystem
    free (always, for ``min_free_fraction`` 0: the user turned the check off)."""
    return min_free_fraction <= 0 or lacks_room(path, needed_bytes, min_free_fraction) is None


def check_free_space(path: str | os.PathLike[str], needed_bytes: int, min_free_fraction: float) -> None:
    """Refuse (``OutputError``) when writing ``needed_bytes`` under ``path`` would leave less than
    ``min_free_fraction`` of its filesystem free; ``min_free_fraction`` 0 turns the check off."""
    space = lacks_room(path, needed_bytes, min_free_fraction) if min_free_fraction > 0 else None
    if space is not None:
        left = space.free - needed_bytes
        keep = min_free_fraction * space.total
        raise OutputError(
            f"needs about {format_bytes(needed_bytes)} for token files but its filesystem has "
            f"{format_bytes(space.free)} free of {format_bytes(space.total)}; that would leave "
            f"{format_bytes(max(left, 0))}, less than the {min_free_fraction:.0%} ({format_bytes(int(keep))}) "
            "to keep free",
            path=str(path),
            fix="free space or choose another --output-root, or pass --min-free-fraction 0 to start anyway")


def format_bytes(n: int) -> str:
    """Bytes in the largest unit that keeps a number >= 1 (decimal units, as df -H prints)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n} B"
