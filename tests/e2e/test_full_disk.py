"""combine on a small tmpfs: refused up front with the numbers, and a disk that fills mid-write
is exit 3 (OutputError) naming the file with every temporary file removed."""

import shutil
from pathlib import Path

import pytest

from helpers.tmpfs import mounted_tmpfs
from helpers.cli import slimtok
from helpers.corpus import make_dataset
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
