"""One pin per job: launches started together on one new root with different tokenizers, and kills
between the steps of a pin (docs/RELIABILITY.md, slimtok.job.pin).

Every check compares the root with an independent fact: the sha256 of the copies against job.json,
the copies against the winner's own tokenizer and manifest, and the relaunched output against a
solo run of the winner's command."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from helpers.cli import manifest as list_manifest
from helpers.cli import slimtok, tokenize_args, tokenize_cmd
from helpers.corpus import make_dataset, write_bpe_tokenizer

#: launches started at once on one new root, half with each tokenizer
LAUNCHES = 8


@pytest.fixture(scope="module")
def other_bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second byte-level BPE with the same vocabulary size and special tokens as ``bpe_tokenizer``,
    trained on other text: the two differ only in their merges (their fingerprint)."""
    return write_bpe_tokenizer(tmp_path_factory.mktemp("other_bpe"), seed=7)


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("pin_race")
    return list_manifest(work, make_dataset(work / "ds", train_shards=3, docs_per_shard=6, holdout_docs=2))


def _flags() -> list[str]:
    return ["--spawn-workers", "1"]


def _solo(work: Path, listed: Path, tokenizer: Path) -> bytes:
    """train.bin of the command run alone on a fresh root."""
    root = work / f"solo-{tokenizer.name}"
    slimtok(*tokenize_args(listed, root, tokenizer, *_flags()))
    slimtok("combine", "--output-root", root)
    return (root / "train.bin").read_bytes()


def _check_pinned(root: Path, listed: Path, tokenizer: Path, ended: bool = True) -> None:
    """job.json, its copies and the winner's inputs agree; once every launch ``ended``, nothing of a
    pin in flight (stage, lease) is left."""
    from tokenizers import Tokenizer

    job = orjson.loads((root / "job.json").read_bytes())
    copy = root / "tokenizer" / "tokenizer.json"
    assert hashlib.sha256(copy.read_bytes()).hexdigest() in {job["tokenizer_sha256"], job["tokenizer_file_sha256"]}
    assert Tokenizer.from_file(str(copy)).to_str() == Tokenizer.from_file(str(tokenizer / "tokenizer.json")).to_str()
    if job["tokenizer_sha256"]:
        assert job["tokenizer_sha256"] == hashlib.sha256(
            Tokenizer.from_file(str(tokenizer / "tokenizer.json")).to_str().encode()).hexdigest()
    assert (root / "manifest.jsonl").read_bytes() == listed.read_bytes()
    assert orjson.loads((root / "tokenizer" / "tokenizer_config.json").read_bytes())["eos_token"] == "<|endoftext|>"
    if ended:
        assert not [p.name for p in root.iterdir() if p.name.startswith(".pin.")]
        assert not list((root / "launches").glob("*")) if (root / "launches").exists() else True


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_launches_started_together_with_two_tokenizers_pin_one_and_refuse_the_other(
        tmp_path, listed, bpe_tokenizer, other_bpe, seed):
    tokenizers = [bpe_tokenizer, other_bpe] * (LAUNCHES // 2)
    random.Random(seed).shuffle(tokenizers)
    root = tmp_path / "out"
    procs = [subprocess.Popen(tokenize_cmd(listed, root, tok, *_flags()), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for tok in tokenizers]
    results = [(tok, p.wait(timeout=600), p.communicate()[1]) for tok, p in zip(tokenizers, procs, strict=True)]

    winners = {tok for tok, code, _ in results if code == 0}
    assert len(winners) == 1, [(t.name, c, e) for t, c, e in results]
    winner = winners.pop()
    for tok, code, err in results:
        if tok != winner:  # every loser refuses, naming the setting that differs
            assert code == 2, err
            assert "refusing to mix outputs" in err and "tokenizer_sha256: pinned" in err, err
    _check_pinned(root, listed, winner)

    slimtok(*tokenize_args(listed, root, winner, *_flags()))  # the winner's command, relaunched
    slimtok("combine", "--output-root", root)
    assert (root / "train.bin").read_bytes() == _solo(tmp_path, listed, winner)


#: Where a kill -9 lands in a pin, as a prelude run before the command in a fresh python: after the
#: copies are staged (job.json not created), after job.json is created (copies staged, none in
#: place), and between two renames of the copies into place.
KILLS = {
    "before job.json": """
import os, signal
import slimtok.job.pin as pin
real = pin.create_exclusive
def create_exclusive(path, payload, durable=True):
    if path.name == "job.json":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, payload, durable)
pin.create_exclusive = create_exclusive
""",
    "after job.json": """
import os, signal
import slimtok.job.pin as pin
pin.publish_stage = lambda root, stage: os.kill(os.getpid(), signal.SIGKILL)
""",
    "between copies": """
import os, signal
from slimtok.protocol.storage import PosixStorage
real = PosixStorage.replace
def replace(self, source, target):
    real(self, source, target)
    if source.parent.name.startswith(".pin."):
        os.kill(os.getpid(), signal.SIGKILL)
PosixStorage.replace = replace
""",
}


@pytest.mark.parametrize("where", list(KILLS))
def test_a_kill_between_the_steps_of_a_pin_leaves_a_root_a_relaunch_finishes(tmp_path, listed, bpe_tokenizer, where):
    root = tmp_path / "out"
    code = (f"{KILLS[where]}\nimport sys\nfrom slimtok.cli import main\nmain(sys.argv[1:])\n")
    killed = subprocess.run([sys.executable, "-c", code, *tokenize_args(listed, root, bpe_tokenizer, *_flags())],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if where != "before job.json":
        # a reader finds the job whole: the copies job.json names are the ones it reads
        from slimtok.job import load_job, pinned_tokenizer_path
        from slimtok.protocol import OutputRoot

        out = OutputRoot(root)
        job, entries = load_job(out)
        assert len(entries) == job.shards
        pinned_tokenizer_path(out, job)
        _check_pinned(root, listed, bpe_tokenizer, ended=False)
    slimtok(*tokenize_args(listed, root, bpe_tokenizer, *_flags()))  # the killed command, relaunched
    slimtok("combine", "--output-root", root)
    assert (root / "train.bin").read_bytes() == _solo(tmp_path, listed, bpe_tokenizer)
    _check_pinned(root, listed, bpe_tokenizer)
