"""What ``slimtok status`` reports: plain records, filled by :mod:`.collect`, shown by :mod:`.text`
and :mod:`.prometheus`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..budget import TokenBytesEstimate
from ..protocol import Heartbeat
from ..protocol.records import PHASES
from ..space import DiskSpace

#: Workers whose CPU time is at least this share of their wall time are CPU-bound, whatever their
#: phases say: a worker that waits on a disk or a lock is off the CPU while it waits, so below this
#: the waits are what hold it back. (0.75 leaves room for the heartbeat and commit threads' own
#: waits, and for the CPU a busy host's other processes take.)
SATURATED = 0.75
#: The verdict each phase gives when it has the largest share of unsaturated workers' time.
#: Parsing and encoding are CPU work: unsaturated workers that spend most time there are short of
#: CPU (other processes share the cores), which more or freer cores cure, as for saturated ones.
PHASE_VERDICTS = {"read": "read-bound", "parse": "encoder-bound", "encode": "encoder-bound",
                  "write": "write-bound", "claim_wait": "claim-bound"}


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

    @property
    def wall_seconds(self) -> float:
        """The wall time the heartbeat's totals (phases, CPU, bytes) cover: from start to this beat."""
        return max(self.heartbeat.updated_at - self.heartbeat.started_at, 0.0)

    @property
    def phases(self) -> dict[str, float]:
        """Seconds per phase of ``PHASES`` (0 for a phase an older writer did not report)."""
        return {name: self.heartbeat.phases.get(name, 0.0) for name in PHASES}

    @property
    def cpu_saturation(self) -> float:
        """CPU seconds per wall second since the worker started (1.0: one core busy all along)."""
        wall = self.wall_seconds
        return self.heartbeat.cpu_seconds / wall if wall > 0 else 0.0


@dataclass
class Bounds:
    """What bounds a group of workers (one node's, or the job's), from their heartbeats' totals.

    ``phases`` and ``cpu_seconds`` are summed over the workers, ``wall_seconds`` too (each worker's
    time from its start to its last beat), so shares and saturation weigh each worker by the time
    it ran. Rates are the group's bytes over ``span``, from its first worker's start to its last
    beat: for workers that ran side by side, the sum of their rates.

    The verdict: "unknown" while no worker has run (or none reported phases: older heartbeats);
    "encoder-bound" when the CPU saturation is at least :data:`SATURATED` (the workers compute all
    the time, so only more or faster CPU, i.e. the encoder, speeds them up); otherwise the verdict
    of :data:`PHASE_VERDICTS` for the phase with the largest share: "read-bound" (input reads),
    "write-bound" (output writes and syncs), "claim-bound" (finding, claiming or waiting for
    shards), or "encoder-bound" (CPU work on a CPU the workers do not get to themselves).
    """

    workers: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    started_at: float = 0.0  # the first start among the workers
    ended_at: float = 0.0  # the last beat among them
    #: None when some worker of the group could not count its bytes
    bytes_read: int | None = 0
    bytes_written: int | None = 0

    def add(self, worker: WorkerStatus) -> None:
        """Count one worker's totals."""
        hb = worker.heartbeat
        self.started_at = min(self.started_at, hb.started_at) if self.workers else hb.started_at
        self.ended_at = max(self.ended_at, hb.updated_at)
        self.workers += 1
        self.wall_seconds += worker.wall_seconds
        self.cpu_seconds += hb.cpu_seconds
        for name, seconds in worker.phases.items():
            self.phases[name] += seconds
        self.bytes_read = None if self.bytes_read is None or hb.bytes_read is None else self.bytes_read + hb.bytes_read
        self.bytes_written = (None if self.bytes_written is None or hb.bytes_written is None
                              else self.bytes_written + hb.bytes_written)

    @property
    def span(self) -> float:
        return max(self.ended_at - self.started_at, 0.0)

    @property
    def cpu_saturation(self) -> float:
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def shares(self) -> dict[str, float]:
        """Each phase's share of the workers' wall time (their sum is at most 1)."""
        wall = self.wall_seconds
        return {name: (seconds / wall if wall > 0 else 0.0) for name, seconds in self.phases.items()}

    @property
    def verdict(self) -> str:
        if self.wall_seconds <= 0 or not any(self.phases.values()):  # no worker ran, or none reported phases
            return "unknown"
        if self.cpu_saturation >= SATURATED:
            return "encoder-bound"
        return PHASE_VERDICTS[max(PHASES, key=lambda name: self.phases[name])]

    def rate(self, amount: int | None) -> float | None:
        """``amount`` bytes per second of the span; None when unknown or no span."""
        return amount / self.span if amount is not None and self.span > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "wall_seconds": self.wall_seconds, "cpu_seconds": self.cpu_seconds,
                "phases": dict(self.phases), "phase_shares": self.shares, "cpu_saturation": self.cpu_saturation,
                "verdict": self.verdict, "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                "started_at": self.started_at, "ended_at": self.ended_at, "span_seconds": self.span,
                "read_bytes_per_s": self.rate(self.bytes_read),
                "write_bytes_per_s": self.rate(self.bytes_written)}


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
    #: what bounds the workers of the latest run: all of them, and those of each host
    bounds: Bounds = field(default_factory=Bounds)
    node_bounds: dict[str, Bounds] = field(default_factory=dict)

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
            "workers": [{**asdict(w.heartbeat), "phases": w.phases, "age": w.age, "health": w.health,
                         "cpu_saturation": w.cpu_saturation} for w in self.workers],
            "bounds": {"job": self.bounds.to_dict(),
                       "nodes": {host: b.to_dict() for host, b in self.node_bounds.items()}},
            "sources": self.sources,
        }
