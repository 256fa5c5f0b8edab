"""slimtok clean: after a finished combine it removes the shard data and what killed runs left,
only once the combined files match the done records; everything after combine keeps working."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import orjson
import pytest

from helpers.cli import slimtok
from slimtok.claims import current_holder
from slimtok.clean import clean
from slimtok.combine import Exclusion, combine
from slimtok.errors import CleanError
from slimtok.protocol import DoneRecord, LockRecord, OutputRoot, read_record, temp_path, write_record

SPLIT_FILES = ["train.bin", "train.idx", "val.bin", "val.idx", "test.bin", "test.idx"]


@pytest.fixture(scope="module")
def tokenized(tokenized_root, bpe_tokenizer):
    """A tokenized, not yet combined root (8 train shards, two holdouts) and its combined copy."""
    args = ({"train_shards": 8, "docs_per_shard": 12}, bpe_tokenizer, "--quiet", "--spawn-workers", "1")
    return tokenized_root(*args).root, tokenized_root(*args, combine=True).root


def _copy(source, tmp_path, name="root"):
    shutil.copytree(source, tmp_path / name)
    return tmp_path / name


def _records(root):
    return [read_record(p, DoneRecord) for p in sorted((root / "done").rglob("*.json"))]


def _files(root):
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _leftovers(root):
    """What killed runs leave: a part and table part, a checkpoint, temp files, a committed claim's
    lock and a lock whose holder died on this host. Returns their paths."""
    out = OutputRoot(root)
    first, second = _records(root)[:2]
    made = [out.part(first.shard, "0123456789abcdef"), out.table_part(first.shard, "0123456789abcdef"),
            out.checkpoint(first.shard), temp_path(out.done(second.shard)), temp_path(out.data(second.shard))]
    for i, path in enumerate(made):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (100 + i))
    committed = LockRecord(**asdict(current_holder(0, 0)), shard=first.shard, token=first.token, claimed_at=0.0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {**asdict(current_holder(0, 0)), "pid": int(dead.stdout)}
    dead_claim = LockRecord(**holder, shard=second.shard, token="fedcba9876543210", claimed_at=0.0)
    write_record(out.lock(first.shard), committed)
    write_record(out.lock(second.shard), dead_claim)
    return made + [out.lock(first.shard), out.lock(second.shard)]


def test_clean_frees_the_shards_and_validate_status_export_combine_still_work(tokenized, tmp_path):
    root = _copy(tokenized[1], tmp_path)
    before = {name: (root / name).read_bytes() for name in SPLIT_FILES}
    records = _records(root)
    shard_bytes = sum(r.bytes for r in records)
    junk = _leftovers(root)
    junk_bytes = sum(p.stat().st_size for p in junk)

    out = slimtok("clean", "--output-root", root, "--quiet").stdout

    assert f"removed {len(records)} shard data files ({shard_bytes:,} bytes)" in out
    assert f"freed {shard_bytes + junk_bytes:,} bytes" in out.splitlines()[-1]
    assert not [p for p in junk if p.exists()]
    assert not list((root / "shards").rglob("*.bin")) and not list((root / "documents").rglob("*.part"))
    assert list((root / "shards").iterdir()) == []  # no empty train/chunk1/ ... folders are left behind
    assert all((root / r.table).exists() and (root / "done" / f"{r.shard}.json").exists() for r in records)
    meta = orjson.loads((root / "meta.json").read_bytes())
    assert all(entry["consumed"] for entry in meta["splits"].values())

    assert "all checks passed" in slimtok("validate", "--output-root", root, "--block-size", "64").stdout
    status = orjson.loads(slimtok("status", "--output-root", root, "--json").stdout)
    assert status["splits"] == orjson.loads(slimtok("status", "--output-root", tokenized[1], "--json").stdout)["splits"]
    assert status["total"]["done"] == len(records) and status["disk"]["written"] == shard_bytes
    slimtok("export", "megatron", "--output-root", root, "--prefix", "m")
    assert (root / "megatron/m_train_text_document.bin").read_bytes() == before["train.bin"]
    again = slimtok("combine", "--output-root", root, "--quiet").stdout
    assert again.count("combined earlier from consumed shards; kept") == 3
    assert {name: (root / name).read_bytes() for name in SPLIT_FILES} == before

    second = slimtok("clean", "--output-root", root, "--quiet").stdout  # nothing left to do
    assert second.splitlines()[-1] == "freed 0 bytes: nothing to remove"


def test_dry_run_lists_and_removes_nothing(tokenized, tmp_path):
    root = _copy(tokenized[1], tmp_path)
    junk = _leftovers(root)
    files = _files(root)
    meta = (root / "meta.json").read_bytes()

    out = slimtok("clean", "--output-root", root, "--dry-run", "--quiet").stdout

    assert _files(root) == files and (root / "meta.json").read_bytes() == meta
    listed = dict(line.split("\t") for line in out.splitlines() if "\t" in line)
    assert set(listed) == {str(root / r.file) for r in _records(root)} | {str(p) for p in junk}
    assert all(int(size) == files[os.path.relpath(path, root)] for path, size in listed.items())
    assert out.splitlines()[-1] == f"would free {sum(map(int, listed.values())):,} bytes"


def test_refuses_before_combine(tokenized, tmp_path):
    root = _copy(tokenized[0], tmp_path)
    with pytest.raises(CleanError, match="combine has not run"):
        clean(root)
    assert len(list((root / "shards").rglob("*.bin"))) == 10


def test_refuses_a_stale_split(tokenized, tmp_path):
    root = _copy(tokenized[0], tmp_path)
    record = _records(root)[-1]
    done = root / "done" / f"{record.shard}.json"
    aside = tmp_path / "aside.json"
    shutil.move(done, aside)
    combine(root, allow_partial=True, log=lambda _: None)
    shutil.move(aside, done)  # a shard finished after that combine
    proc = slimtok("clean", "--output-root", root, check=False)
    assert proc.returncode == 2 and "is stale" in proc.stderr and "slimtok combine" in proc.stderr
    assert len(list((root / "shards").rglob("*.bin"))) == 10


def test_refuses_a_live_claim(tokenized, tmp_path):
    root = _copy(tokenized[1], tmp_path)
    record = _records(root)[0]
    live = LockRecord(**asdict(current_holder(0, 0)), shard=record.shard, token="00aa00aa00aa00aa",
                      claimed_at=time.time())
    write_record(OutputRoot(root).lock(record.shard), live)  # this very process holds it
    with pytest.raises(CleanError, match=f"live: {record.shard} .*pid {os.getpid()}"):
        clean(root)
    assert len(list((root / "shards").rglob("*.bin"))) == 10


def test_refuses_a_combined_file_that_does_not_match_and_names_the_shard(tokenized, tmp_path):
    root = _copy(tokenized[1], tmp_path)
    records = [r for r in _records(root) if r.split == "train"]
    order = [orjson.loads(line)["id"] for line in (root / "manifest.jsonl").read_bytes().splitlines()]
    train = sorted(records, key=lambda r: order.index(r.shard))
    at = train[0].bytes + train[1].bytes // 2  # inside the second train shard
    data = bytearray((root / "train.bin").read_bytes())
    data[at] ^= 0xFF
    (root / "train.bin").write_bytes(bytes(data))
    with pytest.raises(CleanError, match=f"sha256 of shard {train[1].shard}'s done record.*nothing was removed"):
        clean(root)
    assert len(list((root / "shards").rglob("*.bin"))) == 10
    assert not orjson.loads((root / "meta.json").read_bytes())["splits"]["train"].get("consumed")


def test_a_split_combined_without_some_documents_keeps_its_shards(tokenized, tmp_path):
    root = _copy(tokenized[0], tmp_path)
    combine(root, log=lambda _: None,
            exclude=lambda r: Exclusion(np.array([0]), ["duplicate"]) if r.split == "train" else None)
    report = clean(root)
    kinds = {r.what for r in report.removals}
    assert kinds == {"shard data files"}
    assert {r.path.name for r in report.removals} == {"example_holdout_0.bin"}
    assert any("split train" in note for note in report.kept)
    assert len(list((root / "shards").rglob("*.bin"))) == 8


@pytest.mark.slow  # kill -9 at random moments, several runs
def test_kill_9_during_clean_then_rerun_finishes(tokenized, tmp_path):
    rng = random.Random(5)
    reference = {name: (tokenized[1] / name).read_bytes() for name in SPLIT_FILES}
    began = time.monotonic()
    slimtok("clean", "--output-root", _copy(tokenized[1], tmp_path, "timed"), "--quiet")
    seconds = time.monotonic() - began
    for run in range(4):
        root = _copy(tokenized[1], tmp_path, f"run{run}")
        _leftovers(root)
        for _ in range(2):
            proc = subprocess.Popen([sys.executable, "-m", "slimtok", "clean", "--output-root", str(root), "--quiet"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0, seconds * 1.1))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        slimtok("clean", "--output-root", root, "--quiet")
        assert not list((root / "shards").rglob("*.bin")) and not list((root / "locks").rglob("*.lock"))
        assert not [p.name for p in root.iterdir() if p.name.startswith(".")]
        assert "kept" in slimtok("combine", "--output-root", root, "--quiet").stdout
        assert {name: (root / name).read_bytes() for name in SPLIT_FILES} == reference, run
    assert "all checks passed" in slimtok("validate", "--output-root", root, "--block-size", "64").stdout


def test_a_split_nothing_was_tokenized_of_is_passed_by(tokenized, tmp_path):
    root = _copy(tokenized[0], tmp_path)
    for record in _records(root):  # as after `tokenize --splits train`
        if record.split != "train":
            for name in (record.file, record.table, f"done/{record.shard}.json"):
                (root / name).unlink()
    combine(root, ["train"], log=lambda _: None)
    report = clean(root)
    assert len([r for r in report.removals if r.what == "shard data files"]) == 8
    assert not list((root / "shards").rglob("*.bin"))


def test_a_consumed_root_is_checked_and_only_its_leftovers_go(tokenized, tmp_path):
    root = _copy(tokenized[0], tmp_path)
    combine(root, consume=True, log=lambda _: None)
    junk = _leftovers(root)
    report = clean(root)  # the shard data is gone already: only what the killed runs left
    assert sorted(r.path for r in report.removals) == sorted(junk)
    assert not [p for p in junk if p.exists()]
    (root / "train.bin").write_bytes((root / "train.bin").read_bytes()[::-1])  # same size, other bytes
    with pytest.raises(CleanError, match="do not hash to the sha256"):
        clean(root)


def test_combine_with_drops_on_a_cleaned_split_is_refused_not_silently_kept(tokenized, tmp_path):
    from slimtok.errors import CombineError

    root = _copy(tokenized[1], tmp_path)
    clean(root)
    train = (root / "train.bin").read_bytes()
    drop_first = lambda r: Exclusion(np.array([0]), ["duplicate"]) if r.split == "train" else None  # noqa: E731
    with pytest.raises(CombineError, match="cannot be left out") as caught:
        combine(root, log=lambda _: None, exclude=drop_first)
    assert caught.value.path == str(OutputRoot(root).combined("train"))
    assert (root / "train.bin").read_bytes() == train
    combine(root, log=lambda _: None, exclude=lambda r: None)  # nothing to drop: the split is kept as it is
    assert (root / "train.bin").read_bytes() == train


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_clean_and_consume_delete_only_a_shards_own_data_file(tokenized, tmp_path):
    """A done record naming another file than its shard's own ``shards/<id>.bin`` (a split file, as a
    mix's chunk records do, or any other file of the root) is refused by clean and by combine
    --consume before anything is deleted or marked: every byte of the root stays."""
    from slimtok.errors import CombineError

    combined = _copy(tokenized[1], tmp_path, "combined")
    out = OutputRoot(combined)
    last = [r for r in _records(combined) if r.split == "train"][-1]
    last.file = "train.bin"
    write_record(out.done(last.shard), last)
    before = _tree(combined)
    with pytest.raises(CombineError, match=f"names 'train.bin' as its data, not the shard's own shards/{last.shard}"):
        clean(combined)
    assert _tree(combined) == before

    plain = _copy(tokenized[0], tmp_path, "plain")
    out = OutputRoot(plain)
    last = [r for r in _records(plain) if r.split == "train"][-1]
    (plain / "keep").mkdir()
    (plain / "keep" / "x.bin").write_bytes(out.data(last.shard).read_bytes())  # same bytes, so checksums pass
    last.file = "keep/x.bin"
    write_record(out.done(last.shard), last)
    before = _tree(plain)
    with pytest.raises(CombineError, match="names 'keep/x.bin' as its data"):
        combine(plain, consume=True, log=lambda _: None)
    assert _tree(plain) == before


def test_combine_refuses_a_consumed_split_file_changed_since_instead_of_describing_it_again(tokenized, tmp_path):
    """A consumed (or cleaned) split's file is kept by a later combine, which publishes meta.json over
    it again: same-size damage must be refused naming the file and the shard whose range differs
    (it used to be kept with exit 0); the undamaged file is kept byte for byte."""
    from slimtok.errors import CombineError

    root = _copy(tokenized[0], tmp_path)
    combine(root, consume=True, log=lambda _: None)
    good = (root / "train.bin").read_bytes()
    combine(root, log=lambda _: None)
    assert (root / "train.bin").read_bytes() == good
    first = [r for r in _records(root) if r.split == "train"][0]
    (root / "train.bin").write_bytes(bytes([good[0] ^ 1]) + good[1:])
    before = _tree(root)
    with pytest.raises(CombineError, match=f"^{root / 'train.bin'}: .*bytes 0..{first.bytes:,} do not hash to the "
                                           f"sha256 of shard {first.shard}'s done record"):
        combine(root, log=lambda _: None)
    assert _tree(root) == before
