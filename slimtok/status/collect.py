"""Progress of a job, from the files of its output root alone (works from any node, while it runs).

Reads ``job.json`` and ``manifest.jsonl``; lists ``done/``, ``failed/``, ``locks/`` and
``checkpoints/``; opens the failed records, the checkpoints of unfinished shards, every heartbeat,
and only those done records that ``status/done-rollup.json`` does not hold yet. Writes two small
files when it may: the roll-up (see :mod:`slimtok.protocol`) and ``probes/status-<host>`` to read
the file server's clock; on a read-only mount it still answers, opening every done record.

So a status over 60,000 shards costs one manifest read, four directory listings and one roll-up
read, not 60,000 opens (docs/OPERATIONS.md has the measurements).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import psutil

from .claims import file_server_now
from .combine import load_job
from .protocol import (ROLLUP_COLUMNS, SPLITS, Checkpoint, DoneRecord, DoneRollup, FailedRecord, Heartbeat,
                       OutputRoot, hostname, read_record, worker_name, write_atomic)

#: Throughput is measured over shards finished in this many seconds before now.
WINDOW = 600.0
#: A heartbeat is overdue after this many of its intervals (and never before MIN_OVERDUE seconds).
OVERDUE_INTERVALS = 3
MIN_OVERDUE = 15.0
#: Assumed interval of heartbeats that do not state theirs.
DEFAULT_INTERVAL = 30.0


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


@dataclass
class Throughput:
    """What finished in the last ``seconds`` (done records), plus the live workers' current rate."""

    seconds: float = 0.0
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


@dataclass
class JobStatus:
    root: str
    now: float
    splits: dict[str, SplitStatus] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerStatus] = field(default_factory=list)
    throughput: Throughput = field(default_factory=Throughput)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> SplitStatus:
        t = SplitStatus()
        for s in self.splits.values():
            for name in vars(t):
                setattr(t, name, getattr(t, name) + getattr(s, name))
        return t

    @property
    def eta_seconds(self) -> float | None:
        """Time to finish the running and pending shards at the recent rate; None when unknown."""
        left = self.total.bytes_left
        if left == 0:
            return 0.0
        rate = self.throughput.per_second(self.throughput.bytes_in)
        return left / rate if rate > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """The same facts as the text view, for scripts (``slimtok status --json``)."""
        tp = self.throughput
        return {
            "root": self.root, "now": self.now,
            "splits": {k: asdict(v) for k, v in self.splits.items()}, "total": asdict(self.total),
            "throughput": {**asdict(tp), "tokens_per_second": tp.per_second(tp.tokens),
                           "bytes_in_per_second": tp.per_second(tp.bytes_in),
                           "bytes_out_per_second": tp.per_second(tp.bytes_out)},
            "eta_seconds": self.eta_seconds,
            "failures": [{"shard": k, "reason": v} for k, v in self.failures.items()],
            "workers": [{**asdict(w.heartbeat), "age": w.age, "health": w.health} for w in self.workers],
            "sources": self.sources,
        }


# -- collecting ------------------------------------------------------------------------------

def ids_under(folder: os.PathLike[str], suffix: str) -> set[str]:
    """Shard ids of every ``<id><suffix>`` file below ``folder`` (one directory walk, no stat)."""
    found: set[str] = set()
    for dirpath, _dirs, files in os.walk(folder):
        rel = os.path.relpath(dirpath, folder)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        found.update(prefix + f[: -len(suffix)] for f in files if f.endswith(suffix) and not f.startswith("."))
    return found


def journal_rows(root: OutputRoot) -> dict[str, list[Any]]:
    """Rows the workers appended to their journals; for a shard committed twice, the latest."""
    rows: dict[str, list[Any]] = {}
    width = 1 + len(ROLLUP_COLUMNS)
    for path in root.done_journals():
        try:
            lines = path.read_bytes().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line torn by a kill mid-append
            if isinstance(row, list) and len(row) == width and isinstance(row[0], str):
                previous = rows.get(row[0])
                if previous is None or previous[4] <= row[5]:
                    rows[row[0]] = row[1:]
    return rows


def done_rows(root: OutputRoot, done: set[str], manifest_sha256: str) -> dict[str, list[Any]]:
    """``ROLLUP_COLUMNS`` of each done shard in ``done``, opening only records the roll-up lacks.

    Updates ``status/done-rollup.json`` when something changed; a failed write is ignored (the
    roll-up is a cache, and the caller may only have read access).
    """
    cached = read_record(root.done_rollup, DoneRollup)
    rows: dict[str, list[Any]] = {}
    if cached is not None and cached.manifest_sha256 == manifest_sha256 and cached.columns == ROLLUP_COLUMNS:
        rows = {k: v for k, v in cached.shards.items() if k in done}
    changed = cached is None or len(rows) != len(cached.shards)
    missing = done - rows.keys()
    if missing:
        journaled = {k: v for k, v in journal_rows(root).items() if k in missing}
        rows.update(journaled)
        missing -= journaled.keys()
        changed = changed or bool(journaled)
    for shard in missing:
        record = read_record(root.done(shard), DoneRecord)
        if record is None:  # corrupt; counted as done without counts, and looked at again next time
            continue
        rows[shard] = record.rollup_row()
        changed = True
    if changed:
        try:
            write_atomic(root.done_rollup, orjson.dumps(DoneRollup(manifest_sha256, rows)), durable=False)
        except OSError:
            pass
    return rows


def _add_sources(total: dict[str, dict[str, int]], sources: dict[str, dict[str, int]] | None) -> None:
    """Add a record's per-source counts (``{source: {"documents": n, "tokens": n}}``) to ``total``."""
    for name, counts in (sources or {}).items():
        into = total.setdefault(name, {})
        for key, value in counts.items():
            into[key] = into.get(key, 0) + value


def _server_now(root: OutputRoot) -> float:
    """The file server's clock (heartbeat mtimes are set by it), or ours where we cannot write."""
    try:
        return file_server_now(root.probe(f"status-{worker_name(hostname(), 0, 0)}"))
    except OSError:
        return time.time()


def _health(hb: Heartbeat, age: float, here: str) -> str:
    if hb.state == "exited":
        return "exited"
    if hb.host == here:
        try:
            # started_at is taken after the process starts: a later create time means a reused pid
            if psutil.Process(hb.pid).create_time() > hb.started_at + 1:
                return "dead"
        except psutil.Error:
            return "dead"
    overdue = max(MIN_OVERDUE, OVERDUE_INTERVALS * (hb.interval or DEFAULT_INTERVAL))
    return "stale" if age > overdue else "ok"


def read_workers(root: OutputRoot) -> list[WorkerStatus]:
    """Every worker's last heartbeat, judged ok / stale / dead / exited."""
    folder = root.heartbeats_dir()
    if not folder.is_dir():
        return []
    now, here = _server_now(root), hostname()
    workers = []
    for path in sorted(folder.glob("*.json")):
        hb = read_record(path, Heartbeat)
        try:
            age = max(0.0, now - path.stat().st_mtime)
        except FileNotFoundError:
            continue
        if hb is not None:
            workers.append(WorkerStatus(hb, round(age, 1), _health(hb, age, here)))
    workers.sort(key=lambda w: (w.heartbeat.host, w.heartbeat.process_index, w.heartbeat.worker_index))
    return workers


def collect_status(output_root: str | os.PathLike[str], window: float = WINDOW) -> JobStatus:
    """Everything ``slimtok status`` shows; see the module docstring for what it reads."""
    root = OutputRoot(output_root)
    job, entries = load_job(root)
    done = ids_under(root.root / "done", ".json")
    failed = ids_under(root.root / "failed", ".json")
    locked = ids_under(root.root / "locks", ".lock")
    checkpointed = ids_under(root.root / "checkpoints", ".json")
    rows = done_rows(root, done & {e.id for e in entries}, job.manifest_sha256)
    status = JobStatus(root=str(root.root), now=time.time(), workers=read_workers(root))
    live = [w for w in status.workers if w.health == "ok"]
    window_start = status.now - window
    if live:  # a launch younger than the window has not had the whole window to make progress
        window_start = max(window_start, min(w.heartbeat.started_at for w in live))
    tp = status.throughput
    tp.seconds = status.now - window_start
    tp.live_tokens_per_second = sum(w.heartbeat.tokens_per_second for w in live)
    for e in entries:
        s = status.splits.setdefault(e.split, SplitStatus())
        s.shards += 1
        s.source_bytes += e.size
        if e.id in done:
            s.done += 1
            s.bytes_in += e.size
            row = rows.get(e.id)
            if row is None:
                continue
            documents, tokens, nbytes, _source, finished_at, sources = row
            s.documents += documents
            s.tokens += tokens
            s.bytes_out += nbytes
            _add_sources(status.sources, sources)
            if finished_at >= window_start:
                tp.shards += 1
                tp.documents += documents
                tp.tokens += tokens
                tp.bytes_in += e.size
                tp.bytes_out += nbytes
        elif e.id in failed:
            s.failed += 1
            failure = read_record(root.failed(e.id), FailedRecord)
            status.failures[e.id] = failure.reason if failure else "unreadable failed record"
        else:
            if e.id in locked:
                s.running += 1
            else:
                s.pending += 1
            s.bytes_left += e.size
            if e.id in checkpointed:  # running, or stopped part-way and waiting for a relaunch
                ckpt = read_record(root.checkpoint(e.id), Checkpoint)
                if ckpt is not None:
                    s.documents += ckpt.documents
                    s.tokens += ckpt.tokens
                    s.bytes_out += ckpt.bytes
                    _add_sources(status.sources, ckpt.sources)
    status.splits = {k: status.splits[k] for k in SPLITS if k in status.splits}
    return status


# -- showing ---------------------------------------------------------------------------------

_HEALTH_COLOUR = {"ok": None, "stale": "yellow", "dead": "red", "exited": None}
#: Failed shards listed in the text view; --json lists all.
SHOW_FAILURES = 20


def _gb(n: int) -> str:
    return f"{n / 1e9:,.2f}"


def format_status(status: JobStatus, colour: bool = True) -> str:
    """The text view of ``slimtok status``; problems in yellow/red when ``colour``."""
    import click

    from .launch import _duration

    def paint(text: str, fg: str | None) -> str:
        return click.style(text, fg=fg) if colour and fg else text

    rows = [f"{status.root} at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status.now))}",
            f"{'split':<11}{'shards':>8}{'done':>8}{'running':>9}{'failed':>8}{'pending':>9}"
            f"{'documents':>15}{'tokens':>18}{'in GB':>10}{'out GB':>10}"]
    for name, s in [*status.splits.items(), ("all", status.total)]:
        failed = paint(f"{s.failed:>8}", "red" if s.failed else None)
        rows.append(f"{name:<11}{s.shards:>8}{s.done:>8}{s.running:>9}{failed}{s.pending:>9}"
                    f"{s.documents:>15,}{s.tokens:>18,}{_gb(s.bytes_in):>10}{_gb(s.bytes_out):>10}")
    tp = status.throughput
    eta = status.eta_seconds
    rows.append(f"last {_duration(tp.seconds)}: {tp.shards} shards · {tp.per_second(tp.tokens):,.0f} tok/s · "
                f"in {tp.per_second(tp.bytes_in) / 1e6:,.1f} MB/s · out {tp.per_second(tp.bytes_out) / 1e6:,.1f} MB/s"
                f" · live workers now {tp.live_tokens_per_second:,.0f} tok/s · ETA "
                + ("unknown (nothing finished recently)" if eta is None else _duration(eta)))
    for name, counts in sorted(status.sources.items()):
        rows.append(f"source {name}: " + " · ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    rows.extend(_host_rows(status.workers))
    rows.extend(_worker_rows(status.workers, paint))
    if status.failures:
        rows.append(paint(f"failed shards ({len(status.failures)}; `slimtok tokenize --retry-failed` retries them):",
                          "red"))
        for shard, reason in list(status.failures.items())[:SHOW_FAILURES]:
            rows.append(paint(f"  {shard}: {reason}", "red"))
        if len(status.failures) > SHOW_FAILURES:
            rows.append(f"  ... and {len(status.failures) - SHOW_FAILURES} more (--json lists all)")
    return "\n".join(rows)


def _host_rows(workers: list[WorkerStatus]) -> list[str]:
    """Per host: live workers and the host's whole CPU use, from its freshest heartbeat."""
    latest: dict[str, Heartbeat] = {}
    count: dict[str, int] = {}
    for w in workers:
        if w.health == "ok":
            hb = w.heartbeat
            count[hb.host] = count.get(hb.host, 0) + 1
            if hb.host not in latest or hb.updated_at > latest[hb.host].updated_at:
                latest[hb.host] = hb
    return [f"host {host}: {count[host]} live workers · host cpu {hb.host_cpu_percent:.0f}% of {hb.host_cpus} cores"
            for host, hb in sorted(latest.items())]


def _worker_rows(workers: list[WorkerStatus], paint: Any) -> list[str]:
    shown = [w for w in workers if w.health != "exited"]
    exited = len(workers) - len(shown)
    if not shown:
        return [f"no live workers ({exited} exited)"]
    rows = [f"{'host':<16}{'proc':>5}{'wrk':>4}{'pid':>8}  {'shard':<40}{'tok/s':>10}{'cpu%':>6}{'rss MiB':>9}"
            f"{'beat':>7}  state"]
    for w in shown:
        hb = w.heartbeat
        verdict = hb.state if w.health == "ok" else f"{w.health.upper()} ({hb.state})"
        rows.append(paint(f"{hb.host[:15]:<16}{hb.process_index:>5}{hb.worker_index:>4}{hb.pid:>8}  "
                          f"{(hb.shard or '-')[-39:]:<40}{hb.tokens_per_second:>10,.0f}{hb.cpu_percent:>6.0f}"
                          f"{hb.rss_bytes / 2**20:>9,.0f}{w.age:>6.0f}s  {verdict}", _HEALTH_COLOUR[w.health]))
    if exited:
        rows.append(f"({exited} exited workers not shown)")
    return rows


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
    metric("throughput_tokens_per_second", "Tokens per second of shards finished in the window.",
           [({}, tp.per_second(tp.tokens))])
    metric("throughput_bytes_in_per_second", "Source bytes per second of shards finished in the window.",
           [({}, tp.per_second(tp.bytes_in))])
    metric("live_tokens_per_second", "Sum of live workers' current tokens per second.",
           [({}, tp.live_tokens_per_second)])
    if status.eta_seconds is not None:
        metric("eta_seconds", "Estimated seconds until every running and pending shard is done.",
               [({}, status.eta_seconds)])
    for key in ("documents", "tokens"):
        metric(f"source_{key}", f"{key.capitalize()} per source (job.source_key), done shards and checkpoints.",
               [({"source": name}, counts.get(key, 0)) for name, counts in sorted(status.sources.items())])
    health = {h: 0 for h in _HEALTH_COLOUR}
    for w in status.workers:
        health[w.health] += 1
    metric("workers", "Workers by heartbeat verdict.", [({"health": h}, n) for h, n in health.items()])
    shown = [w for w in status.workers if w.health != "exited"]
    for name, help_text, get in (
            ("worker_tokens_per_second", "A worker's current tokens per second.", lambda w: w.heartbeat.tokens_per_second),
            ("worker_cpu_percent", "A worker's CPU use (100 = one core).", lambda w: w.heartbeat.cpu_percent),
            ("worker_rss_bytes", "A worker's resident memory.", lambda w: w.heartbeat.rss_bytes),
            ("worker_heartbeat_age_seconds", "Seconds since a worker's last heartbeat.", lambda w: w.age)):
        metric(name, help_text, [({"worker": w.heartbeat.worker, "host": w.heartbeat.host,
                                   "process_index": w.heartbeat.process_index, "health": w.health}, get(w))
                                 for w in shown])
    metric("status_timestamp_seconds", "When this status was collected.", [({}, status.now)])
    return "\n".join(out) + "\n"


def write_prometheus(status: JobStatus, path: os.PathLike[str]) -> None:
    """Replace ``path`` atomically, so the textfile collector never reads half a file."""
    from pathlib import Path

    write_atomic(Path(path), prometheus_text(status).encode(), durable=False)
