"""Progress of a job, from the files of its output root alone (works from any node, any time).

Reads ``manifest.jsonl``, ``done/``, ``failed/``, ``locks/``, ``checkpoints/`` and
``heartbeats/``; writes nothing. Each directory is listed once, so the cost grows linearly
with the number of shards.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .combine import load_job
from .protocol import SPLITS, Checkpoint, DoneRecord, FailedRecord, Heartbeat, OutputRoot, read_record


@dataclass
class SplitStatus:
    shards: int = 0
    done: int = 0
    running: int = 0
    failed: int = 0
    pending: int = 0
    documents: int = 0
    tokens: int = 0
    source_bytes: int = 0
    source_bytes_done: int = 0


@dataclass
class JobStatus:
    splits: dict[str, SplitStatus] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    workers: list[Heartbeat] = field(default_factory=list)
    now: float = 0.0

    @property
    def total(self) -> SplitStatus:
        t = SplitStatus()
        for s in self.splits.values():
            for name in vars(t):
                setattr(t, name, getattr(t, name) + getattr(s, name))
        return t


def _ids_under(folder: Path, suffix: str) -> set[str]:
    """Shard ids of every ``<id><suffix>`` file below ``folder`` (one directory walk)."""
    found = set()
    if not folder.is_dir():
        return found
    for dirpath, _dirs, files in os.walk(folder):
        rel = os.path.relpath(dirpath, folder)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for f in files:
            if f.endswith(suffix) and not f.startswith("."):
                found.add(prefix + f[: -len(suffix)])
    return found


def collect_status(output_root: str | os.PathLike[str]) -> JobStatus:
    root = OutputRoot(output_root)
    _job, entries = load_job(root)
    done = _ids_under(root.root / "done", ".json")
    failed = _ids_under(root.root / "failed", ".json")
    locked = _ids_under(root.root / "locks", ".lock")
    status = JobStatus(now=time.time())
    for e in entries:
        s = status.splits.setdefault(e.split, SplitStatus())
        s.shards += 1
        s.source_bytes += e.size
        if e.id in done:
            record = read_record(root.done(e.id), DoneRecord)
            s.done += 1
            s.source_bytes_done += e.size
            if record is not None:
                s.documents += record.documents
                s.tokens += record.tokens
        elif e.id in failed:
            s.failed += 1
            failure = read_record(root.failed(e.id), FailedRecord)
            status.failures[e.id] = failure.reason if failure else "unreadable failed record"
        elif e.id in locked:
            s.running += 1
            ckpt = read_record(root.checkpoint(e.id), Checkpoint)
            if ckpt is not None:
                s.documents += ckpt.documents
                s.tokens += ckpt.tokens
        else:
            s.pending += 1
    status.splits = {k: status.splits[k] for k in SPLITS if k in status.splits}
    beats = root.heartbeats_dir()
    if beats.is_dir():
        for f in sorted(beats.glob("*.json")):
            hb = read_record(f, Heartbeat)
            if hb is not None:
                status.workers.append(hb)
    return status


def format_status(status: JobStatus) -> str:
    rows = [f"{'split':<11}{'shards':>8}{'done':>8}{'running':>9}{'failed':>8}{'pending':>9}"
            f"{'documents':>14}{'tokens':>18}"]
    for name, s in list(status.splits.items()) + [("all", status.total)]:
        rows.append(f"{name:<11}{s.shards:>8}{s.done:>8}{s.running:>9}{s.failed:>8}{s.pending:>9}"
                    f"{s.documents:>14,}{s.tokens:>18,}")
    for shard, reason in list(status.failures.items())[:20]:
        rows.append(f"failed {shard}: {reason}")
    live = [w for w in status.workers if w.state != "exited"]
    for w in live:
        age = status.now - w.updated_at
        rows.append(f"worker {w.worker}: pid {w.pid} {w.state} {w.shard or '-'} · {w.tokens_per_second:,.0f} tok/s"
                    f" · cpu {w.cpu_percent:.0f}% · rss {w.rss_bytes / 2**20:.0f} MiB · heartbeat {age:.0f}s ago")
    return "\n".join(rows)
