"""What every peer driver shares: its job, and the report of its own work.

A driver runs as ``python -m tools.bench.peers.<name> <job.json>`` in a venv; the job (a JSON
object) names its inputs, outputs and ``report``, where ``report`` writes ``{"wall", "cpu", "rss"}``:
wall and CPU of the peer's processing (after its imports), CPU of this process and every descendant
it has reaped (the pool workers), and the peak RSS of the largest of them. The driver's own peak is
its VmHWM: its ru_maxrss would start from the bench's RSS at the fork that launched it (Linux keeps
the larger across exec); its children's ru_maxrss is their own.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

from ..harness import proc_status


def load_job() -> dict[str, Any]:
    """The job this driver was given (its first argument)."""
    return json.loads(Path(sys.argv[1]).read_text())


def usage() -> tuple[float, int]:
    """(CPU seconds of this process and its reaped descendants, the largest peak RSS among them)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime, max(proc_status("VmHWM"), c.ru_maxrss * 1024)


def report(job: dict[str, Any], wall: float, cpu0: float) -> None:
    """Write the report of work that took ``wall`` seconds and began at CPU ``cpu0`` (from usage())."""
    cpu, rss = usage()
    Path(job["report"]).write_text(json.dumps({"wall": wall, "cpu": cpu - cpu0, "rss": rss}))
