"""The status page in a real browser (issue 28): headless Chromium loads ``slimtok status --serve``
while two launches (two nodes: each in its own UTS namespace with its own hostname where this
machine allows one) tokenize, and the rendered DOM is compared with ``slimtok status --json`` of
the same frozen moment; the throughput chart has one series per node that wrote done records, and
a killed worker is listed once, as dead. The ``--html`` report of the finished job is checked the
same way from a file URL. Screenshots are kept under the test's tmp dir (paths printed)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from helpers import cli
from helpers.browser import SERIES_JS, TABLES_JS, Browser, chromium_or_skip
from helpers.cli import slimtok, tokenize_cmd
from helpers.launches import framed_dataset, stop_while_holding_a_shard, wait_for
from slimtok.space import format_bytes

HOSTS = ("page-node-a", "page-node-b")


def _own_hostnames() -> bool:
    """Whether a launch can get a hostname of its own here (a UTS namespace needs root)."""
    return subprocess.run(["unshare", "-u", "true"], capture_output=True).returncode == 0


def _launch(manifest: Path, root: Path, tokenizer: Path, index: int, named: bool) -> subprocess.Popen:
    """One node of a two-node job: ``--process-index index``, one worker on the reference backend
    (the slower one, so that shards are still left once both nodes have finished one)."""
    argv = tokenize_cmd(manifest, root, tokenizer, "--process-count", 2, "--process-index", index,
                        "--spawn-workers", 1, "--tokens-per-write", 500, "--backend", "tokenizers")
    if named:
        argv = ["unshare", "-u", "sh", "-c", f"hostname {HOSTS[index]} && exec {shlex.join(argv)}"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    top = psutil.Process(proc.pid)
    return [top, *top.children(recursive=True)]


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _done_hosts(root: Path) -> set[str]:
    """Hosts named by the done records, read straight from the files."""
    return {json.loads(p.read_text())["host"] for p in (root / "done").rglob("*.json")}


def _serve(root: Path) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([sys.executable, "-m", "slimtok", "status", "--output-root", str(root),
                               "--serve", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    assert " at http://127.0.0.1:" in line, (line, server.stderr.read() if server.poll() is not None else "")
    return server, line.split(" at ", 1)[1].split(" ", 1)[0]


def _check_figures(tables: dict, status: dict) -> None:
    """The splits table shows exactly the JSON's counts, tokens and bytes."""
    rows = tables["splits"]
    for name, s in [*status["splits"].items(), ("all", status["total"])]:
        cells = rows[name]
        assert (cells["shards"], cells["done"], cells["running"], cells["failed"], cells["to do"]) == \
            tuple(f"{s[k]:,}" for k in ("shards", "done", "running", "failed", "pending")), (name, cells, s)
        assert cells["documents"] == f"{s['documents']:,}" and cells["tokens"] == f"{s['tokens']:,}"
        assert cells["token bytes"] == format_bytes(s["bytes_out"])
        assert cells["source read"] == f"{format_bytes(s['bytes_in'])} of {format_bytes(s['source_bytes'])}"


def test_live_page_matches_status_json_while_a_job_runs(tmp_path, bpe_tokenizer):
    executable = chromium_or_skip()
    ds = framed_dataset(tmp_path / "ds", shards=12, docs=1500)
    manifest = cli.manifest(tmp_path, ds)
    root = tmp_path / "out"
    named = _own_hostnames()
    first = _launch(manifest, root, bpe_tokenizer, 0, named)
    assert wait_for(lambda: (root / "job.json").exists(), timeout=120)  # one pin, then the second node
    second = _launch(manifest, root, bpe_tokenizer, 1, named)
    launches = [first, second]
    server, url = _serve(root)
    try:
        with Browser(executable, tmp_path) as browser:
            browser.open(url)
            browser.wait_for("document.body.dataset.rendered")
            browser.evaluate("window.sameDocument = true")  # gone if the page ever reloaded
            # both nodes have finished a shard and one still has shards left
            assert wait_for(lambda: len(_done_hosts(root)) == (2 if named else 1), timeout=300)
            worker, shard = stop_while_holding_a_shard(root)
            dead_pid = worker.pid
            worker.send_signal(signal.SIGKILL)
            beats = root / "heartbeats"
            assert wait_for(lambda: any(json.loads(p.read_text() or "{}").get("state", "").startswith("killed")
                                        for p in beats.glob("*.json")), timeout=120)
            frozen = [p for launch in launches for p in _tree(launch)]
            _signal_all(frozen, signal.SIGSTOP)  # the root holds still while page and JSON are compared
            try:
                after = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + 1))
                browser.wait_for(f"document.body.dataset.rendered >= {json.dumps(after)}", timeout=60)
                assert browser.evaluate("window.sameDocument") is True  # redrawn in place, not reloaded
                tables = browser.evaluate(TABLES_JS)
                series = browser.evaluate(SERIES_JS)
                status = json.loads(slimtok("status", "--output-root", root, "--json").stdout)
                shot = browser.screenshot(tmp_path / "status-page-live.png")
                print(f"screenshot of the live page: {shot}")
            finally:
                _signal_all(frozen, signal.SIGCONT)
            assert status["total"]["pending"] + status["total"]["running"] > 0, "the job finished too early"
            _check_figures(tables, status)
            assert sorted(series["tokens"]) == sorted(["all", *_done_hosts(root)])
            # the killed worker: one row, in the dead table, not among the live workers
            dead = [w for w in status["workers"] if w["pid"] == dead_pid]
            assert len(dead) == 1 and dead[0]["health"] == "dead"
            name = dead[0]["worker"]
            assert tables["dead"][name]["pid"] == str(dead_pid) and tables["dead"][name]["shard"] == shard
            assert name not in tables.get("workers", {})
            rows = f"document.querySelectorAll('tr[data-row=' + {json.dumps(json.dumps(name))} + ']').length"
            assert browser.evaluate(rows) == 1
        for launch in launches:
            _, err = launch.communicate(timeout=600)
            assert launch.returncode == 0, err
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
        for launch in launches:
            if launch.poll() is None:
                launch.kill()
                launch.wait()


def test_html_report_of_a_finished_job_matches_status_json(tmp_path, bpe_tokenizer):
    executable = chromium_or_skip()
    ds = framed_dataset(tmp_path / "ds", shards=4, docs=100)
    (ds / "train/chunk1/example_train_9.jsonl.zst").write_bytes(b"<b>not zstd</b>\n")  # fails, with a reason
    manifest = cli.manifest(tmp_path, ds)
    root = tmp_path / "out"
    assert cli.tokenize(manifest, root, bpe_tokenizer, "--spawn-workers", 2, check=False).returncode == 1
    report = tmp_path / "report.html"
    slimtok("status", "--output-root", root, "--html", report)
    status = json.loads(slimtok("status", "--output-root", root, "--json").stdout)
    with Browser(executable, tmp_path) as browser:
        browser.open(report.as_uri())
        browser.wait_for("document.body.dataset.rendered")
        tables = browser.evaluate(TABLES_JS)
        series = browser.evaluate(SERIES_JS)
        shot = browser.screenshot(tmp_path / "status-report.png")
        print(f"screenshot of the report: {shot}")
        failed = browser.evaluate("document.querySelector('[data-note=failures]').textContent")
        # self-contained: the page loaded nothing besides itself
        assert browser.evaluate("performance.getEntriesByType('resource').length") == 0
    _check_figures(tables, status)
    assert sorted(series["tokens"]) == sorted(["all", *_done_hosts(root)])
    bad = "train/chunk1/example_train_9"
    assert tables["failures"][bad]["reason"] == status["failures"][0]["reason"]
    assert "--retry-failed" in failed and str(root) in failed
    assert os.path.getsize(report) < 200_000
