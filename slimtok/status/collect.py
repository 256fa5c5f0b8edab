"""Progress of a job, from the files of its output root alone (works from any node, while it runs).

Reads ``job.json`` and ``manifest.jsonl``; lists ``done/``, ``failed/``, ``locks/`` and
``checkpoints/``; opens the failed records, the checkpoints of unfinished shards, every heartbeat,
and only those done records that ``status/done-rollup.json`` does not hold yet. Writes two small
files when it may: the roll-up (see :mod:`slimtok.protocol`) and ``probes/status-<host>`` to read
the file server's clock; on a read-only mount it still answers, opening every done record. A
long-lived reader that must not write (the status page) passes a :class:`ReadOnly`: the roll-up is
then kept in its memory between calls and the clock is this host's.

So a status over 60,000 shards costs one manifest read, four directory listings, one roll-up
read and a stat per done record (its size must still be the one cached, or the record is opened
again), not 60,000 opens (docs/OPERATIONS.md has the measurements).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import orjson
import psutil

from ..budget import estimate_token_bytes
from ..claims import file_server_now
from ..job import load_job
from ..manifest import ShardEntry
from ..protocol import (
    ROLLUP_COLUMNS,
    SPLITS,
    Checkpoint,
    DoneRecord,
    DoneRollup,
    FailedRecord,
    Heartbeat,
    JobSettings,
    OutputRoot,
    RollupRow,
    hostname,
    parse_record,
    read_record,
    worker_name,
    write_record,
)
from ..space import disk_space
from .model import Bounds, DiskStatus, JobStatus, SplitStatus, Throughput, WorkerStatus
from .stages import collect_stages

#: Throughput is measured over at most this many seconds of the latest run of workers.
WINDOW = 600.0
#: A heartbeat is overdue after this many of its intervals (and never before MIN_OVERDUE seconds).
OVERDUE_INTERVALS = 3
MIN_OVERDUE = 15.0
#: Assumed interval of heartbeats that do not state theirs.
DEFAULT_INTERVAL = 30.0


# -- collecting ------------------------------------------------------------------------------

def journal_rows(root: OutputRoot) -> dict[str, RollupRow]:
    """Rows the workers appended to their journals; for a shard committed twice, the latest."""
    rows: dict[str, RollupRow] = {}
    for path in root.done_journals():
        try:
            lines = root.storage.read_whole(path).splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line torn by a kill mid-append
            if not (isinstance(entry, list) and entry and isinstance(entry[0], str)):
                continue
            row = RollupRow.from_list(entry[1:])
            if row is not None:
                previous = rows.get(entry[0])
                if previous is None or previous.finished_at <= row.finished_at:
                    rows[entry[0]] = row
    return rows


@dataclass
class ReadOnly:
    """What a reader that never writes to the root keeps between its calls instead of the two
    files ``slimtok status`` writes: the roll-up (in memory; read from the root once, when it has
    none yet). Staleness is then judged by this host's clock, as on a read-only mount."""

    rollup: DoneRollup | None = None


def done_rows(root: OutputRoot, done: dict[str, int], manifest_sha256: str,
              read_only: ReadOnly | None = None) -> tuple[dict[str, RollupRow], dict[str, str]]:
    """(``ROLLUP_COLUMNS`` of each readable done shard in ``done``, {shard: why} for the others);
    ``done``: {shard: its record's size}, as ``OutputRoot.done_sizes`` lists them.

    A cached row (roll-up or journal) is used while its record file keeps the size it had when the
    row was taken: one stat per done shard, and only new or changed records are opened. A record
    that cannot be parsed makes its shard not done, as tokenize and combine also treat it.
    Updates ``status/done-rollup.json`` when something changed; a failed write is ignored (the
    roll-up is a cache, and the caller may only have read access). With ``read_only``, its
    in-memory roll-up is used and updated instead, and nothing is written.
    """
    held = read_only.rollup if read_only is not None else None
    cached = held if held is not None else read_record(root.done_rollup, DoneRollup)
    rows: dict[str, RollupRow] = {}
    if cached is not None and cached.manifest_sha256 == manifest_sha256 and cached.columns == ROLLUP_COLUMNS:
        rows = {k: row for k, v in cached.shards.items() if k in done and (row := RollupRow.from_list(v))}
    changed = cached is None or len(rows) != len(cached.shards)
    missing = done - rows.keys()
    if missing:
        journaled = {k: v for k, v in journal_rows(root).items() if k in missing}
        rows.update(journaled)
        changed = changed or bool(journaled)
    unreadable: dict[str, str] = {}
    for shard in sorted(done):
        row = rows.get(shard)
        if row is not None and done[shard] == row.record_bytes:
            continue
        rows.pop(shard, None)
        changed = True
        path = root.done(shard)
        try:
            raw = root.storage.read_whole(path)
        except FileNotFoundError:
            continue  # removed since the listing
        record = parse_record(raw, DoneRecord)
        if record is None:
            unreadable[shard] = (f"{path} cannot be parsed; the next `slimtok tokenize` launch sets it aside "
                                 "and tokenizes the shard again")
            continue
        rows[shard] = RollupRow.from_list(record.rollup_row(len(raw)))  # type: ignore[assignment]
    if read_only is not None:
        if changed or held is None:
            read_only.rollup = DoneRollup(manifest_sha256, {k: v.to_list() for k, v in rows.items()})
    elif changed:
        shards = {k: v.to_list() for k, v in rows.items()}
        try:
            write_record(root.done_rollup, DoneRollup(manifest_sha256, shards), durable=False)
        except OSError:
            pass
    return rows, unreadable


def _add_sources(total: dict[str, dict[str, int]], sources: dict[str, dict[str, int]] | None) -> None:
    """Add a record's per-source counts (``{source: {"documents": n, "tokens": n}}``) to ``total``."""
    for name, counts in (sources or {}).items():
        into = total.setdefault(name, {})
        for key, value in counts.items():
            into[key] = into.get(key, 0) + value


def _server_now(root: OutputRoot, read_only: ReadOnly | None) -> float:
    """The file server's clock (heartbeat mtimes are set by it), or ours where we cannot or must
    not write."""
    if read_only is not None:
        return time.time()
    try:
        return file_server_now(root.probe(f"status-{worker_name(hostname(), 0, 0)}"))
    except OSError:
        return time.time()


def _health(hb: Heartbeat, age: float, here: str) -> str:
    if hb.state == "exited":
        return "exited"
    if hb.state.startswith("killed"):  # its launcher saw it die: dead, whichever host looks
        return "dead"
    if hb.host == here:
        try:
            # started_at is taken after the process starts: a later create time means a reused pid
            if psutil.Process(hb.pid).create_time() > hb.started_at + 1:
                return "dead"
        except psutil.Error:
            return "dead"
    overdue = max(MIN_OVERDUE, OVERDUE_INTERVALS * (hb.interval or DEFAULT_INTERVAL))
    return "stale" if age > overdue else "ok"


def read_workers(root: OutputRoot, read_only: ReadOnly | None = None) -> list[WorkerStatus]:
    """Every worker's last heartbeat, judged ok / stale / dead / exited (``read_only``: see
    :func:`collect_status`)."""
    folder = root.heartbeats_dir()
    paths = sorted(folder / name for name in root.storage.list_names(folder) if name.endswith(".json"))
    if not paths:
        return []
    now, here = _server_now(root, read_only), hostname()
    workers = []
    for path in paths:
        hb = read_record(path, Heartbeat)
        try:
            age = max(0.0, now - root.storage.stat(path).mtime)
        except FileNotFoundError:
            continue
        if hb is not None:
            workers.append(WorkerStatus(hb, round(age, 1), _health(hb, age, here)))
    workers.sort(key=lambda w: (w.heartbeat.host, w.heartbeat.process_index, w.heartbeat.worker_index))
    return workers


def latest_run(workers: list[WorkerStatus], now: float, window: float) -> Throughput:
    """The span rates are measured over: the latest stretch in which workers ran, as the union of
    their [started_at, last beat] (a live worker's runs until now), cut to its last ``window`` s.

    A relaunch's workers rewrite their heartbeats, so the spans of an earlier launch drop out, and
    a stopped job's rates cover the time it ran, not the idle time since.
    """
    spans = sorted((w.heartbeat.started_at, now if w.health == "ok" else max(w.heartbeat.updated_at,
                                                                              w.heartbeat.started_at))
                   for w in workers)
    if not spans:
        return Throughput()
    start, end = spans[0]
    for s, e in spans[1:]:
        if s > end:  # a gap in which no worker ran: only what follows counts
            start = s
        end = max(end, e)
    start = max(start, end - window)
    return Throughput(seconds=end - start, started_at=start, ended_at=end,
                      running=any(w.health == "ok" for w in workers))


def run_bounds(workers: list[WorkerStatus], tp: Throughput) -> tuple[Bounds, dict[str, Bounds]]:
    """What bounds the workers of the latest run (``tp``'s span: those whose last beat falls in
    it), all of them and those of each host (by host name)."""
    job, nodes = Bounds(), dict[str, Bounds]()
    for w in workers:
        if tp.seconds > 0 and w.heartbeat.updated_at >= tp.started_at:
            job.add(w)
            nodes.setdefault(w.heartbeat.host, Bounds()).add(w)
    return job, dict(sorted(nodes.items()))


def _count_done(s: SplitStatus, tp: Throughput, entry: ShardEntry, row: RollupRow | None,
                sources: dict[str, dict[str, int]]) -> None:
    s.done += 1
    s.bytes_in += entry.size
    if row is None:
        return
    s.documents += row.documents
    s.tokens += row.tokens
    s.done_tokens += row.tokens
    s.bytes_out += row.bytes
    _add_sources(sources, row.sources)
    if tp.seconds > 0 and tp.started_at <= row.finished_at <= tp.ended_at:
        tp.shards += 1
        tp.documents += row.documents
        tp.tokens += row.tokens
        tp.bytes_in += entry.size
        tp.bytes_out += row.bytes


def _count_unfinished(root: OutputRoot, s: SplitStatus, entry: ShardEntry, locked: bool, checkpointed: bool,
                      sources: dict[str, dict[str, int]]) -> None:
    if locked:
        s.running += 1
    else:
        s.pending += 1
    s.bytes_left += entry.size
    if checkpointed:  # running, or stopped part-way and waiting for a relaunch
        ckpt = read_record(root.checkpoint(entry.id), Checkpoint)
        if ckpt is not None:
            s.documents += ckpt.documents
            s.tokens += ckpt.tokens
            s.bytes_out += ckpt.bytes
            _add_sources(sources, ckpt.sources)


def disk_status(root: OutputRoot, job: JobSettings, status: JobStatus, unfinished: list[ShardEntry]) -> DiskStatus:
    """Token bytes written, the bytes the unfinished shards will still add (at the done shards'
    measured tokens per source byte, or the sample pinned in job.json for a split with none done,
    less their checkpoints' bytes) and the filesystem's room."""
    measured = {name: (s.done_tokens, s.bytes_in) for name, s in status.splits.items()}
    width = job.token_width
    expected = estimate_token_bytes(unfinished, width, measured=measured, sampled=job.sampled_ratios)
    # a done shard's bytes are its tokens x width, so the rest of bytes_out is the checkpoints'
    checkpoints = sum(s.bytes_out - s.done_tokens * width for s in status.splits.values())
    expected.bytes = max(expected.bytes - checkpoints, 0)
    try:
        space = disk_space(root.root)
    except OSError:
        space = None
    return DiskStatus(written=status.total.bytes_out, expected=expected, space=space)


def collect_status(output_root: str | os.PathLike[str], window: float = WINDOW,
                   read_only: ReadOnly | None = None) -> JobStatus:
    """Everything ``slimtok status`` shows; see the module docstring for what it reads. With
    ``read_only`` (kept by the caller between calls) nothing under the root is written."""

    root = OutputRoot(output_root)
    job, entries = load_job(root)
    done_sizes, failed = root.done_sizes(), root.failed_ids()
    locked, checkpointed = root.locked_ids(), root.checkpointed_ids()
    listed = {e.id for e in entries}
    rows, unreadable = done_rows(root, {k: v for k, v in done_sizes.items() if k in listed}, job.manifest_sha256,
                                 read_only)
    done = done_sizes.keys() - unreadable.keys()
    status = JobStatus(root=str(root.root), now=time.time(), workers=read_workers(root, read_only))
    status.throughput = tp = latest_run(status.workers, status.now, window)
    tp.live_tokens_per_second = sum(w.heartbeat.tokens_per_second for w in status.workers
                                    if w.health == "ok" and w.measured)
    status.bounds, status.node_bounds = run_bounds(status.workers, tp)
    unfinished = []
    for e in entries:
        s = status.splits.setdefault(e.split, SplitStatus())
        s.shards += 1
        s.source_bytes += e.size
        if e.id in done:
            _count_done(s, tp, e, rows.get(e.id), status.sources)
        elif e.id in unreadable:
            status.unreadable[e.id] = unreadable[e.id]
            _count_unfinished(root, s, e, e.id in locked, e.id in checkpointed, status.sources)
            unfinished.append(e)
        elif e.id in failed:
            s.failed += 1
            failure = read_record(root.failed(e.id), FailedRecord)
            status.failures[e.id] = failure.reason if failure else "unreadable failed record"
        else:
            _count_unfinished(root, s, e, e.id in locked, e.id in checkpointed, status.sources)
            unfinished.append(e)
    status.splits = {k: status.splits[k] for k in SPLITS if k in status.splits}
    status.disk = disk_status(root, job, status, unfinished)
    status.stages = collect_stages(root)
    return status
