"""Edges of the job and its records: a corrupt done record, a changed manifest, a full disk at pinning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.cli import slimtok, tokenize
from helpers.corpus import make_dataset, reference_ids
from helpers.tmpfs import mounted_tmpfs


def _job(tmp_path, tokenizer, shards=3):
    ds = make_dataset(tmp_path / "ds", train_shards=shards, docs_per_shard=12, holdout_docs=2)
    slimtok("manifest", "--dataset-dir", ds, "--output-dir", tmp_path / "m")
    return ds, tmp_path / "m/manifest.jsonl"


def _status(root):
    return json.loads(slimtok("status", "--output-root", root, "--json").stdout)


def test_a_truncated_done_record_is_redone_by_tokenize_and_named_by_combine_and_status(tmp_path, bpe_tokenizer):
    _ds, manifest = _job(tmp_path, bpe_tokenizer)
    root = tmp_path / "out"
    tokenize(manifest, root, bpe_tokenizer, "--spawn-workers", 1)
    before = _status(root)  # caches every record's counts in the roll-up
    victim = root / "done/train/chunk1/example_train_0.json"
    victim.write_bytes(victim.read_bytes()[:40])  # a torn write the filesystem let through
    after = _status(root)
    assert after["splits"]["train"]["done"] == before["splits"]["train"]["done"] - 1
    assert after["splits"]["train"]["pending"] == before["splits"]["train"]["pending"] + 1
    assert [u["shard"] for u in after["unreadable_done_records"]] == ["train/chunk1/example_train_0"]
    assert str(victim) in after["unreadable_done_records"][0]["reason"]
    proc = slimtok("combine", "--output-root", root, check=False)
    assert proc.returncode == 2 and "train/chunk1/example_train_0" in proc.stderr
    # the same verdict: not done, so it is tokenized again
    tokenize(manifest, root, bpe_tokenizer, "--spawn-workers", 1)
    assert json.loads(victim.read_text())["shard"] == "train/chunk1/example_train_0"
    assert list(victim.parent.glob(".example_train_0.json.corrupt-*"))  # kept aside for inspection
    assert _status(root)["splits"] == before["splits"] and not _status(root)["unreadable_done_records"]
    slimtok("combine", "--output-root", root)
    got = np.fromfile(root / "train.bin", dtype=np.uint32)
    assert np.array_equal(got, reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train"))


def test_a_relaunch_with_another_manifest_says_what_changed(tmp_path, bpe_tokenizer):
    ds, manifest = _job(tmp_path, bpe_tokenizer)
    root = tmp_path / "out"
    tokenize(manifest, root, bpe_tokenizer, "--spawn-workers", 1)
    lines = manifest.read_text().splitlines()
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # the second shard dropped
    proc = tokenize(other, root, bpe_tokenizer, "--spawn-workers", 1, check=False)
    second, third = json.loads(lines[1])["id"], json.loads(lines[2])["id"]
    assert proc.returncode == 2
    assert f"pinned {len(lines)} shards, requested {len(lines) - 1}" in proc.stderr
    assert f"line 2 differs: pinned {second}" in proc.stderr and f"requested {third}" in proc.stderr
    assert "manifest_sha256" not in proc.stderr


@pytest.fixture
def tiny_fs(tmp_path):
    with mounted_tmpfs(tmp_path / "tiny", "64k") as mnt:
        yield mnt


def test_a_full_disk_while_pinning_the_job_is_exit_3_naming_the_file(tmp_path, tiny_fs, qwen3_tokenizer):
    _ds, manifest = _job(tmp_path, qwen3_tokenizer, shards=1)
    proc = tokenize(manifest, tiny_fs / "out", qwen3_tokenizer, "--spawn-workers", 1, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "No space left on device" in proc.stderr
    assert str(tiny_fs / "out") in proc.stderr


def test_a_damaged_job_record_gets_one_verdict_from_every_stage(tmp_path, bpe_tokenizer):
    _ds, manifest = _job(tmp_path, bpe_tokenizer, shards=2)
    root = tmp_path / "out"
    tokenize(manifest, root, bpe_tokenizer, "--spawn-workers", 1)
    job = root / "job.json"
    intact = job.read_bytes()
    job.write_bytes(intact[: len(intact) // 2])
    for proc in (tokenize(manifest, root, bpe_tokenizer, "--spawn-workers", 1, check=False),
                 slimtok("status", "--output-root", root, check=False),
                 slimtok("combine", "--output-root", root, check=False)):
        assert proc.returncode == 2
        assert f"{job}: cannot be parsed" in proc.stderr and "restore job.json" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert job.read_bytes() == intact[: len(intact) // 2]  # nobody rewrote it by guessing
    job.write_bytes(intact)
    slimtok("combine", "--output-root", root)
    got = np.fromfile(root / "train.bin", dtype=np.uint32)
    assert np.array_equal(got, reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train"))
