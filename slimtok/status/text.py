"""The text view of ``slimtok status``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..progress import duration
from ..protocol import Heartbeat
from ..space import format_bytes
from .model import Bounds, JobStatus, WorkerStatus

HEALTH_COLOUR = {"ok": None, "stale": "yellow", "dead": "red", "exited": None}
#: Failed shards listed in the text view; --json lists all.
SHOW_FAILURES = 20

Paint = Callable[[str, "str | None"], str]


def _gb(n: int) -> str:
    return f"{n / 1e9:,.2f}"


def format_status(status: JobStatus, colour: bool = True) -> str:
    """The text view of ``slimtok status``; problems in yellow/red when ``colour``."""
    import click

    def paint(text: str, fg: str | None) -> str:
        return click.style(text, fg=fg) if colour and fg else text

    rows = [f"{status.root} at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status.now))}",
            f"{'split':<11}{'shards':>8}{'done':>8}{'running':>9}{'failed':>8}{'pending':>9}"
            f"{'documents':>15}{'tokens':>18}{'in GB':>10}{'out GB':>10}"]
    for name, s in [*status.splits.items(), ("all", status.total)]:
        failed = paint(f"{s.failed:>8}", "red" if s.failed else None)
        rows.append(f"{name:<11}{s.shards:>8}{s.done:>8}{s.running:>9}{failed}{s.pending:>9}"
                    f"{s.documents:>15,}{s.tokens:>18,}{_gb(s.bytes_in):>10}{_gb(s.bytes_out):>10}")
    rows.append(throughput_line(status))
    rows.extend(disk_lines(status, paint))
    for stage in status.stages:
        rows.append(f"{stage.name}: {stage.done:,}/{stage.total:,} {stage.unit} done"
                    + (f" · {stage.detail}" if stage.detail else ""))
    for name, counts in sorted(status.sources.items()):
        rows.append(f"source {name}: " + " · ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    rows.extend(_host_rows(status.workers))
    rows.extend(bounds_rows(status))
    rows.extend(_worker_rows(status.workers, paint))
    rows.extend(_listed(f"failed shards ({len(status.failures)}; `slimtok tokenize --retry-failed` retries them):",
                        status.failures, paint))
    rows.extend(_listed(f"unreadable done records ({len(status.unreadable)}; counted as pending):",
                        status.unreadable, paint))
    return "\n".join(rows)


def _listed(title: str, reasons: dict[str, str], paint: Paint) -> list[str]:
    """``title`` and the first SHOW_FAILURES ``shard: reason`` lines, in red; nothing when empty."""
    if not reasons:
        return []
    rows = [paint(title, "red")] + [paint(f"  {shard}: {why}", "red") for shard, why in
                                    list(reasons.items())[:SHOW_FAILURES]]
    if len(reasons) > SHOW_FAILURES:
        rows.append(f"  ... and {len(reasons) - SHOW_FAILURES} more (--json lists all)")
    return rows


def throughput_line(status: JobStatus) -> str:
    """Rates over the latest run of workers (or its last --window), and the ETA at that rate."""
    tp = status.throughput
    if tp.seconds <= 0:
        if status.eta_seconds == 0:  # e.g. a mix's output, written without tokenize workers
            return "throughput: no worker heartbeat here · every shard is done"
        return "throughput: no worker heartbeat yet · ETA unknown"
    if tp.running:
        span = f"this run, last {duration(tp.seconds)}"
    else:
        ended = time.strftime('%H:%M:%S', time.localtime(tp.ended_at))
        span = f"last run ({duration(tp.seconds)}, ended {ended}; nothing running now)"
    eta = status.eta_seconds
    if eta is None:
        eta_text = "unknown (no shard finished in this run yet)"
    else:
        eta_text = duration(eta) + ("" if tp.running or eta == 0 else " once relaunched")
    return (f"{span}: {tp.shards} shards · {tp.per_second(tp.tokens):,.0f} tok/s · "
            f"in {tp.per_second(tp.bytes_in) / 1e6:,.1f} MB/s · out {tp.per_second(tp.bytes_out) / 1e6:,.1f} MB/s"
            f" · live workers now {tp.live_tokens_per_second:,.0f} tok/s · ETA {eta_text}")


def disk_lines(status: JobStatus, paint: Paint) -> list[str]:
    """Token bytes written and still expected, and the output root filesystem's free space."""
    disk = status.disk
    if disk is None:
        return []
    e = disk.expected
    expected = f"{format_bytes(e.bytes)} still expected (±{e.margin:.0%})"
    if e.unestimated_source_bytes:
        expected += f", plus {format_bytes(e.unestimated_source_bytes)} of source with no done shard to measure"
    line = f"disk: {format_bytes(disk.written)} of tokens written · {expected}"
    if disk.space is None:
        return [line + " · free space unknown"]
    short = disk.space.free < e.high
    free = paint(f"{format_bytes(disk.space.free)} free of {format_bytes(disk.space.total)}",
                 "red" if short else None)
    return [line + f" · {free}" + (" (less than still expected)" if short else "")]


def _host_rows(workers: list[WorkerStatus]) -> list[str]:
    """Per host: live workers and the host's whole CPU use, from its freshest measured heartbeat."""
    latest: dict[str, Heartbeat] = {}
    count: dict[str, int] = {}
    for w in workers:
        if w.health == "ok":
            hb = w.heartbeat
            count[hb.host] = count.get(hb.host, 0) + 1
            if w.measured and (hb.host not in latest or hb.updated_at > latest[hb.host].updated_at):
                latest[hb.host] = hb
    return [f"host {host}: {n} live workers · " + (
            f"host cpu {latest[host].host_cpu_percent:.0f}% of {latest[host].host_cpus} cores" if host in latest
            else "host cpu not measured yet (workers starting)")
            for host, n in sorted(count.items())]


#: How the text view names each phase.
PHASE_LABELS = {"read": "read", "parse": "parse", "encode": "encode", "write": "write", "claim_wait": "claim"}


def bounds_rows(status: JobStatus) -> list[str]:
    """What bounds the latest run's workers: the job's line, then one per host when there are several."""
    if not status.bounds.workers:
        return []
    rows = [bounds_line("bounds, all workers", status.bounds)]
    if len(status.node_bounds) > 1:
        rows.extend(bounds_line(f"bounds, host {host}", b) for host, b in status.node_bounds.items())
    return rows


def bounds_line(title: str, b: Bounds) -> str:
    """``title: <verdict> · cpu N% of wall · <phase> N% ... · read N MB/s · write N MB/s``."""
    shares = " ".join(f"{PHASE_LABELS[k]} {v:.0%}" for k, v in b.shares.items())
    rates = " · ".join(f"{what} " + (f"{rate / 1e6:,.1f} MB/s" if rate is not None else "unknown")
                       for what, rate in (("read", b.rate(b.bytes_read)), ("write", b.rate(b.bytes_written))))
    workers = f"{b.workers} worker" + ("" if b.workers == 1 else "s")
    return (f"{title} ({workers}): {b.verdict} · cpu {b.cpu_saturation:.0%} of wall · {shares} · "
            f"{rates}")


def _worker_rows(workers: list[WorkerStatus], paint: Paint) -> list[str]:
    shown = [w for w in workers if w.health != "exited"]
    exited = len(workers) - len(shown)
    if not shown:
        return [f"no live workers ({exited} exited)"]
    rows = [f"{'host':<16}{'proc':>5}{'wrk':>4}{'pid':>8}  {'shard':<40}{'tok/s':>10}{'cpu%':>6}{'rss MiB':>9}"
            f"{'beat':>7}  state"]
    for w in shown:
        rows.append(paint(_worker_row(w), HEALTH_COLOUR[w.health]))
    if exited:
        rows.append(f"({exited} exited workers not shown)")
    return rows


def _worker_row(w: WorkerStatus) -> str:
    """One worker; a starting worker's rates and CPU cover no interval yet, so they show as "-"."""
    hb = w.heartbeat
    verdict = hb.state if w.health == "ok" else f"{w.health.upper()} ({hb.state})"
    rate: Any = f"{hb.tokens_per_second:,.0f}" if w.measured else "-"
    cpu: Any = f"{hb.cpu_percent:.0f}" if w.measured else "-"
    return (f"{hb.host[:15]:<16}{hb.process_index:>5}{hb.worker_index:>4}{hb.pid:>8}  "
            f"{(hb.shard or '-')[-39:]:<40}{rate:>10}{cpu:>6}{hb.rss_bytes / 2**20:>9,.0f}{w.age:>6.0f}s  {verdict}")
