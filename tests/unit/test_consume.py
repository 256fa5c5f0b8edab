"""combine --consume: kill -9 at random moments, then a relaunch, gives files byte-identical to
a copying combine; validate, export and a repeated combine keep working on the consumed root."""

import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers.cli import slimtok
from helpers.corpus import make_dataset
from helpers.tables import add_tables


def _consume(root) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slimtok", "combine", "--output-root", str(root), "--consume"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow  # kill -9 at random moments, several runs
def test_kill_9_during_consume_then_relaunch_is_byte_identical_to_copying(tmp_path, bpe_tokenizer):
    dataset = make_dataset(tmp_path / "ds", train_shards=6, docs_per_shard=15, holdout_docs=5)
    slimtok("manifest", "--dataset-dir", dataset, "--output-dir", tmp_path / "m")
    built = tmp_path / "built"
    slimtok("tokenize", "--dtype", "uint32", "--manifest", tmp_path / "m/manifest.jsonl", "--output-root", built,
            "--tokenizer", bpe_tokenizer, "--quiet", "--spawn-workers", "1")
    add_tables(built, tmp_path / "m/manifest.jsonl")
    copying = tmp_path / "copying"
    shutil.copytree(built, copying)
    began = time.monotonic()
    slimtok("combine", "--output-root", copying)
    seconds = time.monotonic() - began
    names = ["train.bin", "train.idx", "val.bin", "val.idx", "test.bin", "test.idx"]
    rng = random.Random(21)
    for run in range(4):
        root = tmp_path / f"consumed{run}"
        shutil.copytree(built, root)
        for _ in range(3):  # several kills at random moments of the same consuming combine
            proc = _consume(root)
            time.sleep(rng.uniform(0, seconds * 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if (root / ".train.bin.consume.json").exists():  # moved shards: only --consume can finish
            proc = slimtok("combine", "--output-root", root, check=False)
            assert proc.returncode == 2 and "--consume" in proc.stderr
        slimtok("combine", "--output-root", root, "--consume")
        for name in names:
            assert (root / name).read_bytes() == (copying / name).read_bytes(), (run, name)
        assert not list((root / "shards").rglob("*.bin"))  # moved, not copied
        assert list((root / "shards").iterdir()) == []  # and their emptied folders removed
        assert not [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert "all checks passed" in slimtok("validate", "--output-root", root, "--block-size", "64").stdout
    slimtok("export", "megatron", "--output-root", root, "--prefix", "m")
    assert np.array_equal(np.fromfile(root / "megatron/m_train_text_document.bin", "<u4"),
                          np.fromfile(copying / "train.bin", "<u4"))
    out = slimtok("combine", "--output-root", root).stdout  # a later combine keeps the consumed splits
    assert "combined earlier from consumed shards; kept" in out
    assert (root / "train.bin").read_bytes() == (copying / "train.bin").read_bytes()
    slimtok("status", "--output-root", root)
