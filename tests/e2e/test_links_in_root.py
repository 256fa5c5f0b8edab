"""Nothing outside the root is touched (issue 24, item 5). For each kind of file slimtok writes, a
symbolic link is planted at its name (or at its folder, where the name holds a random token) in an
output root, pointing at another user's file or folder; the command that writes it must refuse
with a line naming the link, and the outside file's bytes and mtime must be unchanged."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.cli import manifest, slimtok, tokenize_args
from helpers.corpus import make_dataset
from slimtok.protocol.identity import hostname, worker_name

DATASET = {"train_shards": 2, "docs_per_shard": 6, "holdout_docs": 2}
SHARD = "train/chunk1/example_train_0"
WORKER = worker_name(hostname(), 0, 0)

#: kind -> (the link's path relative to the root, whether it stands for a folder)
TOKENIZE_KINDS: dict[str, tuple[str, bool]] = {
    "log": (f"logs/{WORKER}.log", False),
    "heartbeat": (f"heartbeats/{WORKER}.json", False),
    "status journal": (f"status/journal/{WORKER}.jsonl", False),
    "checkpoint": (f"checkpoints/{SHARD}.json", False),
    "part file": ("shards/train", True),
    "document table part": ("documents", True),
    "done record": (f"done/{SHARD}.json", False),
    "lock": (f"locks/{SHARD}.lock", False),
}
#: kind -> (the link, whether a folder, the command after tokenize that writes it, given the root)
FINISHING_KINDS: dict[str, tuple[str, bool, Callable[[Path], list[object]]]] = {
    "combined split": ("train.bin", False, lambda root: ["combine", "--output-root", root, "--quiet"]),
    "meta": ("meta.json", False, lambda root: ["combine", "--output-root", root, "--quiet"]),
    "megatron export": ("megatron", True, lambda root: ["export", "megatron", "--output-root", root, "--prefix", "m",
                                                        "--splits", "train"]),
    "packed export": ("packed", True,
                      lambda root: ["export", "packed", "--output-root", root, "--split", "train", "--seq-len", "8"]),
}


def _outside(tmp_path: Path) -> Path:
    """Another user's folder holding a file, with known bytes and times."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "victim").write_bytes(b"another user's bytes\n")
    os.utime(folder / "victim", ns=(10**18, 10**18))
    return folder


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _plant(root: Path, relative: str, is_folder: bool, outside: Path) -> Path:
    link = root / relative
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside if is_folder else outside / "victim")
    return link


def _assert_refused(proc, link: Path, outside: Path, before: dict[str, tuple[bytes, int]]) -> None:
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    assert f"{link}: is a symbolic link where slimtok writes" in proc.stderr + proc.stdout, proc.stderr
    assert _snapshot(outside) == before
    assert sorted(p.name for p in outside.rglob("*")) == ["victim"]  # no folder made there either
    assert link.is_symlink()


@pytest.mark.parametrize("kind", TOKENIZE_KINDS, ids=list(TOKENIZE_KINDS))
def test_tokenize_refuses_a_link_where_it_writes(tmp_path, bpe_tokenizer, kind):
    """Each per-shard and per-worker file a tokenize writes is a link in the root it starts in (a
    checkpoint at every document, so the shard's checkpoint is written, not only removed)."""
    make_dataset(tmp_path / "ds", **DATASET)
    listed = manifest(tmp_path, tmp_path / "ds")
    outside = _outside(tmp_path)
    relative, is_folder = TOKENIZE_KINDS[kind]
    link = _plant(tmp_path / "out", relative, is_folder, outside)
    before = _snapshot(outside)
    proc = slimtok(*tokenize_args(listed, tmp_path / "out", bpe_tokenizer, "--spawn-workers", "1",
                                  "--checkpoint-every", "0", "--tokens-per-write", "1"), check=False)
    _assert_refused(proc, link, outside, before)


@pytest.mark.parametrize("kind", FINISHING_KINDS, ids=list(FINISHING_KINDS))
def test_finishing_stages_refuse_a_link_where_they_write(tmp_path, bpe_tokenizer, tokenized_root, kind):
    relative, is_folder, command = FINISHING_KINDS[kind]
    done = tokenized_root(DATASET, bpe_tokenizer, combine=relative.split("/")[0] in ("megatron", "packed"))
    outside = _outside(tmp_path)
    link = _plant(done.root, relative, is_folder, outside)
    before = _snapshot(outside)
    _assert_refused(slimtok(*command(done.root), check=False), link, outside, before)
