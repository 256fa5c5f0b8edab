"""The status page's view: everything ``slimtok status --serve`` and ``--html`` show, as one JSON
object of display-ready cells (byte units from :func:`slimtok.space.format_bytes`, durations from
:func:`slimtok.progress.duration`) plus the numbers the bars and charts are drawn from.

Invariants: the view is built from the output root alone (``collect_status``, the done records'
history, ``meta.json``); every string taken from the root passes :func:`redact` (no credential,
token or secret environment value is ever shown) and is rendered by the page as text, never as
markup; a record that cannot be read becomes a row saying so, and a root that cannot be read at
all becomes an ``error`` the page shows while it keeps polling.
"""

from __future__ import annotations

import math
import os
import re
import time
from typing import Any

from ..errors import SlimtokError
from ..job import read_job
from ..progress import duration
from ..protocol import Meta, OutputRoot, read_record
from ..space import format_bytes
from .collect import WINDOW, ReadOnly, collect_status
from .history import root_history
from .model import JobStatus

#: Environment variables whose values are never shown (matched on the name, upper case).
SECRET_NAMES = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_?KEY|AUTH")
#: Credentials recognisable by their shape: user:password@ in a URL, Hub tokens, key=value secrets.
SECRET_SHAPES = [
    (re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@"), "[redacted]@"),
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}\b"), "[redacted]"),
    (re.compile(r"(?i)\b(token|secret|password|api_key|access_key)=[^\s&;,]+"), r"\1=[redacted]"),
]
#: Phases of the workers' time accounting, in pipeline order (shown when the heartbeats carry them).
PHASES = ("read", "parse", "encode", "write", "claim_wait")
NONE = "—"


def redact(text: str) -> str:
    """``text`` without credentials: values of secret-named environment variables (6+ characters,
    so short values do not blank ordinary words) and secrets recognisable by their shape."""
    for name, value in os.environ.items():
        if len(value) >= 6 and SECRET_NAMES.search(name.upper()):
            text = text.replace(value, "[redacted]")
    for pattern, replacement in SECRET_SHAPES:
        text = pattern.sub(replacement, text)
    return text


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else NONE


def _b(value: Any) -> str:
    return format_bytes(int(value)) if isinstance(value, (int, float)) else NONE


def _rate(value: Any) -> str:
    return f"{format_bytes(int(value))}/s" if isinstance(value, (int, float)) else NONE


def _pct(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else NONE


def _phases(phases: Any) -> tuple[str, str]:
    """(``read 10% · encode 80% …`` of the seconds a worker or node spent per phase, the phase that
    bounds it); "—" for both where no accounting is present."""
    if not isinstance(phases, dict):
        return NONE, NONE
    seconds = {k: float(v) for k, v in phases.items() if k in PHASES and isinstance(v, (int, float))}
    total = sum(seconds.values())
    if total <= 0:
        return NONE, NONE
    shares = " · ".join(f"{k} {seconds[k] / total:.0%}" for k in PHASES if k in seconds)
    return shares, max(seconds, key=lambda k: seconds[k])


def _table(table_id: str, title: str, columns: list[str], rows: list[dict[str, Any]], note: str = "") -> dict:
    return {"id": table_id, "title": title, "columns": columns, "rows": rows, "note": note}


def _row(key: str, cells: list[str], level: str = "", bar: float | None = None) -> dict[str, Any]:
    """One table row: ``key`` names it for scripts and tests (``data-row``), ``level`` is "" / warn /
    bad, ``bar`` a fraction drawn as a progress bar after the cells."""
    return {"key": redact(key), "cells": [redact(c) for c in cells], "level": level, "bar": bar}


def _split_rows(status: JobStatus) -> list[dict[str, Any]]:
    rows = []
    for name, s in [*status.splits.items(), ("all", status.total)]:
        fraction = s.done / s.shards if s.shards else 1.0
        rows.append(_row(name, [name, _n(s.shards), _n(s.done), _n(s.running), _n(s.failed), _n(s.pending),
                                f"{fraction:.1%}", _n(s.documents), _n(s.tokens),
                                f"{format_bytes(s.bytes_in)} of {format_bytes(s.source_bytes)}",
                                format_bytes(s.bytes_out)],
                         "bad" if s.failed else "", fraction))
    return rows


def _eta_lines(status: JobStatus, history: dict[str, Any]) -> list[dict[str, str]]:
    """The rates of the latest run and the ETA with its basis and a range: the bytes left at the
    lower and upper quartile (nearest rank) of the history's source bytes/s over that run's bins."""
    tp = status.throughput
    eta = status.eta_seconds
    left = status.total.bytes_left
    lines = []
    if tp.seconds > 0:
        span = f"latest run, last {duration(tp.seconds)}" + ("" if tp.running else " (nothing running now)")
        lines.append({"id": "rates", "text": f"{span}: {tp.shards:,} shards · "
                      f"{tp.per_second(tp.tokens):,.0f} tok/s · in {_rate(tp.per_second(tp.bytes_in))} · "
                      f"out {_rate(tp.per_second(tp.bytes_out))} · live workers now "
                      f"{tp.live_tokens_per_second:,.0f} tok/s"})
    else:
        lines.append({"id": "rates", "text": "rates: no worker heartbeat here"})
    if eta == 0:
        lines.append({"id": "eta", "text": "ETA: every shard is finished or failed"})
    elif eta is None:
        lines.append({"id": "eta", "text": f"ETA unknown: {format_bytes(left)} of source left and the latest "
                      "run has finished no shard yet"})
    else:
        rates = sorted(v for i, v in enumerate(history["bytes_in_per_second"])
                       if v > 0 and history["start"] + (i + 1) * history["step"] >= tp.started_at)
        spread = ""
        if len(rates) >= 4:
            low, high = rates[math.ceil(len(rates) / 4) - 1], rates[math.ceil(3 * len(rates) / 4) - 1]
            spread = f" (range {duration(left / high)} – {duration(left / low)} at the run's quartile rates)"
        lines.append({"id": "eta", "text": f"ETA {duration(eta)}{'' if tp.running else ' once relaunched'}"
                      f"{spread}; basis: {format_bytes(left)} of source left at "
                      f"{_rate(tp.per_second(tp.bytes_in))} in over the latest run"})
    return lines


def _bounds(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The status JSON's ``bounds`` (what bounds the job's and each node's workers: phases, CPU
    saturation, verdict, I/O rates; :class:`slimtok.status.model.Bounds`) as (job, nodes by host);
    empty where absent or malformed."""
    bounds = data.get("bounds")
    if not isinstance(bounds, dict):
        return {}, {}
    job, nodes = bounds.get("job"), bounds.get("nodes")
    return (job if isinstance(job, dict) else {},
            {str(k): v for k, v in nodes.items() if isinstance(v, dict)} if isinstance(nodes, dict) else {})


def _accounted(group: dict[str, Any]) -> bool:
    """Whether a group's workers reported phase accounting (older heartbeats carry none)."""
    phases = group.get("phases")
    return isinstance(phases, dict) and any(isinstance(v, (int, float)) and v > 0 for v in phases.values())


def _job_line(data: dict[str, Any]) -> list[dict[str, str]]:
    """The whole job's CPU saturation, verdict, bounding phase and I/O rates; nothing when its
    workers reported no phase accounting."""
    job, _ = _bounds(data)
    if not _accounted(job):
        return []
    shares, bound = _phases(job.get("phases"))
    return [{"id": "job", "text": redact(f"job: CPU saturation {_pct(job.get('cpu_saturation'))} · verdict "
             f"{job.get('verdict', NONE)} · bound by {bound} · read {_rate(job.get('read_bytes_per_s'))} · write "
             f"{_rate(job.get('write_bytes_per_s'))} · phases {shares}")}]


def _worker_tables(status: JobStatus, data: dict[str, Any]) -> list[dict]:
    """Per node, then the live (ok / stale) workers one row each; a dead worker is one row of its
    own table, an exited one a count."""
    by_host: dict[str, dict[str, int]] = {}
    host_cpu: dict[str, str] = {}
    for w in status.workers:
        counts = by_host.setdefault(w.heartbeat.host, {"ok": 0, "stale": 0, "dead": 0, "exited": 0})
        counts[w.health] = counts.get(w.health, 0) + 1
        if w.health == "ok" and w.measured:
            host_cpu[w.heartbeat.host] = f"{w.heartbeat.host_cpu_percent:.0f}% of {w.heartbeat.host_cpus} cores"
    _, extra = _bounds(data)
    node_rows = []
    for host, counts in sorted(by_host.items()):
        n = extra.get(host, {})
        if not _accounted(n):  # no accounting: nothing to say about saturation or verdict
            n = {k: v for k, v in n.items() if k in ("read_bytes_per_s", "write_bytes_per_s")}
        shares, bound = _phases(n.get("phases"))
        level = "bad" if counts["dead"] else "warn" if counts["stale"] else ""
        node_rows.append(_row(host, [host, str(counts["ok"]), str(counts["stale"]), str(counts["dead"]),
                                     str(counts["exited"]), host_cpu.get(host, NONE), _pct(n.get("cpu_saturation")),
                                     str(n.get("verdict", NONE)), bound, _rate(n.get("read_bytes_per_s")),
                                     _rate(n.get("write_bytes_per_s")), shares], level))
    raw = {w["worker"]: w for w in data.get("workers", []) if isinstance(w, dict)}
    live, dead = [], []
    for w in status.workers:
        hb, r = w.heartbeat, raw.get(w.heartbeat.worker, {})
        if w.health == "dead":
            dead.append(_row(hb.worker, [hb.worker, hb.host, str(hb.pid), hb.shard or NONE, hb.state,
                                         f"{w.age:.0f} s ago"], "bad"))
        elif w.health != "exited":
            shares, bound = _phases(r.get("phases"))
            saturation = _pct(r.get("cpu_saturation")) if _accounted(r) else NONE
            rate = f"{hb.tokens_per_second:,.0f}" if w.measured else NONE
            cpu = f"{hb.cpu_percent:.0f}%" if w.measured else NONE
            live.append(_row(hb.worker, [hb.worker, hb.host, str(hb.pid), hb.shard or NONE, hb.state, w.health,
                                         rate, cpu, saturation, bound, shares,
                                         _b(r.get("bytes_read")), _b(r.get("bytes_written")),
                                         format_bytes(hb.rss_bytes), f"{w.age:.0f} s"],
                             "warn" if w.health == "stale" else ""))
    exited = sum(c["exited"] for c in by_host.values())
    return [
        _table("nodes", "Nodes", ["host", "live", "stale", "dead", "exited", "host CPU", "CPU saturation",
                                  "verdict", "bound by", "read", "write", "phases"], node_rows),
        _table("workers", "Workers", ["worker", "host", "pid", "shard", "state", "health", "tok/s", "CPU",
                                      "saturation", "bound by", "phases", "read", "written", "RSS", "beat"],
               live, f"{exited} exited workers not listed" if exited else ""),
        _table("dead", "Dead workers", ["worker", "host", "pid", "shard", "last state", "last beat"], dead),
    ]


def _malformed_heartbeats(root: OutputRoot, status: JobStatus) -> list[dict[str, Any]]:
    """Heartbeat files that do not parse (``collect_status`` leaves them out), one row each."""
    folder = root.heartbeats_dir()
    parsed = {f"{w.heartbeat.worker}.json" for w in status.workers}
    try:
        names = sorted(n for n in root.storage.list_names(folder) if n.endswith(".json") and n not in parsed)
    except OSError:
        return []
    return [_row(f"heartbeat:{n}", [str(folder / n), "cannot be parsed as a heartbeat; left out of the counts"],
                 "warn") for n in names]


def _disk_lines(status: JobStatus) -> list[dict[str, str]]:
    disk = status.disk
    if disk is None:
        return []
    e = disk.expected
    text = (f"disk: {format_bytes(disk.written)} of tokens written · {format_bytes(e.bytes)} still expected "
            f"(±{e.margin:.0%}: {format_bytes(e.low)} – {format_bytes(e.high)})")
    if e.unestimated_source_bytes:
        text += f", plus {format_bytes(e.unestimated_source_bytes)} of source not yet measured"
    if disk.space is None:
        return [{"id": "disk", "text": text + " · free space unknown", "level": "warn"}]
    room = disk.space.free - e.high
    text += (f" · {format_bytes(disk.space.free)} free of {format_bytes(disk.space.total)} · margin "
             + (f"{format_bytes(room)}" if room >= 0 else f"short by {format_bytes(-room)}"))
    return [{"id": "disk", "text": text, "level": "bad" if room < 0 else ""}]


def _mix(root: OutputRoot) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(table rows, chart bars) of target vs realized tokens per source of a finished mix's
    ``meta.json`` (``splits[*].mix``); empty for other roots."""
    meta = read_record(root.meta_json, Meta)
    if meta is None:
        return [], []
    rows, bars = [], []
    for split, entry in meta.splits.items():
        sources = entry.get("mix") if isinstance(entry, dict) else None
        for name, m in (sources or {}).items():
            if not isinstance(m, dict):
                rows.append(_row(f"{split}:{name}", [split, name, "malformed mix entry", NONE, NONE], "warn"))
                continue
            target, tokens = m.get("target_tokens"), m.get("tokens")
            rows.append(_row(f"{split}:{name}", [split, name, _n(target), _n(tokens), _n(m.get("documents"))]))
            if isinstance(target, int) and isinstance(tokens, int):
                bars.append({"name": redact(f"{split}/{name}"), "target": target, "realized": tokens})
    return rows, bars


def page_view(output_root: str | os.PathLike[str], window: float = WINDOW,
              read_only: ReadOnly | None = None) -> dict[str, Any]:
    """The whole page as JSON; ``error`` (and nothing else) when the root cannot be read. Writes
    nothing under the root: ``read_only`` holds what ``slimtok status`` would cache there (a server
    keeps one between its views; None: a new one, for a single view)."""
    read_only = read_only if read_only is not None else ReadOnly()
    started = time.time()
    try:
        status = collect_status(output_root, window, read_only)
        root = OutputRoot(output_root)
        job = read_job(root)
        history = root_history(root, job, status.total.done,
                               status.now if status.throughput.running else None, read_only).to_dict()
    except (SlimtokError, OSError) as exc:
        return {"root": redact(str(output_root)), "at": _clock(started), "error": redact(str(exc))}
    data = status.to_dict()
    retry = (f"slimtok tokenize --manifest <the launch's manifest> --output-root {root.root} "
             f"--tokenizer {job.tokenizer} --retry-failed (and the launch's other options)")
    mix_rows, mix_bars = _mix(root)
    failures = [_row(k, [k, v], "bad") for k, v in status.failures.items()]
    tables = [
        _table("splits", "Splits", ["split", "shards", "done", "running", "failed", "to do", "progress",
                                    "documents", "tokens", "source read", "token bytes"], _split_rows(status)),
        *_worker_tables(status, data),
        _table("failures", "Failed shards", ["shard", "reason"], failures,
               f"retry them: {redact(retry)}" if failures else ""),
        _table("unreadable", "Unreadable records",
               ["record", "what is wrong"],
               [_row(k, [k, v], "warn") for k, v in status.unreadable.items()] + _malformed_heartbeats(root, status)),
        _table("stages", "Later stages", ["stage", "done", "total", "detail"],
               [_row(s.name, [s.name, _n(s.done), _n(s.total), s.detail], "", s.done / s.total if s.total else 1.0)
                for s in status.stages]),
        _table("sources", "Sources", ["source", "documents", "tokens"],
               [_row(k, [k, _n(v.get("documents")), _n(v.get("tokens"))]) for k, v in sorted(status.sources.items())]),
        _table("mix", "Mix: target vs realized", ["split", "source", "target tokens", "tokens", "documents"],
               mix_rows),
    ]
    total = status.total
    return {
        "root": redact(str(root.root)), "at": _clock(status.now), "error": None,
        "progress": total.done / total.shards if total.shards else 1.0,
        "lines": _eta_lines(status, history) + _job_line(data) + _disk_lines(status),
        "tables": [t for t in tables if t["rows"] or t["id"] in ("splits", "workers")],
        "history": {**history, "nodes_tokens_per_second": {redact(k): v for k, v in
                                                           history["nodes_tokens_per_second"].items()}},
        "charts": _charts(history, mix_bars),
        "seconds": round(time.time() - started, 3),
    }


def _charts(history: dict[str, Any], mix_bars: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chart specs the page draws as inline SVG: tokens/s overall and one series per node, source
    and token bytes/s, and a finished mix's target vs realized tokens per source."""
    charts: list[dict[str, Any]] = []
    if history["bins"]:
        start, step, bins = history["start"], history["step"], history["bins"]
        x_labels = [_clock(start), _clock(start + step * bins)]
        tokens = [{"name": "all", "values": history["tokens_per_second"]}] + [
            {"name": redact(host), "values": values} for host, values in history["nodes_tokens_per_second"].items()]
        top = max(max(s["values"]) for s in tokens)
        charts.append({"id": "tokens", "kind": "lines", "title": "tokens/s (all, and per node)", "max": top,
                       "max_label": f"{top:,.0f} tok/s", "x_labels": x_labels, "series": tokens})
        volume = [{"name": "source read", "values": history["bytes_in_per_second"]},
                  {"name": "tokens written", "values": history["bytes_out_per_second"]}]
        top = max(max(s["values"]) for s in volume)
        charts.append({"id": "bytes", "kind": "lines", "title": "bytes/s (source read, tokens written)",
                       "max": top, "max_label": _rate(top), "x_labels": x_labels, "series": volume})
    if mix_bars:
        top = max(max(b["target"], b["realized"]) for b in mix_bars)
        charts.append({"id": "mix", "kind": "bars", "title": "mix: target vs realized tokens per source",
                       "max": top, "max_label": f"{top:,} tokens", "legend": ["target", "realized"],
                       "bars": [{"name": b["name"], "values": [b["target"], b["realized"]],
                                 "labels": [f"{b['target']:,}", f"{b['realized']:,}"]} for b in mix_bars]})
    return charts


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
