"""A worker's running totals (for heartbeats) and its journal of committed shards (for status)."""

from __future__ import annotations

import logging
import threading
import time

from ..protocol import DoneRecord, OutputRoot, journal_line

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
        with root.storage.open_write(path, "append") as f:
            f.write(journal_line(record))
    except OSError as exc:
        log.warning("%s: cannot append to %s: %s (status will open the done record instead)",
                    record.shard, path, exc)
