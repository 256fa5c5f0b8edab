"""combine's planning at scale (issue 26 item 3): the combine-plan section.

Writes synthetic finished roots (``slimtok.testing.synthetic_root``: job, manifest, done records
and document tables; no token files, which planning never opens) of each --combine-plan-shards
size under ``--work/combine-plan/shards-<n>``, deduplicates each once, and keeps them for the
next run. Each measurement is ``slimtok.combine.plan_combine`` (everything combine does before
its first byte is copied, every refusal included) in a fresh python, as the command runs it:
its wall and CPU inside the child, and the whole child's CPU from wait4 (interpreter start included).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .harness import Table, child_env, growth_note

#: documents per synthetic shard: planning reads no table, so their count does not matter here
DOCS_PER_SHARD = 10
#: the issue's target for combine's planning at 122k shards (SlimPajama's train + holdout), seconds
TARGET_SECONDS = 10.0

_PLAN = """
import json, sys, time
from slimtok.combine import plan_combine
w0, c0 = time.perf_counter(), time.process_time()
planned = plan_combine(sys.argv[1], dedup=sys.argv[2] == "1", log=lambda s: None)
print(json.dumps({"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}))
"""


def _root(work: Path, shards: int) -> Path:
    """The deduplicated synthetic root of ``shards`` shards, made on first use."""
    from slimtok.dedup import run_dedup
    from slimtok.testing import synthetic_root

    folder = work / "combine-plan" / f"shards-{shards}"
    root = folder / "root"
    if not (folder / "ready").exists():
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        synthetic_root(root, shards, DOCS_PER_SHARD)
        run_dedup(root, 256, 1)
        (folder / "ready").write_text("")
    return root


def timed_plan(root: Path, dedup: bool) -> tuple[float, float, float]:
    """(wall and CPU seconds of plan_combine inside a fresh python, CPU seconds of that python)."""
    proc = subprocess.Popen([sys.executable, "-c", _PLAN, str(root), "1" if dedup else "0"], env=child_env(),
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"plan_combine over {root} failed; see its traceback above")
    inside = json.loads(out)
    return inside["wall"], inside["cpu"], usage.ru_utime + usage.ru_stime


def bench_combine_plan(table: Table, work: Path, sizes: list[int], runs: int) -> None:
    """combine's planning, with and without --dedup, at each of ``sizes`` shards: the medians of
    ``runs`` walls and CPUs; a note per size and a growth line per variant (the planning's CPU
    per shard)."""
    per: dict[str, list[float]] = {}
    for shards in sizes:
        w0 = time.time()
        root = _root(work, shards)
        table.note(f"combine-plan: synthetic root of {shards:,} shards ready in {time.time() - w0:.1f} s")
        for dedup in (False, True):
            what = "combine planning" + (" --dedup" if dedup else "")
            wall, cpu, python = (statistics.median(x) for x in
                                 zip(*(timed_plan(root, dedup) for _ in range(runs)), strict=True))
            per.setdefault(what, []).append(cpu / shards)
            verdict = f" (target <= {TARGET_SECONDS:.0f} s: {'met' if wall <= TARGET_SECONDS else 'NOT met'})" \
                if shards >= 122_000 else ""
            table.note(f"combine-plan: {what} over {shards:,} shards: {wall:.2f} s wall, {cpu:.2f} CPU-s "
                       f"({python:.2f} CPU-s for the whole python, start included){verdict}")
    for what, costs in per.items():
        table.note(growth_note(f"{what} CPU per shard", sizes, costs))
