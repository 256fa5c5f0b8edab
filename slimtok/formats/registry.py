"""The one list of input formats slimtok reads: file-name suffix -> record layout and compression.

manifest (which files are shards, and their ids), mirror (which recorded files are shards) and the
reader (how to open one) all ask this module; a suffix missing here is read by none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

#: Record layouts: JSON lines, a parquet file, an Arrow IPC stream (``datasets.save_to_disk``).
JSONL, PARQUET, ARROW = "jsonl", "parquet", "arrow"


@dataclass(frozen=True)
class InputFormat:
    """One readable file kind. ``compression`` names a stream in :mod:`slimtok.formats.streams`."""

    suffix: str
    layout: str
    compression: str = ""


#: Longest suffix first, so ``x.jsonl.zst`` is never taken for ``x.jsonl`` + ``.zst``.
FORMATS: tuple[InputFormat, ...] = tuple(sorted((
    InputFormat(".jsonl.zst", JSONL, "zstd"),
    InputFormat(".jsonl.gz", JSONL, "gzip"),
    InputFormat(".json.gz", JSONL, "gzip"),
    InputFormat(".jsonl.bz2", JSONL, "bz2"),
    InputFormat(".jsonl.xz", JSONL, "xz"),
    InputFormat(".jsonl", JSONL),
    InputFormat(".zst", JSONL, "zstd"),
    InputFormat(".parquet", PARQUET),
    InputFormat(".arrow", ARROW),
), key=lambda f: -len(f.suffix)))
SUFFIXES: tuple[str, ...] = tuple(f.suffix for f in FORMATS)


def format_of(name: str | PurePath) -> InputFormat | None:
    """The format a file name ends in, or None when slimtok does not read it."""
    name = PurePath(name).name if isinstance(name, PurePath) else name.rsplit("/", 1)[-1]
    return next((f for f in FORMATS if name.endswith(f.suffix) and len(name) > len(f.suffix)), None)


def strip_suffix(name: str) -> str:
    """``name`` without its format suffix (a shard id's last component); unchanged when unknown."""
    fmt = format_of(name)
    return name[: -len(fmt.suffix)] if fmt else name
