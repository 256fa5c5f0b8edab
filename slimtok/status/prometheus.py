"""``slimtok status --prometheus``: the status in Prometheus text format, for node_exporter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..protocol import write_atomic
from .model import PHASE_VERDICTS, JobStatus
from .text import HEALTH_COLOUR


def _labels(**labels: Any) -> str:
    def escape(v: Any) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def prometheus_text(status: JobStatus) -> str:
    """Prometheus text exposition format (0.0.4) of the status, for node_exporter's textfile collector."""
    out: list[str] = []
    root = status.root

    def metric(name: str, help_text: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        out.append(f"# HELP slimtok_{name} {help_text}")
        out.append(f"# TYPE slimtok_{name} gauge")
        out.extend(f"slimtok_{name}{_labels(root=root, **labels)} {value}" for labels, value in samples)

    splits = [*status.splits.items(), ("all", status.total)]
    metric("shards", "Shards by split and state.",
           [({"split": n, "state": st}, getattr(s, st)) for n, s in splits
            for st in ("done", "running", "failed", "pending")])
    for field_name, help_text in (("documents", "Documents tokenized (done shards and checkpoints)."),
                                  ("tokens", "Tokens written (done shards and checkpoints)."),
                                  ("bytes_in", "Compressed source bytes of done shards."),
                                  ("bytes_out", "Token bytes written."),
                                  ("source_bytes", "Compressed source bytes of all shards."),
                                  ("bytes_left", "Compressed source bytes of running and pending shards.")):
        metric(field_name, help_text, [({"split": n}, getattr(s, field_name)) for n, s in splits])
    tp = status.throughput
    metric("throughput_tokens_per_second", "Tokens per second of shards finished in the latest run (window).",
           [({}, tp.per_second(tp.tokens))])
    metric("throughput_bytes_in_per_second", "Source bytes per second of shards finished in the latest run.",
           [({}, tp.per_second(tp.bytes_in))])
    metric("throughput_seconds", "Length of the span the throughput is measured over.", [({}, tp.seconds)])
    metric("running", "1 while some worker's heartbeat is live, else 0.", [({}, int(tp.running))])
    metric("live_tokens_per_second", "Sum of live workers' current tokens per second.",
           [({}, tp.live_tokens_per_second)])
    if status.eta_seconds is not None:
        metric("eta_seconds", "Estimated seconds until every running and pending shard is done.",
               [({}, status.eta_seconds)])
    _disk_metrics(status, metric)
    for key in ("documents", "tokens"):
        metric(f"source_{key}", f"{key.capitalize()} per source (job.source_key), done shards and checkpoints.",
               [({"source": name}, counts.get(key, 0)) for name, counts in sorted(status.sources.items())])
    metric("stage_units", "Units of later stages (e.g. dedup buckets) by state.",
           [({"stage": s.name, "unit": s.unit, "state": state}, n) for s in status.stages
            for state, n in (("done", s.done), ("total", s.total))])
    health = {h: 0 for h in HEALTH_COLOUR}
    for w in status.workers:
        health[w.health] += 1
    metric("workers", "Workers by heartbeat verdict.", [({"health": h}, n) for h, n in health.items()])
    shown = [w for w in status.workers if w.health != "exited"]
    for name, help_text, get in (
            ("worker_tokens_per_second", "A worker's current tokens per second.",
             lambda w: w.heartbeat.tokens_per_second),
            ("worker_cpu_percent", "A worker's CPU use (100 = one core).", lambda w: w.heartbeat.cpu_percent),
            ("worker_rss_bytes", "A worker's resident memory.", lambda w: w.heartbeat.rss_bytes),
            ("worker_heartbeat_age_seconds", "Seconds since a worker's last heartbeat.", lambda w: w.age)):
        # a starting worker has measured nothing yet: no sample rather than a false 0
        measured = [w for w in shown if w.measured or name in ("worker_rss_bytes", "worker_heartbeat_age_seconds")]
        metric(name, help_text, [({"worker": w.heartbeat.worker, "host": w.heartbeat.host,
                                   "process_index": w.heartbeat.process_index, "health": w.health}, get(w))
                                 for w in measured])
    metric("worker_phase_seconds", "Seconds of a worker's wall time per phase since it started.",
           [({"worker": w.heartbeat.worker, "host": w.heartbeat.host, "phase": name}, seconds)
            for w in shown for name, seconds in w.phases.items()])
    metric("worker_cpu_saturation", "A worker's CPU seconds per wall second since it started.",
           [({"worker": w.heartbeat.worker, "host": w.heartbeat.host}, w.cpu_saturation) for w in shown])
    _bounds_metrics(status, metric)
    metric("status_timestamp_seconds", "When this status was collected.", [({}, status.now)])
    return "\n".join(out) + "\n"


def _bounds_metrics(status: JobStatus, metric: Any) -> None:
    """Per node and for the job (label ``scope``; ``host`` "" for the job): phase shares, CPU
    saturation, the verdict (1 for the current one, 0 for the others) and bytes per second."""
    if not status.bounds.workers:
        return
    groups = [({"scope": "job", "host": ""}, status.bounds)]
    groups += [({"scope": "node", "host": host}, b) for host, b in status.node_bounds.items()]
    metric("phase_share", "Share of the workers' wall time per phase.",
           [({**labels, "phase": name}, share) for labels, b in groups for name, share in b.shares.items()])
    metric("cpu_saturation", "The workers' CPU seconds per wall second.",
           [(labels, b.cpu_saturation) for labels, b in groups])
    verdicts = sorted({*PHASE_VERDICTS.values(), "unknown"})
    metric("verdict", "What bounds the workers: 1 for the verdict that holds.",
           [({**labels, "verdict": v}, int(b.verdict == v)) for labels, b in groups for v in verdicts])
    for name, get in (("read_bytes_per_second", lambda b: b.rate(b.bytes_read)),
                      ("write_bytes_per_second", lambda b: b.rate(b.bytes_written))):
        metric(name, f"Bytes per second the workers {name.split('_')[0]} (read/write calls).",
               [(labels, get(b)) for labels, b in groups if get(b) is not None])


def _disk_metrics(status: JobStatus, metric: Any) -> None:
    disk = status.disk
    if disk is None:
        return
    metric("disk_written_bytes", "Token bytes written (done shards and checkpoints).", [({}, disk.written)])
    metric("disk_expected_bytes", "Token bytes the unfinished shards are still expected to write.",
           [({"bound": "estimate"}, disk.expected.bytes), ({"bound": "high"}, disk.expected.high)])
    if disk.space is not None:
        metric("disk_free_bytes", "Free bytes of the output root's filesystem.", [({}, disk.space.free)])
        metric("disk_filesystem_bytes", "Size of the output root's filesystem.", [({}, disk.space.total)])


def write_prometheus(status: JobStatus, path: os.PathLike[str]) -> None:
    """Replace ``path`` atomically, so the textfile collector never reads half a file."""
    write_atomic(Path(path), prometheus_text(status).encode(), durable=False)
