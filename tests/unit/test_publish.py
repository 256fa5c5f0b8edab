"""Outputs that belong together appear together: every interrupted step of a publish rolls
forward to the new set, and kill -9 at random moments of combine and export leaves readers the
old complete set or the new one (compared with reference outputs of both), never a mix."""

import functools
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import run_pipeline, slimtok
from helpers.corpus import make_dataset
from helpers.tables import add_tables
from slimtok.data import DataError, TokenBin
from slimtok.protocol import PublishIntent, write_record
from slimtok.publish import PendingSet, roll_forward

NAMES = ["data.bin", "data.idx", "meta.json"]


def _old_set(folder: Path) -> None:
    folder.mkdir()
    for name in NAMES:
        (folder / name).write_text(f"old {name}")


def test_every_interrupted_step_of_a_publish_rolls_forward(tmp_path):
    """The publish's steps, stopped after each one: a later open completes the new set."""
    steps = None
    for k in range(2 + 2 * len(NAMES)):
        folder = tmp_path / f"k{k}"
        _old_set(folder)
        with PendingSet([folder / n for n in NAMES]) as pending:
            for name in NAMES:
                pending.tmp(folder / name).write_text(f"new {name}")
            tmps = {name: pending.tmp(folder / name).name for name in NAMES}
            intent = PublishIntent([[tmps[n], n] for n in NAMES], NAMES[1:])
            write_record(folder / ".data.bin.publish.json", intent)
            pending._committed = True  # stop here, as a kill would; the steps below are the publish's own
            steps = ([functools.partial(Path.unlink, folder / n) for n in NAMES[1:]]
                     + [functools.partial(os.replace, folder / tmps[n], folder / n) for n in NAMES])
            for step in steps[:k]:
                step()
        if k == 0:  # also: killed before the intent was durable: the old set stays, temps go
            (folder / ".data.bin.publish.json").unlink()
            with PendingSet([folder / n for n in NAMES]):
                pass
            assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES)
            assert all((folder / n).read_text() == f"old {n}" for n in NAMES)
            continue
        roll_forward(folder)
        assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES), k
        assert all((folder / n).read_text() == f"new {n}" for n in NAMES), k
    assert k >= len(steps)


def test_a_bin_without_its_index_is_refused(tmp_path, bpe_tokenizer):
    root = run_pipeline(make_dataset(tmp_path / "ds", 1, 5, 2), tmp_path, bpe_tokenizer)
    (root / "train.idx").unlink()
    with pytest.raises(DataError, match="train.idx: is missing beside train.bin"):
        TokenBin(root / "train.bin")


VERSION_SCRIPT = """
import sys
import numpy as np
from slimtok.combine import Exclusion, combine
root, version = sys.argv[1], sys.argv[2]
drop = (lambda r: Exclusion(np.array([0, 2]), ["duplicate", "duplicate"])) if version == "B" else None
combine(root, exclude=drop, log=lambda s: None)
"""


def _combine(root: Path, version: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", VERSION_SCRIPT, str(root), version])


def _state(root: Path) -> tuple[bytes, ...]:
    meta = json.loads((root / "meta.json").read_text())
    counts = tuple((s, i["documents"], i["tokens"], i.get("sha256")) for s, i in sorted(meta["splits"].items()))
    return ((root / "train.bin").read_bytes(), (root / "train.idx").read_bytes(), (root / "val.bin").read_bytes(),
            (root / "val.idx").read_bytes(), (root / "meta.pkl").read_bytes() != b"", repr(counts).encode())


def _kill_at_random(start, seconds: float, rng: random.Random) -> None:
    proc = start()
    time.sleep(rng.uniform(0, seconds))
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def versions(tokenized_root, bpe_tokenizer):
    """A root with tables, and the reference outputs of combine versions A (all) and B (some left out)."""
    run = tokenized_root({"train_shards": 4, "docs_per_shard": 20, "holdout_docs": 6}, bpe_tokenizer,
                         "--dtype", "uint32", "--quiet", "--spawn-workers", "1")
    work, root = run.work, run.root
    add_tables(root, run.manifest)
    refs, seconds = {}, 0.0
    for version in "AB":
        copy = work / f"ref{version}"
        shutil.copytree(root, copy)
        began = time.monotonic()
        assert _combine(copy, version).wait() == 0
        seconds = max(seconds, time.monotonic() - began)
        slimtok("export", "megatron", "--output-root", copy, "--prefix", "m")
        refs[version] = copy
    assert _state(refs["A"]) != _state(refs["B"])
    return root, refs, seconds


@pytest.mark.slow  # kill -9 at random moments, several runs
def test_kill_9_at_random_moments_of_combine_leaves_old_or_new_set(versions, tmp_path):
    root, refs, seconds = versions
    work = tmp_path / "root"
    shutil.copytree(root, work)
    assert _combine(work, "A").wait() == 0
    want = {_state(refs[v]): v for v in "AB"}
    rng = random.Random(5)
    current = "A"
    for _ in range(10):
        other = "B" if current == "A" else "A"
        _kill_at_random(functools.partial(_combine, work, other), seconds * 1.2, rng)
        TokenBin(work / "train.bin")  # a reader's open finishes a publish the kill interrupted
        found = want.get(_state(work))
        assert found in (current, other), "a mixed set after kill -9"
        current = found
    assert _combine(work, "B").wait() == 0  # a rerun completes and removes what killed runs left
    assert _state(work) == _state(refs["B"])
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]


@pytest.mark.slow  # kill -9 at random moments, several runs
def test_kill_9_at_random_moments_of_export_megatron_leaves_old_or_new_pair(versions, tmp_path):
    root, refs, seconds = versions
    work = tmp_path / "root"
    shutil.copytree(refs["A"], work)
    pair = ["m_train_text_document.bin", "m_train_text_document.idx"]
    want = {tuple((refs[v] / "megatron" / n).read_bytes() for n in pair): v for v in "AB"}
    export = [sys.executable, "-m", "slimtok", "export", "megatron", "--output-root", str(work), "--prefix", "m"]
    rng = random.Random(9)
    current = "A"
    for _ in range(6):
        other = "B" if current == "A" else "A"
        assert _combine(work, other).wait() == 0
        _kill_at_random(lambda: subprocess.Popen(export), seconds, rng)
        folder = work / "megatron"
        present = [(folder / n).exists() for n in pair]
        if all(present) and not list(folder.glob(".*.publish.json")):  # megatron-core would read this pair
            assert tuple((folder / n).read_bytes() for n in pair) in want
        roll_forward(folder)  # what the next export does first
        found = want.get(tuple((folder / n).read_bytes() for n in pair))
        assert found in (current, other), "a new .bin with an old .idx after kill -9"
        current = found
        if current != other:  # the export did not get to publish: the rerun must
            assert subprocess.run(export, capture_output=True).returncode == 0
            current = other
            assert tuple((folder / n).read_bytes() for n in pair) in want
    subprocess.run(export, check=True, capture_output=True)
    assert not [p.name for p in (work / "megatron").iterdir() if p.name.startswith(".")]
    assert np.array_equal(np.fromfile(work / "megatron" / pair[0], "<u4"), np.fromfile(work / "train.bin", "<u4"))


def _packed_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@pytest.mark.slow  # kill -9 at random moments, several runs
def test_kill_9_at_random_moments_of_export_packed_leaves_old_or_new_parts(versions, tmp_path):
    root, refs, seconds = versions
    work = tmp_path / "root"
    shutil.copytree(refs["A"], work)
    folder = work / "packed-out"
    export = [sys.executable, "-m", "slimtok", "export", "packed", "--output-root", str(work), "--seq-len", "64",
              "--format", "npy", "--rows-per-file", "40", "--output-dir", str(folder)]
    want = {}
    for version in "AB":
        if version == "B":
            assert _combine(work, "B").wait() == 0
        subprocess.run(export, check=True, capture_output=True)
        want[version] = _packed_state(folder)
    assert want["A"] != want["B"] and len(want["A"]) > 3
    rng = random.Random(13)
    current = "B"
    for _ in range(6):
        other = "B" if current == "A" else "A"
        assert _combine(work, other).wait() == 0
        _kill_at_random(lambda: subprocess.Popen(export), seconds, rng)
        manifest = folder / "manifest.json"
        if manifest.exists() and not list(folder.glob(".*.publish.json")):  # what a reader would take
            listed = json.loads(manifest.read_text())["files"]
            assert all(hashlib.sha256((folder / f["file"]).read_bytes()).hexdigest() == f["sha256"] for f in listed)
        roll_forward(folder)
        state = _packed_state(folder)
        found = next((v for v in "AB" if state == want[v]), None)
        assert found in (current, other), "parts of one export with the manifest of another after kill -9"
        subprocess.run(export, check=True, capture_output=True)  # the rerun completes
        assert _packed_state(folder) == want[other]
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
        current = other
