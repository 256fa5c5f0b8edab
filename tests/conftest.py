"""Shared fixtures: tokenizers built here (no network), tokenized roots built once per run, and the
one-host Slurm cluster the Slurm tests use.

What is built once is built once for the whole run, not once per pytest-xdist worker: each worker
is its own process with its own basetemp (``<run>/popen-gwN``), so these go into the run's folder
``<run>/shared`` under a file lock (:func:`build_once`). The first worker to ask builds; the others
wait for it and reuse the result. Invariants:
- a cached folder is complete once its ``.built`` marker exists, and never changes after that;
- a test never gets a cached output root itself: :func:`tokenized_root` hands out a private copy
  (the copy's manifest still lists the cached dataset's shards, which tests only read).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson
import pytest

from helpers import cli, slurm
from helpers.corpus import make_dataset, write_bpe_tokenizer
from helpers.s3_server import S3Server

# Workers are separate processes; keep each to one encoder thread as the launcher does.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every process of this run shares (see the module docstring). A plain run has one
    process: its own basetemp, since the basetemp's parent holds earlier runs' folders too."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    shared.mkdir(exist_ok=True)
    return shared


def build_once(shared: Path, name: str, build: Callable[[Path], object]) -> Path:
    """``shared/name``, filled by ``build(folder)`` in the first process that asks for it.

    A build that raised leaves no marker, so the next process to ask starts it again from empty."""
    folder = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def bpe_tokenizer(shared_dir: Path) -> Path:
    """A small byte-level BPE (vocab 600, eos <|endoftext|>) trained on real text in a folder."""
    return build_once(shared_dir, "bpe", lambda folder: write_bpe_tokenizer(folder, seed=1))


@pytest.fixture(scope="session")
def qwen3_tokenizer(shared_dir: Path) -> Path:
    from slimtok.demo import write_qwen3_tokenizer

    return build_once(shared_dir, "qwen3", write_qwen3_tokenizer)


@dataclass(frozen=True)
class Tokenized:
    """A private copy of a cached tokenized root: ``work/m/manifest.jsonl`` and ``work/root``."""

    work: Path
    manifest: Path
    root: Path
    #: the cached dataset the manifest lists (shared by every copy: read it, never write it)
    dataset: Path
    #: the ``slimtok tokenize`` run that wrote the root (its exit status and both streams)
    tokenize: subprocess.CompletedProcess


class TokenizedRoot(Protocol):
    def __call__(self, dataset: dict[str, int] | Callable[[Path], object], tokenizer: Path, *flags: object,
                 combine: bool = False, check: bool = True) -> Tokenized: ...


@pytest.fixture(scope="session")
def tokenized_root(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TokenizedRoot:
    """``tokenized_root(dataset, tokenizer, *flags, combine=False, check=True)``: a private copy of
    the root ``slimtok manifest`` + ``slimtok tokenize *flags`` (+ ``slimtok combine --quiet``) make
    of ``dataset``, tokenized once per run for each distinct (dataset, tokenizer, flags).

    ``dataset`` is either :func:`make_dataset`'s keyword arguments or a module-level function that
    writes the dataset into the folder it is given (named in the cache key by its qualified name).
    With ``check`` a failed tokenize fails the test; without, the caller looks at ``.tokenize``."""

    def tokenized(folder: Path, dataset: dict[str, int] | Callable[[Path], object], tokenizer: Path,
                  flags: tuple[str, ...], check: bool) -> None:
        if callable(dataset):
            dataset(folder / "ds")
        else:
            make_dataset(folder / "ds", **dataset)
        manifest = cli.manifest(folder, folder / "ds")
        proc = cli.slimtok("tokenize", "--manifest", manifest, "--output-root", folder / "root", "--tokenizer",
                           tokenizer, *flags, check=check)
        (folder / "tokenize.json").write_bytes(orjson.dumps(
            {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))

    def combined(folder: Path, source: Path) -> None:
        shutil.copytree(source / "m", folder / "m")
        shutil.copytree(source / "root", folder / "root", symlinks=True)
        shutil.copy2(source / "tokenize.json", folder / "tokenize.json")
        cli.slimtok("combine", "--output-root", folder / "root", "--quiet")

    def get(dataset: dict[str, int] | Callable[[Path], object], tokenizer: Path, *flags: object,
            combine: bool = False, check: bool = True) -> Tokenized:
        what = f"{dataset.__module__}.{dataset.__qualname__}" if callable(dataset) else sorted(dataset.items())
        args = tuple(map(str, flags))
        key = hashlib.sha256(repr((what, str(tokenizer), args, check)).encode()).hexdigest()[:16]
        source = build_once(shared_dir, f"tokenized-{key}",
                            lambda folder: tokenized(folder, dataset, tokenizer, args, check))
        if combine:
            source = build_once(shared_dir, f"combined-{key}", lambda folder: combined(folder, source))
        work = tmp_path_factory.mktemp("tokenized")
        shutil.copytree(source / "m", work / "m")
        shutil.copytree(source / "root", work / "root", symlinks=True)
        run = orjson.loads((source / "tokenize.json").read_bytes())
        return Tokenized(work, work / "m" / "manifest.jsonl", work / "root", shared_dir / f"tokenized-{key}" / "ds",
                         subprocess.CompletedProcess(["slimtok", "tokenize"], **run))

    return get


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-protocol server (moto) on 127.0.0.1, one per test process; tests use their own
    buckets. Its request log is kept, for tests that count requests (S3Server.requests)."""
    with S3Server(log=tmp_path_factory.mktemp("s3") / "requests.log") as server:
        yield server


@pytest.fixture(scope="session")
def slurm_cluster(shared_dir: Path) -> None:
    """A one-host Slurm cluster for the tests that submit jobs: the one already up, or one started
    for this run (tools/ci/start-slurm.sh) and stopped when it ends. Skips, saying why, where it
    cannot start."""
    reason = (build_once(shared_dir, "slurm", slurm.start) / "reason").read_text()
    if reason:
        pytest.skip(reason)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the daemons this run started, once every test is done: in the one process of a plain
    run or in xdist's controller, never in a worker (its peers may still be submitting jobs)."""
    if hasattr(session.config, "workerinput"):
        return
    # The controller's basetemp is the parent of its workers' (xdist gives each <basetemp>/popen-gwN).
    shared = session.config._tmp_path_factory.getbasetemp() / "shared"  # type: ignore[attr-defined]
    done = slurm.stop(shared / "slurm")
    if done:
        print(f"\n{done}")
