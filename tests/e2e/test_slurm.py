"""tools/slurm/*.sbatch against a real one-host Slurm cluster (the ``slurm_cluster`` fixture, tests/conftest.py):
two tasks, ranks from SLURM_PROCID, combined output identical to a local run (issue: operations)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT
from helpers.cli import slimtok
from helpers.corpus import reference_ids
from slimtok.protocol import SPLIT_FILES

pytestmark = pytest.mark.slow  # jobs submitted to a real Slurm cluster

TOOLS = REPO_ROOT / "tools" / "slurm"


@pytest.fixture(scope="module")
def job(tokenized_root, bpe_tokenizer):
    """A small dataset, its manifest, and a local single-process run combined as the reference."""
    run = tokenized_root({"train_shards": 5, "docs_per_shard": 12, "holdout_docs": 4}, bpe_tokenizer,
                         "--spawn-workers", "1", "--quiet", combine=True)
    return run.work, run.manifest, run.root


def _sbatch(script: str, tmp: Path, env: dict[str, str], *options: str) -> subprocess.CompletedProcess:
    # --wait returns when the job ends, with its exit code; the job inherits this environment.
    return subprocess.run(["sbatch", "--wait", "--time=10", f"--chdir={tmp}", *options, str(TOOLS / script)],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


def _env(manifest: Path, root: Path, tokenizer: Path) -> dict[str, str]:
    return {"SLIMTOK": f"{sys.executable} -m slimtok", "SLIMTOK_MANIFEST": str(manifest),
            "SLIMTOK_OUTPUT_ROOT": str(root), "SLIMTOK_TOKENIZER": str(tokenizer),
            "SLIMTOK_EXTRA_ARGS": "--spawn-workers 1 --stale-after 60"}


def _assert_same_as_local(root: Path, local: Path, manifest: Path, tokenizer: Path) -> None:
    slimtok("combine", "--output-root", root)
    for name in SPLIT_FILES.values():
        assert (root / name).read_bytes() == (local / name).read_bytes(), name
    expected = reference_ids(manifest, tokenizer / "tokenizer.json", 0, "train")
    assert (root / "train.bin").stat().st_size == 2 * len(expected)  # --dtype auto: uint16 for this vocabulary


def test_sbatch_two_tasks_equal_a_local_run(slurm_cluster, job, bpe_tokenizer):
    tmp, manifest, local = job
    root = tmp / "srun"
    out = tmp / "srun-%j.out"
    # one node here, so both tasks share it; on a cluster the script's --ntasks-per-node=1 holds
    proc = _sbatch("tokenize.sbatch", tmp, _env(manifest, root, bpe_tokenizer), "--nodes=1", "--ntasks=2",
                   "--ntasks-per-node=2", "--exclusive=user", f"--output={out}")
    log = "".join(p.read_text() for p in tmp.glob("srun-*.out"))
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    # each task found its place from Slurm's variables, not from flags
    assert "process 0 of 2 (SLURM_PROCID/SLURM_NTASKS)" in log, log
    assert "process 1 of 2 (SLURM_PROCID/SLURM_NTASKS)" in log, log
    assert {p.name.split("-p")[-1].split("-")[0] for p in (root / "logs").glob("*.log")} == {"0", "1"}
    _assert_same_as_local(root, local, manifest, bpe_tokenizer)


def test_array_job_one_index_alone_then_the_whole_array(slurm_cluster, job, bpe_tokenizer):
    tmp, manifest, local = job
    root = tmp / "array"
    env = {**_env(manifest, root, bpe_tokenizer), "SLIMTOK_PROCESS_COUNT": "3",
           "SLIMTOK_EXTRA_ARGS": "--spawn-workers 1 --stale-after 60 --splits train"}
    # index 1 alone first (as if 0 and 2 had crashed): it finishes the whole split by helping
    first = _sbatch("tokenize-array.sbatch", tmp, env, "--array=1", f"--output={tmp}/array-%A_%a.out")
    assert first.returncode == 0, first.stdout + first.stderr
    log = "".join(p.read_text() for p in tmp.glob("array-*_1.out"))
    assert "process 1 of 3 (flags)" in log, log
    # then the full array with every split; the already-done shards are skipped
    rest = _sbatch("tokenize-array.sbatch", tmp, {**env, "SLIMTOK_EXTRA_ARGS": "--spawn-workers 1"},
                   "--array=0-2", f"--output={tmp}/array-%A_%a.out")
    assert rest.returncode == 0, rest.stdout + rest.stderr
    _assert_same_as_local(root, local, manifest, bpe_tokenizer)
