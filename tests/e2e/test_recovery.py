"""Crash, relaunch and bad-shard behaviour of `slimtok tokenize` (issue: core pipeline)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from helpers import cli
from helpers.cli import slimtok, tokenize_cmd
from helpers.corpus import doc_line, make_dataset, reference_ids, sample_documents, write_shard
from helpers.launches import wait_for

pytestmark = pytest.mark.slow  # kills, SIGTERMs and relaunches of real launches


def test_bad_shards_fail_with_reasons_and_retry_failed_completes(tmp_path, bpe_tokenizer):
    ds = make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=5, holdout_docs=2)
    good = (ds / "train/chunk1/example_train_0.jsonl.zst").read_bytes()
    (ds / "train/chunk1/example_train_10.jsonl.zst").write_bytes(good[: len(good) // 2])
    (ds / "train/chunk1/example_train_11.jsonl.zst").write_bytes(b"")
    (ds / "train/chunk1/example_train_12.jsonl.zst").write_bytes(b'{"text": "not compressed"}\n')
    manifest = cli.manifest(tmp_path, ds)
    lost = ds / "train/chunk2/example_train_1.jsonl.zst"
    original = lost.read_bytes()
    lost.unlink()  # listed, then lost
    root = tmp_path / "out"
    proc = subprocess.run(tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", "2"),
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    failed = {p.relative_to(root / "failed").as_posix()[:-5]: json.loads(p.read_text())["reason"]
              for p in (root / "failed").rglob("*.json")}
    assert set(failed) == {"train/chunk1/example_train_10", "train/chunk1/example_train_11",
                           "train/chunk1/example_train_12", "train/chunk2/example_train_1"}
    assert "truncated zstd stream" in failed["train/chunk1/example_train_10"]
    assert "empty file" in failed["train/chunk1/example_train_11"]
    assert "not a zstd file" in failed["train/chunk1/example_train_12"]
    assert "file not found" in failed["train/chunk2/example_train_1"]
    assert "example_train_10" in proc.stderr and "truncated" in proc.stderr
    assert (root / "done/train/chunk1/example_train_0.json").exists()
    assert (root / "done/validation/chunk1/example_holdout_0.json").exists()
    assert not list((root / "shards").rglob("*.part"))
    # a plain relaunch does not retry them
    again = subprocess.run(tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", "1"),
                           capture_output=True, text=True)
    assert again.returncode == 1
    # fix the files: the lost one restored as listed is retried and done; the others now differ in
    # size from the manifest, so they fail again naming both sizes (the manifest must be rebuilt)
    for name in ("example_train_10", "example_train_11", "example_train_12"):
        (ds / f"train/chunk1/{name}.jsonl.zst").write_bytes(good)
    lost.write_bytes(original)
    proc = subprocess.run(tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", "1", "--retry-failed"),
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    failed = {p.relative_to(root / "failed").as_posix()[:-5]: json.loads(p.read_text())["reason"]
              for p in (root / "failed").rglob("*.json")}
    assert set(failed) == {f"train/chunk1/example_train_{i}" for i in (10, 11, 12)}
    assert all(f"is {len(good)} bytes but the manifest lists" in r and "slimtok manifest" in r for r in failed.values())
    slimtok("combine", "--output-root", root, "--allow-partial")
    got = np.fromfile(root / "train.bin", dtype=np.uint32)
    entries = [e for e in map(json.loads, manifest.read_text().splitlines()) if e["id"] not in failed]
    kept = tmp_path / "kept.jsonl"
    kept.write_text("".join(orjson.dumps(e).decode() + "\n" for e in entries))
    assert np.array_equal(got, reference_ids(kept, bpe_tokenizer / "tokenizer.json", 0, "train"))


def _big_dataset(root: Path, shards: int = 2, docs: int = 1500) -> Path:
    for i in range(shards):
        write_shard(root / f"train/chunk1/example_train_{i}.jsonl.zst",
                    [doc_line(t) for t in sample_documents(docs, seed=100 + i)], frames=3)
    return root


def test_kill_9_mid_shard_then_relaunch_is_byte_identical(tmp_path, bpe_tokenizer):
    ds = _big_dataset(tmp_path / "ds")
    manifest = cli.manifest(tmp_path, ds)
    clean = tmp_path / "clean"
    subprocess.run(tokenize_cmd(manifest, clean, bpe_tokenizer, "--spawn-workers", "1"), check=True,
                   capture_output=True)
    slimtok("combine", "--output-root", clean)

    root = tmp_path / "crashed"
    # The reference backend is slow enough that the kill lands while shards are in progress.
    cmd = tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", "2", "--tokens-per-write", "2000",
               "--checkpoint-every", "0", "--backend", "tokenizers")
    for attempt in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        # Kill once at least one checkpoint exists, i.e. mid-shard with durable progress.
        assert wait_for(lambda: any((root / "checkpoints").rglob("*.json")) if (root / "checkpoints").exists()
                         else False), proc.stderr
        time.sleep(0.05 * attempt)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed_before = any("resuming at line" in p.read_text() for p in (root / "logs").glob("*.log"))
    final = subprocess.run(cmd, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    slimtok("combine", "--output-root", root)
    assert (root / "train.bin").read_bytes() == (clean / "train.bin").read_bytes()
    logs = "".join(p.read_text() for p in (root / "logs").glob("*.log"))
    assert resumed_before or "resuming at line" in logs
    assert not list((root / "shards").rglob("*.part")) and not list((root / "locks").rglob("*.lock"))
    done = [json.loads(p.read_text()) for p in (root / "done").rglob("*.json")]
    assert sum(d["documents"] for d in done) == 3000


def test_sigterm_checkpoints_and_exits_75_then_resumes(tmp_path, bpe_tokenizer):
    ds = _big_dataset(tmp_path / "ds", shards=1, docs=2500)
    manifest = cli.manifest(tmp_path, ds)
    root = tmp_path / "out"
    # The reference backend is slow enough that the signal lands while the shard is in progress.
    cmd = tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", "1", "--tokens-per-write", "5000",
               "--checkpoint-every", "0", "--backend", "tokenizers")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for(lambda: any((root / "checkpoints").rglob("*.json")) if (root / "checkpoints").exists() else False)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # finished before the signal landed; nothing to resume
        return
    assert proc.returncode == 75, err
    assert not list((root / "locks").rglob("*.lock"))  # released, so any worker can resume it at once
    ckpt = json.loads(next((root / "checkpoints").rglob("*.json")).read_text())
    assert ckpt["lines"] > 0
    subprocess.run(cmd, check=True, capture_output=True)
    slimtok("combine", "--output-root", root)
    got = np.fromfile(root / "train.bin", dtype=np.uint32)
    assert np.array_equal(got, reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train"))


def test_checkpoint_every_spaces_checkpoints_in_time(tmp_path, bpe_tokenizer, monkeypatch):
    """0 checkpoints at every write; a long interval writes none mid-shard; the output is the same."""
    import slimtok.worker.task as worker_mod
    from slimtok.job import TokenizeSettings, open_job, pin_job
    from slimtok.protocol import Checkpoint
    from slimtok.worker import Worker

    ds = make_dataset(tmp_path / "ds", train_shards=1, docs_per_shard=400, holdout_docs=2)
    manifest = cli.manifest(tmp_path, ds)
    written: list[Checkpoint] = []
    real_write_record = worker_mod.write_record

    def recording(path, record, durable=True):
        if isinstance(record, Checkpoint):
            written.append(record)
        real_write_record(path, record, durable)

    monkeypatch.setattr(worker_mod, "write_record", recording)
    outputs, counts = [], []
    for every in (0.0, 3600.0):
        root = tmp_path / f"out-{every}"
        settings = TokenizeSettings(dtype="uint32", manifest=str(manifest), output_root=str(root),
                                    tokenizer=str(bpe_tokenizer), splits=("train",), tokens_per_write=500,
                                    checkpoint_every=every, backend="tokenizers")
        pin_job(settings)
        written.clear()
        assert Worker(open_job(settings), 0).run() == 0
        counts.append(len(written))
        [data] = (root / "shards").rglob("*.bin")
        outputs.append(data.read_bytes())
    ids = np.frombuffer(outputs[0], np.uint32)
    writes, pending = 0, 0
    for length in np.diff(np.flatnonzero(ids == 0), prepend=-1):  # eos is id 0 here
        pending += int(length)
        if pending >= 500:  # a write at the first document boundary after 500 tokens
            writes, pending = writes + 1, 0
    assert counts == [writes, 0] and writes > 5
    assert outputs[0] == outputs[1]
    want = reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train")
    assert np.array_equal(np.frombuffer(outputs[0], np.uint32), want)


def _stopping_run(monkeypatch, settings, on_first_checkpoint):
    """Run one in-process worker in 50-document batches; call ``on_first_checkpoint(worker)`` once."""
    import slimtok.worker.batches as batches_mod
    import slimtok.worker.task as worker_mod
    from slimtok.job import open_job
    from slimtok.protocol import Checkpoint
    from slimtok.worker import Worker

    real_write_record = worker_mod.write_record
    seen = []

    def hooked(path, record, durable=True):
        real_write_record(path, record, durable)
        if isinstance(record, Checkpoint) and not seen:
            seen.append(record)
            on_first_checkpoint(worker)

    monkeypatch.setattr(worker_mod, "write_record", hooked)
    monkeypatch.setattr(batches_mod, "BATCH_DOCS", 50)
    worker = Worker(open_job(settings), 0)
    status = worker.run()
    monkeypatch.setattr(worker_mod, "write_record", real_write_record)
    assert seen, "no checkpoint was written mid-shard"
    return status, seen[0]


def _one_shard_job(tmp_path):
    from slimtok.job import TokenizeSettings, pin_job

    ds = make_dataset(tmp_path / "ds", train_shards=1, docs_per_shard=400, holdout_docs=2)
    manifest = cli.manifest(tmp_path, ds)

    def settings_for(tokenizer, **kw):
        settings = TokenizeSettings(dtype="uint32", manifest=str(manifest), output_root=str(tmp_path / "out"),
                                    tokenizer=str(tokenizer), splits=("train",), tokens_per_write=500,
                                    checkpoint_every=0.0, backend="tokenizers", **kw)
        pin_job(settings)
        return settings

    return ds / "train/chunk1/example_train_0.jsonl.zst", manifest, settings_for


def test_shard_rewritten_between_checkpoint_and_resume_starts_over(tmp_path, bpe_tokenizer, monkeypatch, caplog):
    from slimtok.errors import EXIT_INTERRUPTED
    from slimtok.job import open_job
    from slimtok.worker import Worker

    shard, manifest, settings_for = _one_shard_job(tmp_path)
    settings = settings_for(bpe_tokenizer)
    status, ckpt = _stopping_run(monkeypatch, settings, lambda w: w.stop.set())
    assert status == EXIT_INTERRUPTED
    assert 0 < ckpt.lines < 400 and ckpt.source_size == shard.stat().st_size
    # The operator replaces the shard (a re-download, say) before relaunching: other documents, in a
    # file padded to the listed size with a zstd skippable frame (a size change alone fails the shard).
    size = shard.stat().st_size
    write_shard(shard, [doc_line(t) for t in sample_documents(300, seed=4242)])
    pad = size - shard.stat().st_size - 8
    assert pad >= 0
    with open(shard, "ab") as f:
        f.write((0x184D2A50).to_bytes(4, "little") + pad.to_bytes(4, "little") + b"\0" * pad)
    assert shard.stat().st_size == size
    assert Worker(open_job(settings), 0).run() == 0
    [data] = (tmp_path / "out/shards").rglob("*.bin")
    want = reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train")  # reads the new file
    assert np.array_equal(np.fromfile(data, dtype=np.uint32), want)
    assert "changed since its checkpoint" in caplog.text and "resuming at line" not in caplog.text


def test_shard_changed_while_being_read_fails_then_retry_completes(tmp_path, bpe_tokenizer, monkeypatch):
    from slimtok.errors import EXIT_SHARDS_FAILED
    from slimtok.job import open_job
    from slimtok.worker import Worker

    shard, manifest, settings_for = _one_shard_job(tmp_path)

    def touch(_worker):  # rewritten in place while being read: same size, a new mtime
        st = shard.stat()
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    status, _ = _stopping_run(monkeypatch, settings_for(bpe_tokenizer), touch)
    assert status == EXIT_SHARDS_FAILED
    out = tmp_path / "out"
    [failed] = (out / "failed").rglob("*.json")
    record = json.loads(failed.read_text())
    assert record["path"] == str(shard) and "changed while it was being tokenized" in record["reason"]
    assert not list((out / "done").rglob("*.json")) and not list((out / "shards").rglob("*.part"))
    assert Worker(open_job(settings_for(bpe_tokenizer, retry_failed=True)), 0).run() == 0
    [data] = (out / "shards").rglob("*.bin")
    want = reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train")
    assert np.array_equal(np.fromfile(data, dtype=np.uint32), want)
    assert len(np.flatnonzero(want == 0)) == 400


def test_commit_overlaps_the_next_shard_and_its_claim_stays_fresh(tmp_path, bpe_tokenizer, monkeypatch):
    """A slow commit runs beside the next shard's encoding, and the heartbeat keeps its lock fresh."""
    import threading

    from slimtok.claims import Claimer
    from slimtok.combine import combine
    from slimtok.job import TokenizeSettings, open_job, pin_job
    from slimtok.protocol import Holder, LockRecord, OutputRoot, read_record
    from slimtok.worker import ShardTask, Worker

    ds = make_dataset(tmp_path / "ds", train_shards=3, docs_per_shard=40, holdout_docs=2)
    manifest = cli.manifest(tmp_path, ds)
    settings = TokenizeSettings(dtype="uint32", manifest=str(manifest), output_root=str(tmp_path / "out"),
                                tokenizer=str(bpe_tokenizer), splits=("train",), backend="tokenizers",
                                stale_after=1.0)  # heartbeats every 0.2 s
    pin_job(settings)
    events: list[tuple[str, str]] = []
    stale_seen: list[bool] = []
    real_write, real_commit = ShardTask.write, ShardTask.commit
    # Another host's view of the lock: only its age can make it stale.
    other = Claimer(OutputRoot(settings.output_root), Holder("elsewhere", "", 1, 0.0, 9, 9), 1.0)

    def write(task):
        events.append(("write", task.entry.id))
        real_write(task)

    def slow_commit(task):
        events.append(("commit starts", task.entry.id))
        if len(stale_seen) == 0:
            for _ in range(25):  # 2.5 s, well past stale_after
                time.sleep(0.1)
                lock = OutputRoot(settings.output_root).lock(task.entry.id)
                stale_seen.append(other.is_stale(lock, read_record(lock, LockRecord)))
        record = real_commit(task)
        events.append(("commit ends", task.entry.id))
        assert threading.current_thread() is not threading.main_thread()
        return record

    monkeypatch.setattr(ShardTask, "write", write)
    monkeypatch.setattr(ShardTask, "commit", slow_commit)
    assert Worker(open_job(settings), 0).run() == 0
    first, second = [shard for what, shard in events if what == "write"][:2]
    assert events.index(("write", second)) < events.index(("commit ends", first))  # encoding went on
    assert len(stale_seen) == 25 and not any(stale_seen)
    want = reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train")
    combine(tmp_path / "out", splits=["train"], log=lambda _line: None)
    assert np.array_equal(np.fromfile(tmp_path / "out/train.bin", dtype=np.uint32), want)


def test_part_files_orphaned_by_a_killed_resume_are_deleted_by_the_next_holder(tmp_path, bpe_tokenizer,
                                                                                monkeypatch):
    """A holder killed after checkpointing its copy but before deleting the part it copied from
    leaves a part file no lock or checkpoint names; the next resume of the shard deletes it."""
    import shutil

    from slimtok.errors import EXIT_INTERRUPTED
    from slimtok.job import open_job
    from slimtok.protocol import OutputRoot
    from slimtok.worker import Worker

    shard, manifest, settings_for = _one_shard_job(tmp_path)
    status, ckpt = _stopping_run(monkeypatch, settings_for(bpe_tokenizer), lambda w: w.stop.set())
    assert status == EXIT_INTERRUPTED
    root = OutputRoot(tmp_path / "out")
    [checkpointed] = root.parts(ckpt.shard)
    orphan = root.part(ckpt.shard, "0rphan0rphan0rph")
    shutil.copyfile(checkpointed, orphan)
    neighbour = root.part(ckpt.shard + "3", "0rphan0rphan0rph")  # example_train_03: another shard's file
    neighbour.write_bytes(b"")
    assert sorted(root.parts(ckpt.shard)) == sorted([checkpointed, orphan])
    assert Worker(open_job(settings_for(bpe_tokenizer)), 0).run() == 0
    assert root.parts(ckpt.shard) == [] and neighbour.exists()
    want = reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train")
    assert np.array_equal(np.fromfile(root.data(ckpt.shard), dtype=np.uint32), want)


def test_a_failed_commit_stops_the_worker_releasing_both_claims_and_a_rerun_completes(tmp_path, bpe_tokenizer,
                                                                                       monkeypatch):
    """An output error in a commit (on the commit thread) surfaces after the next shard is written:
    the worker exits 3, holds no lock, and a relaunch produces the reference output."""
    import errno

    from slimtok.combine import combine
    from slimtok.errors import EXIT_FATAL
    from slimtok.job import TokenizeSettings, open_job, pin_job
    from slimtok.worker import ShardTask, Worker

    ds = make_dataset(tmp_path / "ds", train_shards=3, docs_per_shard=40, holdout_docs=2)
    manifest = cli.manifest(tmp_path, ds)
    out = tmp_path / "out"

    def settings():
        s = TokenizeSettings(dtype="uint32", manifest=str(manifest), output_root=str(out), tokenizer=str(bpe_tokenizer),
                             splits=("train",), backend="tokenizers", tokens_per_write=500, checkpoint_every=0.0)
        pin_job(s)
        return s

    real_commit = ShardTask.commit
    commits = []

    def failing_first(task):
        commits.append(task.entry.id)
        if len(commits) == 1:
            task.abandon()
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_commit(task)

    monkeypatch.setattr(ShardTask, "commit", failing_first)
    assert Worker(open_job(settings()), 0).run() == EXIT_FATAL
    assert not list((out / "locks").rglob("*.lock"))  # the failed shard's and the written next one's
    assert len(list((out / "checkpoints").rglob("*.json"))) == 2  # both keep their progress
    monkeypatch.setattr(ShardTask, "commit", real_commit)
    assert Worker(open_job(settings()), 0).run() == 0
    combine(out, splits=["train"], log=lambda _line: None)
    want = reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train")
    assert np.array_equal(np.fromfile(out / "train.bin", dtype=np.uint32), want)
    assert not list((out / "shards").rglob("*.part"))


def test_an_unexpected_error_in_one_shard_fails_that_shard_only(tmp_path, bpe_tokenizer, monkeypatch):
    """Any exception while encoding a shard becomes its failed record; the worker goes on, exit 1."""
    from slimtok.errors import EXIT_SHARDS_FAILED
    from slimtok.job import TokenizeSettings, open_job, pin_job
    from slimtok.tokenizer import Encoder
    from slimtok.worker import Worker

    ds = make_dataset(tmp_path / "ds", train_shards=3, docs_per_shard=20, holdout_docs=2)
    poisoned = ds / "train/chunk2/example_train_1.jsonl.zst"
    write_shard(poisoned, [doc_line(t) for t in sample_documents(5, seed=77)] + [doc_line("POISON")])
    manifest = cli.manifest(tmp_path, ds)
    settings = TokenizeSettings(dtype="uint32", manifest=str(manifest), output_root=str(tmp_path / "out"),
                                tokenizer=str(bpe_tokenizer), backend="tokenizers")
    pin_job(settings)
    real_encode = Encoder.encode

    def encode(self, texts):
        if "POISON" in texts:
            raise RecursionError("maximum recursion depth exceeded")  # what no rule foresaw
        return real_encode(self, texts)

    monkeypatch.setattr(Encoder, "encode", encode)
    assert Worker(open_job(settings), 0).run() == EXIT_SHARDS_FAILED
    out = tmp_path / "out"
    [failed] = (out / "failed").rglob("*.json")
    record = json.loads(failed.read_text())
    assert record["shard"] == "train/chunk2/example_train_1" and "RecursionError" in record["reason"]
    done = {p.relative_to(out / "done").as_posix()[:-5] for p in (out / "done").rglob("*.json")}
    ids = [json.loads(x)["id"] for x in manifest.read_text().splitlines()]
    assert done == set(ids) - {record["shard"]}
    assert not list((out / "locks").rglob("*.lock")) and not list((out / "shards").rglob("*.part"))


def test_a_launcher_that_finds_the_job_re_pinned_to_its_own_settings_goes_on(tmp_path, bpe_tokenizer):
    """Two nodes relaunch one corrected command; both read the old job.json, the first re-pins and
    its worker claims a shard before the second looks for claims: the second must go on, not refuse."""
    from slimtok.claims import Claimer, current_holder
    from slimtok.errors import JobMismatch
    from slimtok.job import TokenizeSettings, pin_job, read_job
    from slimtok.job.pin import _repin
    from slimtok.protocol import OutputRoot

    manifest = cli.manifest(tmp_path, make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=3, holdout_docs=1))
    root = OutputRoot(tmp_path / "out")
    old = pin_job(TokenizeSettings(manifest=str(manifest), output_root=str(root.root), tokenizer=str(bpe_tokenizer),
                                   text_key="body")).pinned
    new = pin_job(TokenizeSettings(manifest=str(manifest), output_root=str(root.root),
                                   tokenizer=str(bpe_tokenizer))).pinned
    diffs = old.differences(new)
    assert diffs and read_job(root) == new  # the first node re-pinned
    first_id = orjson.loads(manifest.read_bytes().splitlines()[0])["id"]
    assert Claimer(root, current_holder(0, 0), 60.0).try_claim(first_id) is not None  # its worker began

    assert _repin(root, new, diffs, None, "", {}) == new  # the second node, which read the old job.json
    assert root.lock(first_id).exists()
    # a launcher asking for other settings still may not re-pin over that claim
    other = TokenizeSettings(manifest=str(manifest), output_root=str(root.root), tokenizer=str(bpe_tokenizer),
                             text_key="content")
    with pytest.raises(JobMismatch, match="claim"):
        pin_job(other)
