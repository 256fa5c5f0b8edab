"""A worker's running totals (for heartbeats) and its journal of committed shards (for status)."""

from __future__ import annotations

import logging
import os
import threading
import time

from ..protocol import DoneRecord, OutputRoot, journal_line
from .files import write_all

log = logging.getLogger("slimtok.worker")


class Stats:
    """Thread-safe running totals for heartbeats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.documents = self.tokens = self.text_chars = self.shards_done = 0
        self.started = time.time()

    def add(self, documents: int, tokens: int, chars: int) -> None:
        with self._lock:
            self.documents += documents
            self.tokens += tokens
            self.text_chars += chars


def append_journal(root: OutputRoot, worker: str, record: DoneRecord) -> None:
    """Append the shard's status row to this worker's journal (a cache: failures only warn)."""
    path = root.done_journal(worker)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            write_all(fd, journal_line(record))
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("%s: cannot append to %s: %s (status will open the done record instead)",
                    record.shard, path, exc)
