"""What ``slimtok status`` reports: plain records, filled by :mod:`.collect`, shown by :mod:`.text`
and :mod:`.prometheus`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..budget import TokenBytesEstimate
from ..protocol import Heartbeat
from ..space import DiskSpace


@dataclass
class SplitStatus:
    """Shard counts and sizes of one split; documents/tokens include running shards' checkpoints."""

    shards: int = 0
    done: int = 0
    running: int = 0
    failed: int = 0
    pending: int = 0
    documents: int = 0
    tokens: int = 0
    bytes_in: int = 0       # compressed source bytes of done shards
    bytes_out: int = 0      # token bytes written (done shards and checkpoints)
    source_bytes: int = 0   # compressed source bytes of every shard
    bytes_left: int = 0     # compressed source bytes of running and pending shards
    done_tokens: int = 0    # tokens of done shards only (their ratio predicts the rest)


@dataclass
class Throughput:
    """What finished between ``started_at`` and ``ended_at`` (done records), plus the live workers'
    current rate. The span is the latest run of workers (from their heartbeats), cut to the last
    ``--window`` seconds of it: ``running`` says whether it is still going (it ends now) or ended
    when its last worker's heartbeat did. ``seconds`` 0: no worker ever beat, rates unknown."""

    seconds: float = 0.0
    started_at: float = 0.0
    ended_at: float = 0.0
    running: bool = False
    shards: int = 0
    documents: int = 0
    tokens: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    live_tokens_per_second: float = 0.0

    def per_second(self, amount: int) -> float:
        return amount / self.seconds if self.seconds > 0 else 0.0


@dataclass
class WorkerStatus:
    """One worker's last heartbeat, its age by the file server's clock, and a verdict."""

    heartbeat: Heartbeat
    age: float
    health: str  # ok | stale (heartbeat overdue) | dead (pid gone on this host) | exited

    @property
    def measured(self) -> bool:
        """False for a "starting" heartbeat: its rates and CPU cover no interval yet."""
        return self.heartbeat.state != "starting"


@dataclass
class DiskStatus:
    """Token bytes written (done shards and checkpoints), still expected, and the filesystem's room."""

    written: int
    expected: TokenBytesEstimate
    space: DiskSpace | None  # None: the output root's filesystem could not be asked


@dataclass
class StageStatus:
    """Progress of a later stage kept under the output root (e.g. dedup buckets); see :mod:`.stages`."""

    name: str
    unit: str
    done: int
    total: int
    detail: str = ""


@dataclass
class JobStatus:
    root: str
    now: float
    splits: dict[str, SplitStatus] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    #: shards whose done record cannot be parsed (counted as pending): {shard: what happens next}
    unreadable: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerStatus] = field(default_factory=list)
    throughput: Throughput = field(default_factory=Throughput)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    disk: DiskStatus | None = None
    stages: list[StageStatus] = field(default_factory=list)

    @property
    def total(self) -> SplitStatus:
        t = SplitStatus()
        for s in self.splits.values():
            for name in vars(t):
                setattr(t, name, getattr(t, name) + getattr(s, name))
        return t

    @property
    def eta_seconds(self) -> float | None:
        """Time to finish the running and pending shards at the latest run's rate (once relaunched,
        when nothing runs); None when that run finished no shard."""
        left = self.total.bytes_left
        if left == 0:
            return 0.0
        rate = self.throughput.per_second(self.throughput.bytes_in)
        return left / rate if rate > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """The same facts as the text view, for scripts (``slimtok status --json``)."""
        tp = self.throughput
        disk = None
        if self.disk is not None:
            e = self.disk.expected
            disk = {"written": self.disk.written, "expected": e.bytes, "expected_low": e.low,
                    "expected_high": e.high, "margin": e.margin, "ratios": e.ratios, "basis": e.basis,
                    "unestimated_source_bytes": e.unestimated_source_bytes,
                    "free": self.disk.space.free if self.disk.space else None,
                    "filesystem_bytes": self.disk.space.total if self.disk.space else None}
        return {
            "root": self.root, "now": self.now,
            "splits": {k: asdict(v) for k, v in self.splits.items()}, "total": asdict(self.total),
            "throughput": {**asdict(tp), "tokens_per_second": tp.per_second(tp.tokens),
                           "bytes_in_per_second": tp.per_second(tp.bytes_in),
                           "bytes_out_per_second": tp.per_second(tp.bytes_out)},
            "eta_seconds": self.eta_seconds,
            "disk": disk,
            "stages": [asdict(s) for s in self.stages],
            "failures": [{"shard": k, "reason": v} for k, v in self.failures.items()],
            "unreadable_done_records": [{"shard": k, "reason": v} for k, v in self.unreadable.items()],
            "workers": [{**asdict(w.heartbeat), "age": w.age, "health": w.health} for w in self.workers],
            "sources": self.sources,
        }
