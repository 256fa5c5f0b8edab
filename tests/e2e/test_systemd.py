"""The systemd units in systemd/: they verify, their exit-status policy matches slimtok's exit
codes, and their command lines, expanded from the example environment file, really run
(issue: operations)."""

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO_ROOT
from helpers.cli import slimtok
from helpers.corpus import make_dataset, reference_ids
from slimtok.errors import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_SHARDS_FAILED

pytestmark = pytest.mark.slow  # the units' command lines run for real

UNITS = REPO_ROOT / "systemd"
#: Keys systemd < 254 does not know; the unit documents that they are then ignored.
NEWER_KEYS = ("RestartSteps", "RestartMaxDelaySec")


def _unit(name: str) -> dict[str, list[str]]:
    """``key -> values`` of a unit file, continuation lines joined (sections merged: keys are unique)."""
    text = re.sub(r"\\\n\s*", " ", (UNITS / name).read_text())
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def _env_file(overrides: dict[str, str]) -> dict[str, str]:
    env = {}
    for line in (UNITS / "slimtok-worker.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value
    return {**env, **overrides}


def _command(exec_start: str, env: dict[str, str], instance: str) -> list[str]:
    """ExecStart as systemd expands it: %i, ``${VAR}`` as one word, ``$VAR`` split on whitespace."""
    words = []
    for word in shlex.split(exec_start.replace("%i", instance)):
        if re.fullmatch(r"\$\w+", word):
            words.extend(env.get(word[1:], "").split())
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word))
    return words


def test_units_verify():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd); .ci/run installs it")
    version = int(re.search(r"systemd (\d+)", subprocess.run([analyze, "--version"], capture_output=True,
                                                              text=True).stdout).group(1))
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"slimtok-units-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    try:
        for f in UNITS.glob("slimtok-*"):
            shutil.copy(f, folder)
        shutil.copy(UNITS / "slimtok-worker@.service", folder / "slimtok-worker@3.service")  # an instance
        names = ["slimtok-worker@3.service", "slimtok-status.service", "slimtok-status.timer"]
        proc = subprocess.run([analyze, "verify", "--man=no", *(str(folder / n) for n in names)],
                              capture_output=True, text=True)
    finally:
        shutil.rmtree(folder)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if version < 254:
        complaints = [c for c in complaints if not re.search(rf"Unknown key '({'|'.join(NEWER_KEYS)})'", c)]
    assert proc.returncode == 0 and complaints == [], proc.stdout + proc.stderr


def test_worker_unit_exit_policy_matches_slimtok():
    unit = _unit("slimtok-worker@.service")
    assert unit["Restart"] == ["on-failure"]
    assert str(EXIT_INTERRUPTED) in unit["SuccessExitStatus"][0].split()  # systemctl stop is a clean exit
    prevent = unit["RestartPreventExitStatus"][0].split()
    assert str(EXIT_SHARDS_FAILED) in prevent and str(EXIT_FATAL) not in prevent
    assert int(unit["LimitNOFILE"][0]) >= 4096 and int(unit["Nice"][0]) > 0
    assert unit["EnvironmentFile"][0] == "/etc/slimtok/worker.env"


def test_unit_command_lines_run_from_the_example_env(tmp_path, bpe_tokenizer):
    ds = make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=8, holdout_docs=3)
    slimtok("manifest", "--dataset-dir", ds, "--output-dir", tmp_path / "m")
    manifest = tmp_path / "m" / "manifest.jsonl"
    prom = tmp_path / "textfile" / "slimtok.prom"
    prom.parent.mkdir()
    env = _env_file({"PATH": os.environ["PATH"], "SLIMTOK_MANIFEST": str(manifest),
                     "SLIMTOK_OUTPUT_ROOT": str(tmp_path / "out"), "SLIMTOK_TOKENIZER": str(bpe_tokenizer),
                     "SLIMTOK_PROCESS_COUNT": "1", "SLIMTOK_SPAWN_WORKERS": "1",
                     "SLIMTOK_EXTRA_ARGS": "--splits train --stale-after 60", "SLIMTOK_PROMETHEUS_FILE": str(prom)})
    worker = _command(_unit("slimtok-worker@.service")["ExecStart"][0], env, "0")
    proc = subprocess.run(worker, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "INFO" not in proc.stderr and "claimed" not in proc.stderr  # the journal: no per-shard chatter
    slimtok("combine", "--output-root", tmp_path / "out", "--splits", "train")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    got = np.fromfile(tmp_path / "out" / "train.bin", dtype=meta["dtype"])
    assert np.array_equal(got, reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train"))
    status = _command(_unit("slimtok-status.service")["ExecStart"][0], env, "")
    subprocess.run(status, env=env, capture_output=True, check=True, timeout=120)
    text = prom.read_text()
    assert re.search(r'^slimtok_shards\{root="[^"]+",split="train",state="done"\} 2$', text, re.M)
    assert re.search(r'^slimtok_shards\{root="[^"]+",split="validation",state="pending"\} 1$', text, re.M)
