"""The one-host Slurm cluster of the Slurm tests: use the one that is up, or start one with
tools/ci/start-slurm.sh and stop, at the end of the run, exactly the daemons that start wrote down.

Writes ``<shared>/slurm/`` (see tests/conftest.py): ``reason`` (empty: the cluster is up, else why
the tests skip) and ``started`` (one ``<daemon> <pid>`` line per daemon this run started; absent
when the cluster was already up, so nothing of it is ever stopped here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from helpers import REPO_ROOT

START = REPO_ROOT / "tools" / "ci" / "start-slurm.sh"
STOP = REPO_ROOT / "tools" / "ci" / "stop-slurm.sh"


def idle_node() -> bool:
    """Whether the cluster answers with a node that can take a job."""
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and re.search(r"^(idle|mixed)", proc.stdout, re.M) is not None


def start(folder: Path) -> None:
    """Bring a cluster up for this run unless one is; writes ``folder/reason`` (and ``started``)."""
    if idle_node():
        reason = ""
    elif shutil.which("sbatch") is None:
        reason = ("Slurm is not installed (Debian slurm-client); tools/ci/install-test-deps.sh installs it as "
                  "root on Debian")
    else:
        proc = subprocess.run(["bash", str(START), "--record", str(folder / "started")], capture_output=True,
                              text=True, timeout=180)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        reason = "" if proc.returncode == 0 and idle_node() else (
            f"no idle Slurm node: {START.relative_to(REPO_ROOT)} failed ({' | '.join(tail)}); it starts munged, "
            "slurmctld and slurmd as root")
    (folder / "reason").write_text(reason)


def stop(folder: Path) -> str:
    """Stop the daemons ``start`` recorded in ``folder`` (none if it started none); what was done."""
    started = folder / "started"
    if not started.exists():
        return ""
    proc = subprocess.run(["bash", str(STOP), str(started)], capture_output=True, text=True, timeout=120)
    started.unlink()
    return (proc.stdout + proc.stderr).strip()
