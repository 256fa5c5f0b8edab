"""Throughput over time, rebuilt from what the output root records: every done shard's finish time,
duration, sizes and host (the roll-up's columns, see :func:`.collect.done_rows`).

Nothing is sampled between calls, so the history is the same after the page restarts, and a node
that finished long ago keeps its series. Each shard's tokens and bytes are spread evenly over the
seconds it took (``[finished_at - seconds, finished_at]``); a shard's work in progress counts once
its done record exists, so the last bin of a running job is an underestimate until then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..job import load_job
from ..protocol import ROLLUP_COLUMNS, DoneRollup, JobSettings, OutputRoot, RollupRow, read_record
from .collect import ReadOnly, done_rows

#: At most this many bins over the job's span (the chart's resolution).
BINS = 60


@dataclass
class ThroughputHistory:
    """Rates per bin of ``step`` seconds from ``start``: ``tokens[i]`` tokens/s in bin i, overall
    and per host; ``bytes_in`` compressed source bytes/s, ``bytes_out`` token bytes/s (overall).
    Invariant: every series has ``bins`` values, and sum(rate x step) over a series is the total
    of the shards it covers."""

    start: float = 0.0
    step: float = 0.0
    bins: int = 0
    tokens: list[float] = field(default_factory=list)
    bytes_in: list[float] = field(default_factory=list)
    bytes_out: list[float] = field(default_factory=list)
    nodes: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "step": self.step, "bins": self.bins, "tokens_per_second": self.tokens,
                "bytes_in_per_second": self.bytes_in, "bytes_out_per_second": self.bytes_out,
                "nodes_tokens_per_second": self.nodes}


def _spread(series: list[float], start: float, step: float, begin: float, end: float, amount: float) -> None:
    """Add ``amount`` to ``series`` (bins of ``step`` from ``start``), evenly over [begin, end]."""
    last = len(series) - 1
    if end - begin <= 0:
        series[min(max(int((end - start) / step), 0), last)] += amount
        return
    first_bin = min(max(int((begin - start) / step), 0), last)
    last_bin = min(max(int(math.ceil((end - start) / step)) - 1, 0), last)
    for i in range(first_bin, last_bin + 1):
        lo, hi = max(begin, start + i * step), min(end, start + (i + 1) * step)
        if i == last_bin:  # rounding, and a shard ending at the span's end, land in the last bin
            hi = max(hi, end)
        if i == first_bin:
            lo = min(lo, begin)
        series[i] += amount * max(hi - lo, 0.0) / (end - begin)


def throughput_history(rows: dict[str, RollupRow], end: float | None = None, bins: int = BINS) -> ThroughputHistory:
    """The history of ``rows`` from the first shard's start to ``end`` (default: the last finish;
    a running job passes now, so the chart reaches the present)."""
    spans = [(r.finished_at - max(float(r.seconds), 0.0), r.finished_at, r) for r in rows.values()]
    if not spans:
        return ThroughputHistory()
    start = min(s for s, _, _ in spans)
    stop = max(end or 0.0, max(f for _, f, _ in spans))
    step = max((stop - start) / bins, 1.0)
    count = max(1, min(bins, math.ceil((stop - start) / step)))
    h = ThroughputHistory(start=start, step=step, bins=count, tokens=[0.0] * count, bytes_in=[0.0] * count,
                          bytes_out=[0.0] * count)
    for begin, finish, r in spans:
        node = h.nodes.setdefault(r.host or "unknown host", [0.0] * count)
        for series, amount in ((h.tokens, r.tokens), (h.bytes_in, r.source_size), (h.bytes_out, r.bytes),
                               (node, r.tokens)):
            _spread(series, start, step, begin, finish, max(amount, 0))
    for series in (h.tokens, h.bytes_in, h.bytes_out, *h.nodes.values()):
        series[:] = [v / step for v in series]
    h.nodes = dict(sorted(h.nodes.items()))
    return h


def root_history(root: OutputRoot, job: JobSettings, done: int, end: float | None,
                 read_only: ReadOnly | None = None) -> ThroughputHistory:
    """The history of the ``done`` readable done records of ``root``: from the roll-up that
    ``collect_status`` has just brought up to date (one read; with ``read_only``, the one it holds),
    or, where it could not write it (a read-only mount) and the roll-up is behind, from
    :func:`.collect.done_rows` (a stat per record)."""
    cached = read_only.rollup if read_only is not None else read_record(root.done_rollup, DoneRollup)
    if (cached is not None and cached.columns == ROLLUP_COLUMNS and cached.manifest_sha256 == job.manifest_sha256
            and len(cached.shards) == done):
        rows = {k: row for k, v in cached.shards.items() if (row := RollupRow.from_list(v))}
    else:
        listed = {e.id for e in load_job(root)[1]}
        rows, _ = done_rows(root, {k: v for k, v in root.done_sizes().items() if k in listed}, job.manifest_sha256,
                            read_only)
    return throughput_history(rows, end)
