"""`slimtok status` on a finished job and on one in progress, its roll-up cache, worker verdicts,
Prometheus output, and what the console and the per-worker logs get (issue: operations)."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import zstandard

from helpers import cli
from helpers.cli import slimtok
from helpers.corpus import make_dataset, reference_ids, reference_texts
from slimtok.protocol import Heartbeat, OutputRoot, hostname, read_record, worker_name, write_record
from slimtok.status import collect_status, format_status


def _documents(path: str) -> int:
    with open(path, "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    return len(reference_texts(raw.split(b"\n")))


def _dataset_with_a_bad_shard(folder: Path) -> None:
    make_dataset(folder, train_shards=3, docs_per_shard=20, holdout_docs=6)
    (folder / "train/chunk1/example_train_9.jsonl.zst").write_bytes(b'{"text": "plain"}\n')


@pytest.fixture(scope="module")
def finished(tokenized_root, bpe_tokenizer):
    """A finished job with one shard that failed (not zstd); returns (root, manifest, tokenize result)."""
    run = tokenized_root(_dataset_with_a_bad_shard, bpe_tokenizer, "--dtype", "uint32", "--spawn-workers", "1",
                         check=False)
    assert run.tokenize.returncode == 1, run.tokenize.stderr  # the bad shard
    return run.root, run.manifest, run.tokenize


def _entries(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def test_status_json_of_finished_job_matches_independent_counts(finished, bpe_tokenizer, tmp_path):
    root, manifest, _ = finished
    got = json.loads(slimtok("status", "--output-root", root, "--json").stdout)
    bad = "train/chunk1/example_train_9"
    good_manifest = tmp_path / "good.jsonl"
    good_manifest.write_text("".join(json.dumps(e) + "\n" for e in _entries(manifest) if e["id"] != bad))
    for split in ("train", "validation", "test"):
        entries = [e for e in _entries(manifest) if e["split"] == split]
        good = [e for e in entries if e["id"] != bad]
        tokens = len(reference_ids(good_manifest, bpe_tokenizer / "tokenizer.json", 0, split))
        s = got["splits"][split]
        assert (s["shards"], s["done"], s["failed"], s["running"], s["pending"]) == \
            (len(entries), len(good), len(entries) - len(good), 0, 0)
        assert s["documents"] == sum(_documents(e["path"]) for e in good)
        assert s["tokens"] == tokens
        assert s["bytes_out"] == 4 * tokens  # uint32
        assert s["bytes_in"] == sum(e["size"] for e in good)
        assert s["bytes_left"] == 0
    assert got["total"]["shards"] == len(_entries(manifest))
    assert got["eta_seconds"] == 0
    assert [f["shard"] for f in got["failures"]] == [bad]
    assert "not a zstd file" in got["failures"][0]["reason"]
    # every shard finished within the window; the sole worker has exited
    assert got["throughput"]["shards"] == got["total"]["done"]
    assert got["throughput"]["tokens"] == got["total"]["tokens"]
    assert [w["health"] for w in got["workers"]] == ["exited"]
    # every document of the corpus names the source "test" (meta.redpajama_set_name)
    assert got["sources"] == {"test": {"documents": got["total"]["documents"], "tokens": got["total"]["tokens"]}}


def test_status_text_and_prometheus_agree_with_json(finished, tmp_path):
    root, _, _ = finished
    prom = tmp_path / "metrics" / "slimtok.prom"
    prom.parent.mkdir()
    text = slimtok("status", "--output-root", root, "--prometheus", prom).stdout
    facts = collect_status(root)
    total = facts.total
    all_row = next(line for line in text.splitlines() if line.startswith("all "))
    assert all_row.split()[1:6] == [str(total.shards), str(total.done), "0", str(total.failed), "0"]
    assert f"{total.tokens:,}" in all_row
    assert "train/chunk1/example_train_9: " in text and "\x1b[" not in text  # not a terminal: no colour
    samples = dict(re.findall(r'^(slimtok_\w+\{[^}]*\}) (\S+)$', prom.read_text(), re.M))
    label = f'root="{facts.root}",split="all"'
    assert float(samples[f'slimtok_shards{{{label},state="done"}}']) == total.done
    assert float(samples[f'slimtok_shards{{{label},state="failed"}}']) == total.failed
    assert float(samples[f"slimtok_tokens{{{label}}}"]) == total.tokens
    assert [p.name for p in prom.parent.iterdir()] == ["slimtok.prom"]  # no temporary file left
    coloured = format_status(facts, colour=True)
    assert "\x1b[31m  train/chunk1/example_train_9: " in coloured


def test_rollup_follows_done_directory(finished, tmp_path):
    """The cached roll-up never outlives done/: removed records drop out, new ones are read."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(finished[0], root)
    first = collect_status(root)
    assert OutputRoot(root).done_rollup.exists()
    victim = next((root / "done/train").rglob("*.json"))
    record = json.loads(victim.read_text())
    victim.unlink()
    after = collect_status(root)
    assert after.splits["train"].done == first.splits["train"].done - 1
    assert after.splits["train"].pending == 1
    assert after.splits["train"].documents == first.splits["train"].documents - record["documents"]
    victim.write_text(json.dumps(record))
    assert collect_status(root).splits["train"] == first.splits["train"]
    OutputRoot(root).done_rollup.write_text("{not json")  # a damaged cache is rebuilt, never trusted
    assert collect_status(root).splits == first.splits


def _beat(root: Path, host: str, pid: int, started_at: float, index: int) -> Path:
    name = worker_name(host, 7, index)
    path = OutputRoot(root).heartbeat(name)
    now = time.time()
    write_record(path, Heartbeat(worker=name, host=host, pid=pid, process_index=7, worker_index=index,
                                 shard="train/chunk1/example_train_0", state="working", documents=1, tokens=2,
                                 text_chars=3, shards_done=0, tokens_per_second=1234.0, cpu_percent=97.0,
                                 rss_bytes=5 << 20, updated_at=now, started_at=started_at, interval=1.0))
    return path


def test_workers_are_flagged_ok_stale_and_dead(finished, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(finished[0], root)
    _beat(root, hostname(), os.getpid(), psutil.Process().create_time() + 0.5, 0)  # this process: alive
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _beat(root, hostname(), int(dead.stdout), time.time() - 5, 1)            # exited without saying so
    stale = _beat(root, "elsewhere", 4242, time.time() - 600, 2)             # another host, silent for 10 min
    old = time.time() - 120
    os.utime(stale, (old, old))
    by_index = {w.heartbeat.worker_index: w for w in collect_status(root).workers if w.heartbeat.process_index == 7}
    assert {i: w.health for i, w in by_index.items()} == {0: "ok", 1: "dead", 2: "stale"}
    assert by_index[2].age >= 100
    text = format_status(collect_status(root), colour=True)
    assert re.search(r"\x1b\[31m" + re.escape(hostname()[:15]) + r".*DEAD \(working\)", text)
    assert re.search(r"\x1b\[33melsewhere.*STALE \(working\)", text)


def test_a_worker_its_launcher_saw_killed_is_dead_on_every_host(finished, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(finished[0], root)
    path = _beat(root, "elsewhere", 4242, time.time() - 5, 3)  # a host whose pids this status cannot judge
    beat = read_record(path, Heartbeat)
    write_record(path, dataclasses.replace(beat, state="killed by SIGKILL"))
    [row] = [w for w in collect_status(root).workers if w.heartbeat.worker_index == 3]
    assert row.health == "dead"  # fresh, so it would be "ok" by its age alone
    assert re.search(r"elsewhere.*DEAD \(killed by SIGKILL\)", format_status(collect_status(root), colour=False))


def test_status_of_a_run_in_progress_then_after_sigterm(tmp_path, bpe_tokenizer):
    ds = make_dataset(tmp_path / "ds", train_shards=1, docs_per_shard=2500, holdout_docs=3)
    manifest = cli.manifest(tmp_path, ds)
    root = tmp_path / "out"
    # The reference backend is slow enough to catch the worker mid-shard.
    cmd = [sys.executable, "-m", "slimtok", "tokenize", "--dtype", "uint32", "--manifest", str(manifest),
           "--output-root", str(root), "--tokenizer", str(bpe_tokenizer), "--spawn-workers", "1",
           "--tokens-per-write", "5000",
           "--checkpoint-every", "0", "--stale-after", "3", "--splits", "train", "--backend", "tokenizers"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = root / "checkpoints/train/chunk1/example_train_0.json"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    running = json.loads(slimtok("status", "--output-root", root, "--json").stdout)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the status was taken; nothing was in progress")
    assert proc.returncode == 75, err
    train = running["splits"]["train"]
    assert (train["running"], train["done"], train["pending"]) == (1, 0, 0)
    assert train["documents"] > 0 and train["bytes_left"] == train["source_bytes"]
    live = [w for w in running["workers"] if w["health"] == "ok"]
    assert len(live) == 1 and live[0]["host"] == hostname() and live[0]["process_index"] == 0
    assert live[0]["state"] in ("starting", "working") and live[0]["interval"] == pytest.approx(0.5)
    assert live[0]["pid"] != proc.pid  # the worker is a child of the launcher
    # after the stop: the claim is released, the checkpoint is what status counts
    after = collect_status(root)
    saved = json.loads(ckpt.read_text())
    assert (after.splits["train"].running, after.splits["train"].pending) == (0, 1)
    assert after.splits["train"].documents == saved["documents"]
    assert after.splits["train"].tokens == saved["tokens"]
    assert [w.health for w in after.workers] == ["exited"]


def test_console_gets_progress_and_warnings_logs_get_timestamps(finished):
    root, _, proc = finished
    name = worker_name(hostname(), 0, 0)
    log = (root / "logs" / f"{name}.log").read_text().splitlines()
    assert log and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ", line) for line in log)
    assert any("done train/chunk2/example_train_1" in line for line in log)
    # the console: the final progress line and the failure, but none of the workers' INFO lines
    assert "done train/" not in proc.stderr and " INFO " not in proc.stderr
    assert re.search(r"ERROR .*example_train_9", proc.stderr)
    n = len(_entries(root / "manifest.jsonl"))
    assert re.search(rf"tokenize: shards {n - 1}/{n} · .* docs · .* tokens", proc.stderr.splitlines()[-1])


def test_first_status_reads_worker_journals_instead_of_every_done_record(finished, tmp_path):
    """Workers journal each commit; a status with no roll-up takes counts from there."""
    import shutil

    from slimtok.status import done_rows

    root = tmp_path / "copy"
    shutil.copytree(finished[0], root)
    out = OutputRoot(root)
    out.done_rollup.unlink(missing_ok=True)
    records = {json.loads(p.read_text())["shard"]: json.loads(p.read_text()) for p in (root / "done").rglob("*.json")}
    journals = out.done_journals()
    assert journals and sum(len(p.read_bytes().splitlines()) for p in journals) == len(records)
    # Overwrite every done record's content, keeping its size (what status compares): only the
    # journals can still give the counts.
    for p in (root / "done").rglob("*.json"):
        p.write_bytes(b" " * p.stat().st_size)
    with open(journals[0], "ab") as f:
        f.write(b'["torn line", 1, 2')  # a worker killed mid-append
    rows, unreadable = done_rows(out, out.done_sizes(), json.loads((root / "job.json").read_text())["manifest_sha256"])
    assert not unreadable
    assert {k: (v.documents, v.tokens, v.bytes) for k, v in rows.items()} == {
        k: (r["documents"], r["tokens"], r["bytes"]) for k, r in records.items()}
