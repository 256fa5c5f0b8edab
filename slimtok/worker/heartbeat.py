"""A worker's heartbeat file: ``heartbeats/<worker>.json``, what ``slimtok status`` and the launcher's
progress line read.

Written (not durably: a lost beat is replaced by the next) when the worker starts, at each claim,
every ``interval`` seconds while it runs and once when it exits. A tick's CPU readings cover the
time since the previous tick; a write between ticks repeats them, so every reading is of a whole
interval. Every write also carries the worker's totals since it started: seconds per phase
(:class:`~.stats.Phases`), CPU seconds and bytes read and written, from which status tells what
bounds the worker.
"""

from __future__ import annotations

import logging
import time

import psutil

from ..claims import Holder
from ..errors import OutputError
from ..protocol import Heartbeat, OutputRoot, write_record
from .stats import Stats

log = logging.getLogger("slimtok.worker")


class Heartbeats:
    """Writes one worker's heartbeat file."""

    def __init__(self, root: OutputRoot, name: str, me: Holder, worker_index: int, stats: Stats, interval: float):
        self.root, self.name, self.me, self.index = root, name, me, worker_index
        self.stats, self.interval = stats, interval
        self._proc = psutil.Process()
        self._readings = (0.0, 0.0, 0.0)  # tokens/s, CPU %, host CPU % at the last tick
        self._last = (time.time(), 0)  # (time, tokens) at the last tick
        self._refused = False  # a link at the heartbeat file was reported (once)

    def start(self) -> None:
        """Start the CPU clocks (the first tick's reading covers one interval) and write "starting",
        so status lists the worker before its first interval ends."""
        self._proc.cpu_percent(None)
        psutil.cpu_percent(None)
        self._last = (time.time(), self.stats.tokens)
        self.write("starting", None, strict=True)

    def tick(self, shard: str | None) -> None:
        """The periodic beat: measure the token rate and CPU use since the last tick."""
        now = time.time()
        rate = (self.stats.tokens - self._last[1]) / max(now - self._last[0], 1e-6)
        self._last = (now, self.stats.tokens)
        self._readings = (rate, self._proc.cpu_percent(None), psutil.cpu_percent(None))
        self.write("working" if shard else "waiting", shard)

    def write(self, state: str, shard: str | None, strict: bool = False) -> None:
        """Write the heartbeat with the last tick's readings. A link found at the heartbeat file is
        refused (nothing is written through it); at the start (``strict``) that stops the worker, as
        any link in its root does, but once running it is logged once and the beats go on: they run
        on the thread that refreshes the worker's claims, which must not die over a status file."""
        rate, cpu, host_cpu = self._readings
        io = self.stats.io_bytes()
        try:
            write_record(self.root.heartbeat(self.name), Heartbeat(
                worker=self.name, host=self.me.host, pid=self.me.pid, process_index=self.me.process_index,
                worker_index=self.index, shard=shard, state=state,
                documents=self.stats.documents, tokens=self.stats.tokens, text_chars=self.stats.text_chars,
                shards_done=self.stats.shards_done, tokens_per_second=round(rate, 1), cpu_percent=cpu,
                rss_bytes=self._proc.memory_info().rss, updated_at=time.time(), started_at=self.stats.started,
                interval=self.interval, host_cpu_percent=host_cpu,
                host_cpus=psutil.cpu_count() or 0,
                phases={k: round(v, 3) for k, v in self.stats.phases.totals().items()},
                cpu_seconds=round(self.stats.cpu_seconds(), 3), bytes_read=io[0] if io else None,
                bytes_written=io[1] if io else None), durable=False)
        except OSError as exc:  # a full disk must not kill the heartbeat thread silently
            log.warning("%s: cannot write heartbeat: %s", self.name, exc)
        except OutputError as exc:
            if strict:
                raise
            if not self._refused:
                log.warning("%s: %s", self.name, exc)
            self._refused = True
