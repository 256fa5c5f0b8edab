"""combine on a small tmpfs: refused up front with the numbers, and a disk that fills mid-write
is exit 3 (OutputError) naming the file with every temporary file removed. Every other stage that
writes (mix, dedup with one or more workers, clean, the exports) on a full disk: exit 3 and one
line naming where, no traceback."""

import os
import shutil
from pathlib import Path

import pytest

from helpers.cli import slimtok
from helpers.corpus import make_dataset
from helpers.tmpfs import mounted_tmpfs
from slimtok.combine import load_job, plan_split, write_split
from slimtok.errors import EXIT_FATAL, OutputError
from slimtok.protocol import DoneRecord, OutputRoot
from slimtok.publish import PendingSet


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def small_disk(tmp_path, bpe_tokenizer):
    """(root on a tmpfs with room for the root and half of its train split, train bytes)."""
    make_dataset(tmp_path / "ds", train_shards=3, docs_per_shard=30, holdout_docs=2)
    slimtok("manifest", "--dataset-dir", tmp_path / "ds", "--output-dir", tmp_path / "m")
    built = tmp_path / "built"
    slimtok("tokenize", "--dtype", "uint32", "--manifest", tmp_path / "m/manifest.jsonl", "--output-root", built,
            "--tokenizer", bpe_tokenizer, "--quiet", "--spawn-workers", "1")
    train = sum(p.stat().st_size for p in (built / "shards/train").rglob("*.bin"))
    size_kib = (_tree_bytes(built) + train // 2) // 1024 + 64  # + room for directory entries
    with mounted_tmpfs(tmp_path / "mnt", f"{size_kib}k") as mount:
        shutil.copytree(built, mount / "root")
        yield mount / "root", train


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")]


def test_combine_refuses_before_writing_when_the_disk_is_too_small(small_disk):
    root, train = small_disk
    before = sorted(p.name for p in root.iterdir())
    proc = slimtok("combine", "--output-root", root, check=False)
    assert proc.returncode == EXIT_FATAL, proc.stderr
    assert "combine needs" in proc.stderr and "bytes but the filesystem has" in proc.stderr
    assert sorted(p.name for p in root.iterdir()) == before


def test_a_disk_that_fills_mid_write_is_an_output_error_and_leaves_no_temp_file(small_disk):
    root, _ = small_disk
    out = OutputRoot(root)
    job, entries = load_job(out)
    plan = plan_split(out, entries, "train")
    assert all(isinstance(r, DoneRecord) for r in plan.done)
    with pytest.raises(OutputError, match="disk filled up while writing train.bin") as info:
        with PendingSet([out.combined("train"), out.doc_index("train")]) as pending:  # no free-space check
            write_split(out, plan, pending, job=job, log=lambda s: None)
            pending.publish()
    assert info.value.exit_code == EXIT_FATAL
    assert not _leftovers(root) and not (root / "train.bin").exists()


# every stage on a full disk: exit 3 and one line naming where (mix and dedup gave tracebacks) ----

@pytest.fixture(scope="module")
def built(tmp_path_factory, bpe_tokenizer) -> Path:
    """A tokenized root (not combined) of 5 shards, on the ordinary disk."""
    tmp = tmp_path_factory.mktemp("full")
    make_dataset(tmp / "ds", train_shards=3, docs_per_shard=60, holdout_docs=5)
    slimtok("manifest", "--dataset-dir", tmp / "ds", "--output-dir", tmp / "m")
    slimtok("tokenize", "--dtype", "uint32", "--manifest", tmp / "m/manifest.jsonl", "--output-root", tmp / "root",
            "--tokenizer", bpe_tokenizer, "--quiet", "--spawn-workers", "1")
    return tmp / "root"


def _disk_kib(folder: Path) -> int:
    """What ``folder`` occupies on a tmpfs (whole pages per file), in KiB."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*")) // 1024


def _fill(mount: Path) -> None:
    """Take every free byte of ``mount``."""
    fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, bytes(4096)):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def _errors(stderr: str) -> list[str]:
    """stderr without its progress lines: the error, and what workers said (a line naming a file)."""
    return [line for line in stderr.splitlines() if line.startswith(("error: ", "/"))]


def test_mix_on_a_full_disk_exits_3_naming_the_output_root(built, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"seed: 1\ntotal_tokens: 40000\nsources:\n  - {{name: a, root: {built}, weight: 1.0}}\n")
    with mounted_tmpfs(tmp_path / "mnt", "60k") as mount:
        proc = slimtok("mix", spec, "--output-root", mount / "mixout", check=False)
    assert proc.returncode == EXIT_FATAL and "Traceback" not in proc.stderr, proc.stderr
    assert _errors(proc.stderr) == [
        f"error: {mount / 'mixout'}: the disk filled up while writing the mix (No space left on device); free space "
        "there and run the same `slimtok mix` again: finished chunks are kept"], proc.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_dedup_on_a_full_disk_exits_3_naming_the_root(built, tmp_path, workers):
    with mounted_tmpfs(tmp_path / "mnt", f"{_disk_kib(built) + 28}k") as mount:
        shutil.copytree(built, mount / "root")
        proc = slimtok("dedup", "--output-root", mount / "root", "--spawn-workers", workers, "--buckets", 64,
                       "--quiet", check=False)
    assert proc.returncode == EXIT_FATAL and "Traceback" not in proc.stderr, proc.stderr
    fix = f"free space there and run `slimtok dedup --output-root {mount / 'root'}` again: finished units are kept"
    full = f"{mount / 'root'}: the disk filled up while writing dedup units (No space left on device); {fix}"
    lines = _errors(proc.stderr)
    if workers == 1:
        assert lines == [f"error: {full}"], proc.stderr
    else:  # each worker says what it hit, then the launcher the outcome
        assert lines[-1] in [f"error: {mount / 'root'}: {n} dedup worker(s) could not write under it; {fix}"
                             for n in (1, 2)], proc.stderr
        assert lines[:-1] and set(lines[:-1]) == {full}, proc.stderr


def test_clean_on_a_full_disk_exits_3_naming_meta_json(built, tmp_path):
    with mounted_tmpfs(tmp_path / "mnt", f"{2 * _disk_kib(built) + 64}k") as mount:
        shutil.copytree(built, mount / "root")
        slimtok("combine", "--output-root", mount / "root", "--quiet")
        _fill(mount)
        proc = slimtok("clean", "--output-root", mount / "root", check=False)
    assert proc.returncode == EXIT_FATAL and "Traceback" not in proc.stderr, proc.stderr
    assert _errors(proc.stderr) == [f"error: {mount / 'root' / 'meta.json'}: the disk filled up while writing "
                                    "meta.json (temporary files removed); free space there and run the command again"]


def test_exports_on_a_full_disk_exit_3_before_writing(built, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(built, root)
    slimtok("combine", "--output-root", root, "--quiet")
    with mounted_tmpfs(tmp_path / "mnt", "64k") as mount:
        packed = slimtok("export", "packed", "--output-root", root, "--seq-len", 64, "--output-dir", mount / "p",
                         check=False)
        megatron = slimtok("export", "megatron", "--output-root", root, "--prefix", mount / "meg", check=False)
    for proc, what in ((packed, "packing train.bin needs"), (megatron, "copying train.bin needs")):
        assert proc.returncode == EXIT_FATAL and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and what in proc.stderr, proc.stderr
