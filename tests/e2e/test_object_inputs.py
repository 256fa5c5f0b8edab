"""Shards read from object stores: s3:// through a real S3-protocol server (moto, on 127.0.0.1)
and hf:// through the Hub test server, compared byte for byte with the same shards read locally."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from helpers.cli import slimtok, tokenize, tokenize_args, tokenize_cmd
from helpers.corpus import doc_line, make_dataset, reference_texts, sample_documents, write_shard
from helpers.hub_server import FakeHub
from helpers.launches import wait_for
from helpers.s3_server import S3Server

PATTERNS = ("--pattern", "*.jsonl.zst", "--pattern", "*.jsonl.gz", "--pattern", "*.parquet", "--pattern", "*.arrow")


def _dataset(folder: Path) -> Path:
    """make_dataset's SlimPajama layout plus a gzip, a parquet and an Arrow IPC shard, so every reader is crossed."""
    ds = make_dataset(folder, train_shards=3, docs_per_shard=12, holdout_docs=3)
    raw = zstandard.ZstdDecompressor().stream_reader((ds / "train/chunk1/example_train_0.jsonl.zst").read_bytes(),
                                                      read_across_frames=True).read()
    (ds / "train/chunk3").mkdir()
    (ds / "train/chunk3/example_train_7.jsonl.gz").write_bytes(gzip.compress(raw, mtime=0))
    texts = reference_texts(raw.split(b"\n"))
    pq.write_table(pa.table({"text": texts[::-1]}), ds / "train/chunk3/example_train_8.parquet", row_group_size=4)
    table = pa.table({"text": texts[1::2]})
    with pa.ipc.new_stream(ds / "train/chunk3/example_train_9.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=3)
    return ds


def _env(*extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_"))}
    for e in extra:
        env.update(e)
    return env


def _outputs(root: Path) -> dict[str, bytes]:
    """Every token and document-table file of a root, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for folder in ("shards", "documents") for p in sorted((root / folder).rglob("*")) if p.is_file()}


def _local_reference(tmp_path: Path, ds: Path, tokenizer: Path) -> tuple[list[dict], dict[str, bytes], Path]:
    slimtok("manifest", "--dataset-dir", ds, "--output-dir", tmp_path / "m_local", *PATTERNS)
    manifest = tmp_path / "m_local/manifest.jsonl"
    tokenize(manifest, tmp_path / "local", tokenizer, "--spawn-workers", 1)
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    return entries, _outputs(tmp_path / "local"), tmp_path / "local"


def _tokenize(manifest: Path, root: Path, tokenizer: Path, env: dict[str, str], check: bool = True):
    """``slimtok tokenize`` with one worker (as the local reference) in ``env``."""
    return slimtok(*tokenize_args(manifest, root, tokenizer, "--spawn-workers", 1), env=env, check=check)


def _manifest_entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tokenize_from_s3_is_byte_identical_to_the_same_shards_read_locally(tmp_path, s3_server, bpe_tokenizer):
    ds = _dataset(tmp_path / "ds")
    s3_server.upload_folder(ds, "corpus-same", "sp")
    env = _env(s3_server.env)
    slimtok("manifest", "--dataset-dir", "s3://corpus-same/sp/", "--output-dir", tmp_path / "m", *PATTERNS, env=env)
    entries = _manifest_entries(tmp_path / "m/manifest.jsonl")
    local_entries, local_outputs, local_root = _local_reference(tmp_path, ds, bpe_tokenizer)
    # the same shards, in the same order, with the same ids and sizes; each with its ETag (the MD5
    # of its bytes for a single-part upload) and the object's URL
    assert [(e["id"], e["split"], e["size"]) for e in entries] == [(e["id"], e["split"], e["size"])
                                                                   for e in local_entries]
    for e, local in zip(entries, local_entries, strict=True):
        rel = Path(local["path"]).relative_to(ds).as_posix()
        assert e["path"] == f"s3://corpus-same/sp/{rel}"
        assert e["version"] == '"' + hashlib.md5(Path(local["path"]).read_bytes()).hexdigest() + '"'
    assert all("version" not in e for e in local_entries)  # local manifest lines are unchanged

    root = tmp_path / "remote"
    before = len(s3_server.requests())
    _tokenize(tmp_path / "m/manifest.jsonl", root, bpe_tokenizer, env)
    assert _outputs(root) == local_outputs
    during = [(method, target) for method, target in s3_server.requests()[before:]
              if target.startswith("/corpus-same")]
    assert not [r for r in during if "list-type" in r[1]]  # workers never list
    # only reads of the listed objects; each shard is smaller than a window, so one GET per pass over
    # it (the worker's, and the launcher's disk sampler's, which reads a spread of them twice)
    keys = {e["path"].removeprefix("s3:/") for e in entries}
    assert {method for method, _ in during} == {"GET", "HEAD"} and {target for _, target in during} == keys
    gets = Counter(target for method, target in during if method == "GET")
    assert set(gets) == keys and max(gets.values()) <= 3
    for out in (root, local_root):
        slimtok("combine", "--output-root", out)
    for name in ("train.bin", "val.bin", "test.bin"):
        assert (root / name).read_bytes() == (local_root / name).read_bytes()


def _failed(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "failed").rglob("*.json"))]


def test_an_object_changed_since_the_manifest_is_refused_naming_it_and_both_versions(tmp_path, s3_server,
                                                                                      bpe_tokenizer):
    ds = make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=8, holdout_docs=2)
    s3_server.upload_folder(ds, "corpus-changed", "sp")
    env = _env(s3_server.env)
    slimtok("manifest", "--dataset-dir", "s3://corpus-changed/sp", "--output-dir", tmp_path / "m", env=env)
    victim = ds / "train/chunk1/example_train_0.jsonl.zst"
    old = victim.read_bytes()
    new = make_dataset(tmp_path / "other", train_shards=1, docs_per_shard=9, seed=5) / victim.relative_to(ds)
    s3_server.client().put_object(Bucket="corpus-changed", Key="sp/train/chunk1/example_train_0.jsonl.zst",
                                  Body=new.read_bytes())
    proc = _tokenize(tmp_path / "m/manifest.jsonl", tmp_path / "out", bpe_tokenizer, env, check=False)
    assert proc.returncode == 1, proc.stderr
    failed = _failed(tmp_path / "out")
    assert [f["shard"] for f in failed] == ["train/chunk1/example_train_0"]
    reason = failed[0]["reason"]
    assert "s3://corpus-changed/sp/train/chunk1/example_train_0.jsonl.zst" in reason + failed[0]["path"]
    assert hashlib.md5(old).hexdigest() in reason and hashlib.md5(new.read_bytes()).hexdigest() in reason
    assert "changed since the manifest" in reason
    done = sorted(p.name for p in (tmp_path / "out/done").rglob("*.json"))
    assert len(done) == 3  # the other shards were tokenized


def test_a_deleted_object_fails_its_shard_naming_it(tmp_path, s3_server, bpe_tokenizer):
    ds = make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=8, holdout_docs=2)
    s3_server.upload_folder(ds, "corpus-deleted", "sp")
    env = _env(s3_server.env)
    slimtok("manifest", "--dataset-dir", "s3://corpus-deleted/sp", "--output-dir", tmp_path / "m", env=env)
    s3_server.client().delete_object(Bucket="corpus-deleted", Key="sp/train/chunk2/example_train_1.jsonl.zst")
    proc = _tokenize(tmp_path / "m/manifest.jsonl", tmp_path / "out", bpe_tokenizer, env, check=False)
    assert proc.returncode == 1, proc.stderr
    failed = _failed(tmp_path / "out")
    assert [f["shard"] for f in failed] == ["train/chunk2/example_train_1"]
    assert "object not found" in failed[0]["reason"]


def test_a_missing_bucket_is_one_line_naming_it_without_secrets(tmp_path, s3_server):
    proc = slimtok("manifest", "--dataset-dir", "s3://no-such-bucket/sp/", "--output-dir", tmp_path / "m",
                   env=_env(s3_server.env), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: s3://no-such-bucket/sp/: bucket 'no-such-bucket' does not exist at ")
    assert s3_server.url in lines[0] and s3_server.env["AWS_SECRET_ACCESS_KEY"] not in proc.stderr


def test_denied_access_is_one_line_naming_the_bucket_without_secrets(tmp_path):
    ds = make_dataset(tmp_path / "ds", train_shards=1, docs_per_shard=4, holdout_docs=1)
    # two unchecked requests fill the bucket (create, one put per file); every later one is checked
    files = sum(1 for p in ds.rglob("*") if p.is_file())
    with S3Server(auth_after=1 + files) as server:
        server.upload_folder(ds, "corpus-denied", "sp")
        proc = slimtok("manifest", "--dataset-dir", "s3://corpus-denied/sp/", "--output-dir", tmp_path / "m",
                       env=_env(server.env), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: s3://corpus-denied/sp/: access denied to list objects in bucket "
                               "'corpus-denied'"), lines[0]
    assert server.env["AWS_SECRET_ACCESS_KEY"] not in proc.stderr


@pytest.fixture
def hub_dataset(tmp_path):
    ds = _dataset(tmp_path / "ds")
    files = {p.relative_to(ds).as_posix(): p.read_bytes() for p in sorted(ds.rglob("*")) if p.is_file()}
    with FakeHub(page_size=4) as hub:
        hub.add_repo("acme/tiny-sp", files)
        home = tmp_path / "hf_home"
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        yield ds, hub, _env(env)


def test_tokenize_from_hf_is_byte_identical_and_pinned_to_the_commit(tmp_path, hub_dataset, bpe_tokenizer):
    ds, hub, env = hub_dataset
    slimtok("manifest", "--dataset-dir", "hf://datasets/acme/tiny-sp", "--output-dir", tmp_path / "m", *PATTERNS,
            env=env)
    entries = _manifest_entries(tmp_path / "m/manifest.jsonl")
    commit = hub.repos[("dataset", "acme/tiny-sp")].commit
    local_entries, local_outputs, _ = _local_reference(tmp_path, ds, bpe_tokenizer)
    assert [(e["id"], e["size"]) for e in entries] == [(e["id"], e["size"]) for e in local_entries]
    for e, local in zip(entries, local_entries, strict=True):
        rel = Path(local["path"]).relative_to(ds).as_posix()
        assert e["path"] == f"hf://datasets/acme/tiny-sp@{commit}/{rel}" and e["version"] == commit
    hub.reset_requests()
    hub.fail_file("acme/tiny-sp", "train/chunk3/example_train_8.parquet", status=503, times=2)  # transient
    _tokenize(tmp_path / "m/manifest.jsonl", tmp_path / "remote", bpe_tokenizer, env)
    assert _outputs(tmp_path / "remote") == local_outputs
    assert hub.count(route="tree") == 0  # workers never list
    assert hub.count(route="resolve", status=503) == 2  # both failures were retried


def test_hf_revisions_resolve_to_one_commit_and_hub_errors_are_one_line(tmp_path, hub_dataset):
    _ds, hub, env = hub_dataset
    commit = hub.repos[("dataset", "acme/tiny-sp")].commit
    outputs = []
    spellings = (["hf://datasets/acme/tiny-sp/train"], ["hf://datasets/acme/tiny-sp/train", "--revision", "main"],
                 [f"hf://datasets/acme/tiny-sp@{commit}/train"])
    for k, args in enumerate(spellings):
        slimtok("manifest", "--dataset-dir", *args, "--output-dir", tmp_path / f"m{k}", env=env)
        outputs.append((tmp_path / f"m{k}/manifest.jsonl").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2] and outputs[0].count(f"@{commit}/train/".encode()) == 3
    for url, extra, what in (("hf://datasets/acme/none", [], "repository not found (or private); check the name"),
                             ("hf://datasets/acme/tiny-sp", ["--revision", "v9"], "revision not found")):
        proc = slimtok("manifest", "--dataset-dir", url, *extra, "--output-dir", tmp_path / "bad", env=env, check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(f"error: {url}") and what in proc.stderr, proc.stderr


def test_a_shard_stopped_mid_object_resumes_from_its_checkpoint_byte_identical(tmp_path, s3_server, bpe_tokenizer):
    """The checkpoint's source state of an object (size, store's last-modified time) matches on the
    relaunch, so the shard resumes instead of starting over, and ends as the local run does."""
    ds = tmp_path / "ds"
    write_shard(ds / "train/chunk1/example_train_0.jsonl.zst",
                [doc_line(t) for t in sample_documents(2500, seed=100)], frames=3)
    s3_server.upload_folder(ds, "corpus-resume", "sp")
    env = _env(s3_server.env)
    slimtok("manifest", "--dataset-dir", "s3://corpus-resume/sp", "--output-dir", tmp_path / "m", env=env)
    root = tmp_path / "out"
    # The reference backend is slow enough that the signal lands while the shard is in progress.
    cmd = tokenize_cmd(tmp_path / "m/manifest.jsonl", root, bpe_tokenizer, "--spawn-workers", "1",
                       "--tokens-per-write", "5000", "--checkpoint-every", "0", "--backend", "tokenizers")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert wait_for(lambda: any((root / "checkpoints").rglob("*.json")) if (root / "checkpoints").exists() else False)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # finished before the signal landed; nothing to resume
        pytest.skip("the shard finished before SIGTERM landed")
    assert proc.returncode == 75, err
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    logs = "".join(p.read_text() for p in (root / "logs").glob("*.log"))
    assert "resuming at line" in logs and "changed since its checkpoint" not in logs
    slimtok("manifest", "--dataset-dir", ds, "--output-dir", tmp_path / "m_local")
    tokenize(tmp_path / "m_local/manifest.jsonl", tmp_path / "local", bpe_tokenizer, "--spawn-workers", 1)
    assert _outputs(root) == _outputs(tmp_path / "local")
