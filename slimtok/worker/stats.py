"""A worker's running totals (for heartbeats), the phases its wall time went to, and its journal
of committed shards (for status)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psutil

from ..protocol import DoneRecord, OutputRoot, journal_line
from ..protocol.records import PHASES

log = logging.getLogger("slimtok.worker")


T = TypeVar("T")


class Phases:
    """The wall time of a worker's main thread, split into :data:`~slimtok.protocol.PHASES`.

    A switch (:meth:`enter`) charges the time since the previous switch to the phase that was
    current, so the phases never overlap and their sum is at most the wall time since the clock
    started (the rest is time in no phase: start-up, loading the tokenizer). Switches happen around
    batch- and block-level calls (one ``perf_counter`` each), never per document. Only the thread
    that owns the clock switches it; :meth:`totals` may be read from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds = dict.fromkeys(PHASES, 0.0)
        self._current: str | None = None
        self._since = time.perf_counter()

    def enter(self, phase: str | None) -> str | None:
        """Make ``phase`` current (None: no phase); returns the phase it replaces."""
        now = time.perf_counter()
        with self._lock:
            if self._current is not None:
                self._seconds[self._current] += now - self._since
            previous, self._current, self._since = self._current, phase, now
        return previous

    @contextmanager
    def phase(self, name: str | None) -> Iterator[None]:
        """Charge the ``with`` body to ``name``; the phase current before resumes after it."""
        previous = self.enter(name)
        try:
            yield
        finally:
            self.enter(previous)

    def timed(self, name: str, items: Iterable[T]) -> Iterator[T]:
        """``items``, with the time each one takes to produce charged to ``name`` (the consumer's
        time between items stays with whatever phase the consumer is in)."""
        it = iter(items)
        while True:
            previous = self.enter(name)
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.enter(previous)
            yield item
            del item  # a huge document's raw line must not outlive its use while the next is read

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far, the current phase counted up to now."""
        now = time.perf_counter()
        with self._lock:
            totals = dict(self._seconds)
            if self._current is not None:
                totals[self._current] += now - self._since
        return totals


class Stats:
    """Thread-safe running totals for heartbeats, and the worker's :class:`Phases`.

    ``cpu_seconds`` and ``io_bytes`` count from this object's creation (the worker's start), so a
    worker run inside a longer-lived process reports only its own share.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.documents = self.tokens = self.text_chars = self.shards_done = 0
        self.phases = Phases()
        self.started = time.time()
        self._proc = psutil.Process()
        self._cpu = time.process_time()
        self._io = self._io_counters()

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) this process used since the worker started."""
        return time.process_time() - self._cpu

    def io_bytes(self) -> tuple[int, int] | None:
        """(bytes read, bytes written) through read/write calls since the worker started, from the
        kernel's per-process counters (Linux ``/proc/<pid>/io`` rchar, wchar: what the worker asked
        of its filesystems, page-cache hits included); None where the platform has no such counters."""
        now = self._io_counters()
        if now is None or self._io is None:
            return None
        return now[0] - self._io[0], now[1] - self._io[1]

    def _io_counters(self) -> tuple[int, int] | None:
        try:
            counters = self._proc.io_counters()  # absent on macOS: AttributeError
        except (AttributeError, psutil.Error):
            return None
        # read_chars/write_chars (Linux) count every read/write call; read_bytes only disk fetches
        return (getattr(counters, "read_chars", counters.read_bytes),
                getattr(counters, "write_chars", counters.write_bytes))

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
