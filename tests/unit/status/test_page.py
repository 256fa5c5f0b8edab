"""The status page's view and server (issue 28): throughput history from the done records, what is
never shown (credentials, markup), malformed records as rows, a finished mix's targets, the HTTP
endpoints on 127.0.0.1 and the address parsing. The browser tests are tests/e2e/test_status_page.py."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import psutil
import pytest

from slimtok.errors import SlimtokError
from slimtok.job import read_job
from slimtok.protocol import (
    DoneRecord,
    DoneRollup,
    FailedRecord,
    Heartbeat,
    Meta,
    OutputRoot,
    RollupRow,
    hostname,
    read_record,
    worker_name,
    write_record,
)
from slimtok.status import collect_status
from slimtok.status.history import root_history, throughput_history
from slimtok.status.page import page_view, redact
from slimtok.status.serve import is_loopback, make_server, parse_address
from slimtok.status.template import render_page

DATASET = {"train_shards": 4, "docs_per_shard": 30, "holdout_docs": 6}


def _row(start: float, seconds: float, tokens: int, source: int, host: str) -> RollupRow:
    return RollupRow(documents=1, tokens=tokens, bytes=4 * tokens, source_size=source, finished_at=start + seconds,
                     sources={}, record_bytes=0, host=host, seconds=seconds)


def test_history_spreads_each_shard_over_the_seconds_it_took():
    rows = {"a": _row(0, 10, 100, 1000, "a"), "b": _row(5, 10, 300, 3000, "b")}
    h = throughput_history(rows, end=20, bins=4)
    assert (h.start, h.step, h.bins) == (0, 5, 4)
    # a: 100 tokens over [0, 10] -> 50 in each of bins 0 and 1; b: 300 over [5, 15] -> 150 in bins 1 and 2
    assert h.tokens == [10.0, 40.0, 30.0, 0.0]
    assert h.nodes == {"a": [10.0, 10.0, 0.0, 0.0], "b": [0.0, 30.0, 30.0, 0.0]}
    assert h.bytes_in == [100.0, 400.0, 300.0, 0.0]
    assert h.bytes_out == [4 * v for v in h.tokens]
    # a shard with no duration lands whole in its finish bin
    h = throughput_history({**rows, "c": _row(7, 0, 50, 0, "c")}, end=20, bins=4)
    assert h.tokens == [10.0, 50.0, 30.0, 0.0]


def _done_records(root: Path) -> list[DoneRecord]:
    return [read_record(p, DoneRecord) for p in sorted((root / "done").rglob("*.json"))]


def test_view_history_and_figures_agree_with_the_done_records(tokenized_root, bpe_tokenizer):
    run = tokenized_root(DATASET, bpe_tokenizer, "--spawn-workers", "2")
    view = page_view(run.root)
    assert view["error"] is None
    records = _done_records(run.root)
    h = view["history"]
    step = h["step"]
    assert sum(h["tokens_per_second"]) * step == pytest.approx(sum(r.tokens for r in records))
    assert sum(h["bytes_in_per_second"]) * step == pytest.approx(sum(r.source_size for r in records))
    assert sum(h["bytes_out_per_second"]) * step == pytest.approx(sum(r.bytes for r in records))
    hosts = {r.host for r in records}
    assert set(h["nodes_tokens_per_second"]) == hosts
    for host in hosts:
        assert sum(h["nodes_tokens_per_second"][host]) * step == pytest.approx(
            sum(r.tokens for r in records if r.host == host))
    assert h["start"] == pytest.approx(min(r.finished_at - r.seconds for r in records))
    [tokens_chart] = [c for c in view["charts"] if c["id"] == "tokens"]
    assert [s["name"] for s in tokens_chart["series"]] == ["all", *sorted(hosts)]
    [splits] = [t for t in view["tables"] if t["id"] == "splits"]
    total = sum(r.tokens for r in records)
    assert splits["rows"][-1]["key"] == "all" and f"{total:,}" in splits["rows"][-1]["cells"]


def test_history_survives_a_rebuilt_rollup(tokenized_root, bpe_tokenizer):
    """The roll-up carries each record's host and seconds: a view from the cache equals one from
    the records themselves (the cache deleted)."""
    run = tokenized_root(DATASET, bpe_tokenizer, "--spawn-workers", "2")
    collect_status(run.root)  # slimtok status writes the roll-up the page then reads
    cached = page_view(run.root)["history"]
    OutputRoot(run.root).done_rollup.unlink()
    for journal in OutputRoot(run.root).done_journals():
        journal.unlink()
    assert page_view(run.root)["history"] == cached


def test_history_of_a_rollup_behind_the_done_records_reads_them(tokenized_root, bpe_tokenizer):
    """Where status could not update the roll-up (a read-only mount) it misses recent shards: the
    history then takes the rows from the done records, and its totals still match them."""
    run = tokenized_root(DATASET, bpe_tokenizer, "--spawn-workers", "2")
    root = OutputRoot(run.root)
    collect_status(run.root)
    behind = read_record(root.done_rollup, DoneRollup)
    behind.shards.pop(sorted(behind.shards)[0])
    write_record(root.done_rollup, behind)
    records = _done_records(run.root)
    h = root_history(root, read_job(root), len(records), None)
    assert sum(h.tokens) * h.step == pytest.approx(sum(r.tokens for r in records))
    assert {k: sum(v) * h.step for k, v in h.nodes.items()} == pytest.approx(
        {host: sum(r.tokens for r in records if r.host == host) for host in {r.host for r in records}})


SECRET = "s3cr3t-value-from-env"
HUB_TOKEN = "hf_" + "A1b2C3d4E5f6G7h8I9j0K1l2"


def test_nothing_secret_or_marked_up_reaches_the_page(tokenized_root, bpe_tokenizer, monkeypatch):
    run = tokenized_root(DATASET, bpe_tokenizer, "--spawn-workers", "2")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    root = OutputRoot(run.root)
    reason = (f"<script>alert(1)</script> {SECRET} {HUB_TOKEN} https://user:pa55word@example.org/x "
              "token=abcdef123456 </script><!--")
    shard = "train/chunk1/example_train_0"
    write_record(root.failed(shard), FailedRecord(shard, "/x", reason, "h", 1, "l", 0.0))
    root.done(shard).unlink()  # failed, not done
    view = page_view(run.root)
    text = json.dumps(view)
    for secret in (SECRET, HUB_TOKEN, "pa55word", "abcdef123456"):
        assert secret not in text
    [failures] = [t for t in view["tables"] if t["id"] == "failures"]
    assert failures["rows"][0]["cells"][1].startswith("<script>alert(1)</script> [redacted] [redacted] "
                                                      "https://[redacted]@example.org/x token=[redacted]")
    page = render_page(view, view["root"])
    # the markup from the root is data inside the JSON, never markup: the page's own two scripts only
    assert page.count("<script") == 2 and page.count("</script>") == 2 and "<!--" not in page
    embedded = page.split('<script type="application/json" id="view">', 1)[1].split("</script>", 1)[0]
    assert orjson.loads(embedded) == orjson.loads(orjson.dumps(view))


def test_redact_keeps_ordinary_text(monkeypatch):
    monkeypatch.setenv("MY_API_KEY", "k3y-k3y-k3y")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to replace safely: ordinary words contain it
    assert redact("a k3y-k3y-k3y b abc /data/abc.jsonl") == "a [redacted] b abc /data/abc.jsonl"


def test_malformed_records_become_rows_not_errors(tokenized_root, bpe_tokenizer):
    run = tokenized_root(DATASET, bpe_tokenizer, "--spawn-workers", "2")
    root = OutputRoot(run.root)
    bad_beat = root.heartbeats_dir() / "broken-p0-w9.json"
    bad_beat.write_text("{not a heartbeat")
    shard = "train/chunk2/example_train_1"
    root.done(shard).write_text('{"shard": "cut off')
    view = page_view(run.root)
    [unreadable] = [t for t in view["tables"] if t["id"] == "unreadable"]
    rows = {r["key"]: r["cells"][1] for r in unreadable["rows"]}
    assert "cannot be parsed" in rows[shard] and str(root.done(shard)) in rows[shard]
    assert "cannot be parsed as a heartbeat" in rows["heartbeat:broken-p0-w9.json"]
    # a root that cannot be read at all: the page says why and keeps going
    root.job.write_text("{")
    broken = page_view(run.root)
    assert broken["error"] and "job.json" in broken["error"] and set(broken) == {"root", "at", "error"}


def test_phase_accounting_is_shown_when_the_status_carries_it(tokenized_root, bpe_tokenizer, monkeypatch):
    """Another view may add ``phases`` and ``cpu_saturation`` per worker to the status JSON: shown
    as shares and the bounding phase; absent, "—"."""
    import slimtok.status.page as page

    run = tokenized_root(DATASET, bpe_tokenizer, "--spawn-workers", "2")
    name = worker_name(hostname(), 7, 0)
    now = time.time()
    # this process as a live worker (its pid, started after it)
    write_record(OutputRoot(run.root).heartbeat(name), Heartbeat(
        worker=name, host=hostname(), pid=os.getpid(), process_index=7, worker_index=0, shard=None,
        state="working", documents=0, tokens=0, text_chars=0, shards_done=0, tokens_per_second=10.0,
        cpu_percent=50.0, rss_bytes=1 << 20, updated_at=now, started_at=psutil.Process().create_time() + 0.5,
        interval=30.0))
    real = page.JobStatus.to_dict

    def with_phases(self):
        data = real(self)
        for w in data["workers"]:
            if w["worker"] == name:
                w.update(phases={"read": 1.0, "parse": 1.0, "encode": 6.0, "write": 1.0, "claim_wait": 1.0},
                         cpu_saturation=0.8)
        return data

    without = {r["key"]: r["cells"] for t in page_view(run.root)["tables"] if t["id"] == "workers"
               for r in t["rows"]}
    monkeypatch.setattr(page.JobStatus, "to_dict", with_phases)
    [workers] = [t for t in page_view(run.root)["tables"] if t["id"] == "workers"]
    [row] = [r for r in workers["rows"] if r["key"] == name]
    cells = dict(zip(workers["columns"], row["cells"], strict=True))
    assert cells["bound by"] == "encode" and cells["saturation"] == "80%"
    assert cells["phases"] == "read 10% · parse 10% · encode 60% · write 10% · claim_wait 10%"
    assert cells["read"] == "—"  # bytes_read absent
    plain = dict(zip(workers["columns"], without[name], strict=True))
    assert (plain["bound by"], plain["saturation"], plain["phases"]) == ("—", "—", "—")


def test_finished_mix_shows_target_against_realized(tokenized_root, bpe_tokenizer):
    run = tokenized_root(DATASET, bpe_tokenizer, "--spawn-workers", "2")
    root = OutputRoot(run.root)
    mix = {"web": {"target_tokens": 1000, "tokens": 1012, "documents": 3}, "code": "garbled"}
    write_record(root.meta_json, Meta(splits={"train": {"mix": mix}}))
    view = page_view(run.root)
    [table] = [t for t in view["tables"] if t["id"] == "mix"]
    rows = {r["key"]: r["cells"] for r in table["rows"]}
    assert rows["train:web"][2:] == ["1,000", "1,012", "3"] and rows["train:code"][2] == "malformed mix entry"
    [chart] = [c for c in view["charts"] if c["id"] == "mix"]
    assert chart["bars"] == [{"name": "train/web", "values": [1000, 1012], "labels": ["1,000", "1,012"]}]


def test_eta_has_its_basis_and_a_range_from_the_run_history():
    from slimtok.status import JobStatus, SplitStatus, Throughput
    from slimtok.status.page import _eta_lines

    status = JobStatus(root="r", now=100.0, splits={"train": SplitStatus(shards=10, done=5, pending=5,
                                                                         bytes_left=1000)},
                       throughput=Throughput(seconds=100, started_at=0, ended_at=100, running=True, bytes_in=500))
    history = {"start": 0.0, "step": 25.0, "bins": 4, "bytes_in_per_second": [2.0, 4.0, 6.0, 8.0]}
    [_, eta] = _eta_lines(status, history)
    # 1000 B left at 500 B / 100 s; the quartile rates (nearest rank) 2 and 6 B/s give 500 s and 166 s
    assert eta["text"] == ("ETA 3m20s (range 2m46s – 8m20s at the run's quartile rates); basis: 1.00 kB of "
                           "source left at 5 B/s in over the latest run")


def test_job_wide_accounting_is_a_line_when_present():
    from slimtok.status.page import _job_line

    assert _job_line({"workers": []}) == []
    # workers that reported no phases (older heartbeats): no line
    assert _job_line({"bounds": {"job": {"cpu_saturation": 0.0, "phases": {"read": 0.0}}}}) == []
    job = {"cpu_saturation": 0.5, "verdict": "read-bound", "read_bytes_per_s": 2_500_000,
           "phases": {"read": 3.0, "encode": 1.0}}
    [line] = _job_line({"bounds": {"job": job, "nodes": {}}})
    assert line["text"] == ("job: CPU saturation 50% · verdict read-bound · bound by read · read 2.50 MB/s · "
                            "write — · phases read 75% · encode 25%")


def test_server_shows_an_unexpected_failure_as_the_page_error(monkeypatch, tmp_path):
    import slimtok.status.serve as serve

    def broken(root, window, read_only):
        raise ValueError("a record field of the wrong type")

    monkeypatch.setattr(serve, "page_view", broken)
    server = make_server(tmp_path, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code, _, body = _get(f"http://127.0.0.1:{server.server_address[1]}/status.json")
        assert code == 200
        assert orjson.loads(body)["error"] == "cannot build the status: ValueError: a record field of the wrong type"
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_server_answers_the_page_and_its_json_only(tokenized_root, bpe_tokenizer):
    run = tokenized_root(DATASET, bpe_tokenizer, "--spawn-workers", "2")
    server = make_server(run.root, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code, kind, body = _get(base + "/")
        assert code == 200 and kind.startswith("text/html") and b'fetch("status.json"' in body
        code, kind, body = _get(base + "/status.json")
        view = orjson.loads(body)
        assert code == 200 and kind == "application/json"
        assert view["error"] is None and view["tables"][0]["id"] == "splits"
        assert _get(base + "/../job.json")[0] == 404 and _get(base + "/done/")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_addresses():
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_address("[::1]:9") == ("::1", 9)
    with pytest.raises(SlimtokError, match="the port must be a number"):
        parse_address("host:http")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("node7")


def test_page_options_refuse_what_they_do_not_do(tokenized_root, bpe_tokenizer):
    from helpers.cli import slimtok

    run = tokenized_root(DATASET, bpe_tokenizer, "--spawn-workers", "2")
    mixed = slimtok("status", "--output-root", run.root, "--html", run.work / "r.html", "--json", check=False)
    assert mixed.returncode == 2 and "--serve and --html show the page only" in mixed.stderr
    assert not (run.work / "r.html").exists()
    bad = slimtok("status", "--output-root", run.root, "--serve", "localhost:http", check=False)
    assert bad.returncode == 2 and "the port must be a number from 0 to 65535" in bad.stderr


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime (ns): any write shows."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_the_page_writes_nothing_under_the_root_and_shows_what_status_shows(tokenized_root, bpe_tokenizer):
    from slimtok.status.collect import ReadOnly

    run = tokenized_root(DATASET, bpe_tokenizer, "--spawn-workers", "2")
    root = Path(run.root)
    before = _tree(root)
    held = ReadOnly()
    views = [page_view(root, read_only=held) for _ in range(2)]  # the second from the held roll-up
    assert _tree(root) == before
    assert held.rollup is not None and len(held.rollup.shards) == DATASET["train_shards"] + 2  # + val, test
    # slimtok status (which writes its roll-up and clock probe) counts the same
    written = collect_status(root).to_dict()
    assert _tree(root) != before
    for view in views:
        assert view["error"] is None
        [splits] = [t for t in view["tables"] if t["id"] == "splits"]
        shown = {r["key"]: r["cells"] for r in splits["rows"]}
        for name, split in written["splits"].items():
            assert shown[name][1:3] == [f"{split['shards']:,}", f"{split['done']:,}"]
    assert views[0]["history"] == views[1]["history"] == page_view(root)["history"]
