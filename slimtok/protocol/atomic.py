"""Durable whole-file writes and record reads, through the storage that holds each path.

Writes files anywhere under an output root (and the manifest files ``slimtok manifest`` writes).
Invariants: a record or whole file is written to a private temporary name, synced, then renamed
(``write_atomic``) or linked (``create_exclusive``) into place, so a reader sees the old or the
new content, never a mix; ``durable=False`` skips the syncs where a crash that loses the file also
kills its only user (claims). A record's bytes are exactly ``Record.to_json()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from .records import R, Record
from .storage import storage_for


def fsync_dir(path: Path) -> None:
    """Make a rename or link inside ``path`` durable (a no-op where directories can't be opened)."""
    storage_for(path).sync_folder(path)


def write_atomic(path: Path, payload: bytes, durable: bool = True) -> None:
    """Replace ``path`` with ``payload`` so readers see the old or the new content, never a mix."""
    storage_for(path).write_whole(path, payload, durable)


def create_exclusive(path: Path, payload: bytes, durable: bool = True) -> bool:
    """Create ``path`` with ``payload`` unless it exists; True when this call created it
    (``Storage.create_exclusive``: link(2) of a private file on POSIX, safe on NFS)."""
    return storage_for(path).create_exclusive(path, payload, durable)


def read_record(path: Path, cls: type[R]) -> R | None:
    """The record at ``path``, or None when it is missing or not a complete record."""
    try:
        return parse_record(storage_for(path).read_whole(path), cls)
    except (FileNotFoundError, NotADirectoryError):
        return None


def parse_record(raw: bytes, cls: type[R]) -> R | None:
    """The record that ``raw`` (a record file's bytes) holds, or None when it is not a complete one."""
    try:
        return cls.from_dict(orjson.loads(raw))
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return None


def write_record(path: Path, record: Record, durable: bool = True) -> None:
    write_atomic(path, record.to_json(), durable)


def json_lines(rows: Iterable[Any]) -> bytes:
    """One compact JSON document per row and line (``manifest.jsonl``); a row with ``to_dict`` (a
    ``ShardEntry``) is stored as that."""
    return b"".join(orjson.dumps(row.to_dict() if hasattr(row, "to_dict") else row) + b"\n" for row in rows)


def write_json_lines(path: Path, rows: Iterable[Any], durable: bool = True) -> None:
    """Replace ``path`` with :func:`json_lines` of ``rows``, written whole as ``write_atomic`` does."""
    write_atomic(path, json_lines(rows), durable)
