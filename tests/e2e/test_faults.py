"""Fault injection: every fault ends with the same bytes as an undisturbed run, or a clear,
per-shard reason with everything else finished.

Each test runs the real `slimtok tokenize` in subprocesses and compares the combined output with
a clean single-worker run or with the independent reference encoding in tests/helpers/corpus.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zstandard

from helpers import cli
from helpers.cli import slimtok, tokenize_cmd
from helpers.corpus import doc_line, make_dataset, reference_ids, sample_documents, write_shard
from helpers.launches import (
    assert_no_orphans,
    assert_taken_over_and_stood_down,
    claims_per_shard,
    combined_split,
    framed_dataset,
    run_captured,
    stop_while_holding_a_shard,
    worker_logs,
)
from helpers.tmpfs import mounted_tmpfs

pytestmark = pytest.mark.slow  # chaos: kills, stopped workers and concurrent launches of real launches


def _done_records(root: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["shard"]: json.loads(p.read_text()) for p in (root / "done").rglob("*.json")}


def _workers(launcher_pid: int) -> list[psutil.Process]:
    """Live worker processes of a launch (not multiprocessing's resource tracker, not exited ones)."""
    found = []
    for child in psutil.Process(launcher_pid).children():
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # exited (a zombie until the launcher reaps it) or gone
            continue
    return found


# 1. chaos --------------------------------------------------------------------------------------

def test_chaos_twenty_kills_then_relaunch_is_byte_identical(tmp_path, bpe_tokenizer):
    ds = framed_dataset(tmp_path / "ds", shards=18, docs=160)
    manifest = cli.manifest(tmp_path, ds)
    clean = tmp_path / "clean"
    assert run_captured(tokenize_cmd(manifest, clean, bpe_tokenizer, "--spawn-workers", "1")).returncode == 0
    expected = combined_split(clean)

    rng = random.Random(2024)
    kills, rounds = 0, 0
    while kills < 20:  # a round ends when its job completes; more rounds until 20 kills have landed
        root = tmp_path / f"chaos{rounds}"
        kills += _chaos_round(manifest, root, bpe_tokenizer, rng, 20 - kills)
        rounds += 1
        assert rounds <= 10, f"only {kills} kills in 10 rounds: each job finishes too fast to be interrupted"
        final = run_captured(tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", "3"))
        assert final.returncode == 0, final.stderr
        assert combined_split(root) == expected
        assert_no_orphans(root)
        done, ref = _done_records(root), _done_records(clean)
        assert {k: v["documents"] for k, v in done.items()} == {k: v["documents"] for k, v in ref.items()}
        assert {k: v["sha256"] for k, v in done.items()} == {k: v["sha256"] for k, v in ref.items()}
        # the document tables too: a resume after kill -9 writes exactly the undisturbed run's rows
        assert {k: v["table_sha256"] for k, v in done.items()} == {k: v["table_sha256"] for k, v in ref.items()}
        assert all(v["table_sha256"] for v in done.values())


def _chaos_round(manifest: Path, root: Path, tokenizer: Path, rng: random.Random, wanted: int) -> int:
    """Launch and SIGKILL at random moments until ``wanted`` kills or the job completes."""
    kills = 0
    while kills < wanted:
        workers = rng.randint(2, 4)
        cmd = tokenize_cmd(manifest, root, tokenizer, "--spawn-workers", workers, "--tokens-per-write", 64,
                   "--checkpoint-every", 0, "--stale-after", 30)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.2, 1.6))
        if proc.poll() is not None:
            assert proc.returncode == 0
            return kills
        if rng.random() < 0.4:
            children = _workers(proc.pid)
            if children:  # one worker dies alone; the others take its shard over at once (same host)
                rng.choice(children).send_signal(signal.SIGKILL)
                kills += 1
                time.sleep(rng.uniform(0.05, 0.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    return kills


# 2. claim race ---------------------------------------------------------------------------------

def test_sixteen_processes_started_at_once_each_shard_done_once(tmp_path, bpe_tokenizer):
    ds = framed_dataset(tmp_path / "ds", shards=24, docs=12)
    manifest = cli.manifest(tmp_path, ds)
    root = tmp_path / "out"
    procs = [subprocess.Popen(tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", 1,
                                   "--process-count", 16, "--process-index", i),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(16)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
    claims = claims_per_shard(root)
    assert len(claims) == 24 and set(claims.values()) == {1}, claims
    assert "taking over" not in worker_logs(root)
    assert len(_done_records(root)) == 24
    assert_no_orphans(root)
    got = np.frombuffer(combined_split(root), dtype=np.uint32)
    assert np.array_equal(got, reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train"))


# 3. a node lost: alive but silent --------------------------------------------------------------

def test_stopped_worker_loses_its_shard_and_stands_down_when_woken(tmp_path, bpe_tokenizer):
    ds = framed_dataset(tmp_path / "ds", shards=3, docs=600)
    manifest = cli.manifest(tmp_path, ds)
    root = tmp_path / "out"
    common = ["--spawn-workers", 1, "--process-count", 2, "--stale-after", 2, "--tokens-per-write", 500,
              "--checkpoint-every", 0]
    a = subprocess.Popen(tokenize_cmd(manifest, root, bpe_tokenizer, *common, "--process-index", 0),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    worker, stopped_shard = stop_while_holding_a_shard(root)
    try:
        b = run_captured(tokenize_cmd(manifest, root, bpe_tokenizer, *common, "--process-index", 1))
        assert b.returncode == 0, b.stderr
    finally:
        worker.send_signal(signal.SIGCONT)
    assert_taken_over_and_stood_down(a, root, stopped_shard, manifest, bpe_tokenizer)


# 4. full disk ----------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    with mounted_tmpfs(tmp_path / "small", "640k") as mnt:
        yield mnt


def test_full_disk_exits_clearly_keeps_progress_and_resumes_identically(tmp_path, small_fs, bpe_tokenizer):
    ds = framed_dataset(tmp_path / "ds", shards=4, docs=200)
    manifest = cli.manifest(tmp_path, ds)
    clean = tmp_path / "clean"
    assert run_captured(tokenize_cmd(manifest, clean, bpe_tokenizer, "--spawn-workers", 1)).returncode == 0
    root = small_fs / "out"
    writes = ("--tokens-per-write", 2000, "--checkpoint-every", 0, "--min-free-fraction", 0)
    proc = run_captured(tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", 1, *writes))
    assert proc.returncode == 3, proc.stderr
    assert "No space left on device" in proc.stderr and "relaunch" in proc.stderr
    done = _done_records(root)
    assert len(done) < 4
    for record in done.values():  # whatever was committed is complete and intact
        assert (root / record["file"]).stat().st_size == record["bytes"]
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    again = run_captured(tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", 1, *writes))
    assert again.returncode == 0, again.stderr
    assert combined_split(root) == combined_split(clean)
    assert_no_orphans(root)


# 5. bad shards ---------------------------------------------------------------------------------

def _write_bad_shards(ds: Path, good: bytes) -> dict[str, str]:
    """Each bad shard and a phrase its failure reason must contain."""
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    t = ds / "train/chunk1"
    t.mkdir(parents=True, exist_ok=True)
    (t / "example_train_10.jsonl.zst").write_bytes(b"")
    (t / "example_train_11.jsonl.zst").write_bytes(b"plain text, not zstd\n")
    (t / "example_train_12.jsonl.zst").write_bytes(good[: len(good) * 2 // 3])
    big = cctx.compress(b"".join(doc_line(x) + b"\n" for x in sample_documents(400, seed=5)))
    corrupt = bytearray(big)
    corrupt[len(big) // 2: len(big) // 2 + 64] = b"\xff" * 64
    (t / "example_train_13.jsonl.zst").write_bytes(bytes(corrupt))
    (t / "example_train_14.jsonl.zst").write_bytes(cctx.compress(b"hello\nworld\nnot json\n"))
    # One 200 MB line that never closes its string: read in bounded blocks, then skipped.
    with open(t / "example_train_15.jsonl.zst", "wb") as f, cctx.stream_writer(f) as w:
        w.write(b'{"text": "')
        for _ in range(200):
            w.write(b"a" * (1 << 20))
        w.write(b"\n")
    (t / "example_train_16.jsonl.zst").write_bytes(good)  # replaced by a directory after the manifest
    (t / "example_train_17.jsonl.zst").write_bytes(good)
    os.chmod(t / "example_train_17.jsonl.zst", 0)
    return {"train/chunk1/example_train_10": "empty file", "train/chunk1/example_train_11": "not a zstd file",
            "train/chunk1/example_train_12": "truncated zstd stream",
            "train/chunk1/example_train_13": "corrupt zstd data",
            "train/chunk1/example_train_14": "no usable document in 3 lines (skipped: not_json=3)",
            "train/chunk1/example_train_15": "no usable document in 1 lines",
            "train/chunk1/example_train_16": "is a directory", "train/chunk1/example_train_17": "permission denied",
            "train/chunk1/example_train_18": "file not found"}


def test_bad_shards_each_fail_with_one_line_reason_and_the_rest_completes(tmp_path, bpe_tokenizer):
    ds = make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=6, holdout_docs=2)
    mixed = [doc_line("first good document"), b'{"text": "bad \xff bytes"}', b'{"text": "lone \\udc00"}',
             b'{"text": ["not", "a", "string"]}', b"garbage", doc_line("last good document")]
    write_shard(ds / "train/chunk2/example_train_3.jsonl.zst", mixed)
    good = (ds / "train/chunk1/example_train_0.jsonl.zst").read_bytes()
    expected = _write_bad_shards(ds, good)
    (ds / "train/chunk1/example_train_18.jsonl.zst").write_bytes(good)
    manifest = cli.manifest(tmp_path, ds)
    (ds / "train/chunk1/example_train_18.jsonl.zst").unlink()
    (ds / "train/chunk1/example_train_16.jsonl.zst").unlink()
    (ds / "train/chunk1/example_train_16.jsonl.zst").mkdir()
    root = tmp_path / "out"
    # Without CAP_DAC_OVERRIDE even root gets EACCES on the mode-000 shard, as a normal user would.
    setpriv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if shutil.which("setpriv") else []
    proc = run_captured(setpriv + tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", 2))
    assert proc.returncode == 1, proc.stderr
    failed = {json.loads(p.read_text())["shard"]: json.loads(p.read_text())["reason"]
              for p in (root / "failed").rglob("*.json")}
    if not setpriv or os.geteuid() != 0 and os.access(ds / "train/chunk1/example_train_17.jsonl.zst", os.R_OK):
        expected.pop("train/chunk1/example_train_17")
    assert set(failed) == set(expected)
    for shard, phrase in expected.items():
        assert phrase in failed[shard], (shard, failed[shard])
        assert "\n" not in failed[shard]
        errors = [line for line in proc.stderr.splitlines() if shard in line and "failed" in line]
        assert len(errors) == 1, (shard, proc.stderr)
    done = _done_records(root)
    assert done["train/chunk2/example_train_3"]["documents"] == 4
    assert done["train/chunk2/example_train_3"]["skipped"] == {"not_json": 1, "text_not_string": 1}
    assert {"train/chunk1/example_train_0", "train/chunk2/example_train_1", "validation/chunk1/example_holdout_0",
            "test/chunk1/example_holdout_0"} <= set(done)
    assert_no_orphans(root)
    # Fix every file, then --retry-failed completes the two whose listed size still holds; the others
    # are now other files than the manifest lists, so they fail again naming both sizes.
    t = ds / "train/chunk1"
    (t / "example_train_16.jsonl.zst").rmdir()
    os.chmod(t / "example_train_17.jsonl.zst", 0o644)
    for name in [f"example_train_{i}" for i in range(10, 19) if i != 17]:
        (t / f"{name}.jsonl.zst").write_bytes(good)
    again = run_captured(tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", 2, "--retry-failed"))
    assert again.returncode == 1, again.stderr
    failed = {json.loads(p.read_text())["shard"]: json.loads(p.read_text())["reason"]
              for p in (root / "failed").rglob("*.json")}
    listed = {e["id"]: e["size"] for e in map(json.loads, manifest.read_text().splitlines())}
    assert set(failed) == {f"train/chunk1/example_train_{i}" for i in range(10, 16)}
    for shard, reason in failed.items():
        assert f"is {len(good)} bytes but the manifest lists {listed[shard]}" in reason, reason
    done = _done_records(root)
    assert done["train/chunk1/example_train_16"]["source_size"] == len(good)
    # A manifest rebuilt from the fixed files, in a new output root, gives the reference.
    manifest2 = cli.manifest(tmp_path / "fixed", ds)
    root2 = tmp_path / "out2"
    assert run_captured(tokenize_cmd(manifest2, root2, bpe_tokenizer, "--spawn-workers", 2)).returncode == 0
    got = np.frombuffer(combined_split(root2), dtype=np.uint32)
    assert np.array_equal(got, reference_ids(manifest2, bpe_tokenizer / "tokenizer.json", 0, "train"))


# 7. corruption after the fact ------------------------------------------------------------------

def test_truncated_outputs_are_caught_naming_the_shard(tmp_path, bpe_tokenizer):
    ds = make_dataset(tmp_path / "ds", train_shards=3, docs_per_shard=10, holdout_docs=2)
    manifest = cli.manifest(tmp_path, ds)
    root = tmp_path / "out"
    assert run_captured(tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", 1)).returncode == 0
    combined_split(root)
    order = [json.loads(x)["id"] for x in manifest.read_text().splitlines() if '"train"' in x]
    done = _done_records(root)
    cut = done[order[0]]["bytes"] + done[order[1]]["bytes"] // 2
    with open(root / "train.bin", "r+b") as f:
        f.truncate(cut)
    proc = slimtok("validate", "--output-root", root, check=False)
    assert proc.returncode == 1 and f"ends inside shard {order[1]}" in proc.stdout
    shard_file = root / done[order[2]]["file"]
    with open(shard_file, "r+b") as f:
        f.truncate(8)
    proc = slimtok("combine", "--output-root", root, check=False)
    assert proc.returncode == 2 and str(shard_file) in proc.stderr and "done record says" in proc.stderr


# 8. one index launched twice on two hosts ------------------------------------------------------

def test_same_process_index_on_two_hosts_never_writes_a_shard_twice(tmp_path, bpe_tokenizer):
    if subprocess.run(["unshare", "-u", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a UTS namespace here (needs root) to give the second launch another hostname")
    ds = framed_dataset(tmp_path / "ds", shards=10, docs=80)
    manifest = cli.manifest(tmp_path, ds)
    root = tmp_path / "out"
    cmds = []
    for host in ("node-a", "node-b"):
        inner = " ".join(f"'{c}'" for c in tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", 1,
                                                "--process-count", 4, "--process-index", 0))
        cmds.append(["unshare", "-u", "sh", "-c", f"hostname {host} && exec {inner}"])
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
    claims = claims_per_shard(root)
    assert len(claims) == 10 and set(claims.values()) == {1}
    assert {p.name.split("-p0-")[0] for p in (root / "logs").glob("*.log")} == {"node-a", "node-b"}
    got = np.frombuffer(combined_split(root), dtype=np.uint32)
    assert np.array_equal(got, reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train"))
