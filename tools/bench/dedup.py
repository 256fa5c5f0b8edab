"""Dedup's memory and cost (issue 18): the dedup section.

Writes synthetic finished roots (``slimtok.testing.synthetic_root``) under ``--work/dedup-<docs>``,
removed after each size, and a root of the bench corpus's three splits (``out-dedup-all``) that it
dedups again and again; a bucket task's peak RSS is measured in a child (``bucket-task``).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .corpus import tokenized_root
from .harness import Table, child, child_cpu, child_env, cpu_now, tree_bytes


def fsync_seconds(folder: Path, n: int = 20) -> float:
    """Median seconds of one small write + fsync in ``folder`` (the disk dedup's units write to)."""
    path, times = folder / "bench-fsync", []
    with open(path, "wb") as f:
        for _ in range(n):
            f.write(b"x" * 512)
            t0 = time.perf_counter()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t0)
    path.unlink()
    return statistics.median(times)


def bench_dedup_scale(table: Table, work: Path, sizes: list[int], docs_per_shard: int, buckets: int | None) -> None:
    """Issue 18: a bucket task's peak RSS at jobs of ``sizes`` documents (synthetic tables), each
    measured in a child process on three buckets; the target is <= 64 MB per 100 M documents."""
    from slimtok.dedup import run_dedup
    from slimtok.testing import synthetic_root

    for docs in sizes:
        folder = work / f"dedup-{docs}"
        shutil.rmtree(folder, ignore_errors=True)
        w0 = time.time()
        root = synthetic_root(folder, max(1, docs // docs_per_shard), docs_per_shard)
        built = time.time() - w0
        c0, w0 = cpu_now(), time.time()
        job = run_dedup(root.root, buckets, 1)
        wall, cpu = time.time() - w0, cpu_now() - c0
        count = job.buckets  # the pinned count (--buckets auto picks it from the job's size)
        grown = []
        for b in dict.fromkeys((0, count // 2, count - 1)):
            report = folder / f"bucket-{b}.json"
            subprocess.run(child("bucket-task", str(folder), str(b), str(report)), check=True, env=child_env())
            grown.append(json.loads(report.read_text()))
        worst = max(grown, key=lambda g: g["grown"])
        task = worst["grown"]
        budget = 64e6 * job.documents / 100e6
        disk = tree_bytes(folder)
        table.note(
            f"dedup scale: {job.documents:,} docs in {job.shards:,} shards ({docs_per_shard:,}/shard), {count} "
            f"buckets: built {built:.0f} s, dedup 1 worker {wall:.1f} s wall {cpu:.1f} CPU-s "
            f"({cpu / job.documents * 1e9:.0f} ns CPU/doc), {disk / 1e9:.2f} GB on disk; bucket task (worst of 3, "
            f"{worst['rows']:,} rows) adds {task / 1e6:.1f} MB peak RSS over the worker's "
            f"{worst['base'] / 1e6:.0f} MB (process peak {worst['peak'] / 1e6:.0f} MB; the worker's first bucket "
            f"task adds {max(g['first'] for g in grown) / 1e6:.1f} MB) = "
            f"{task / job.documents * 100e6 / 1e6:.1f} MB per 100 M docs (target <= 64: "
            f"{'met' if task <= budget else 'NOT met'})")
        shutil.rmtree(folder)  # 48 bytes a document of tables and scatter files


def bench_dedup_cost(table: Table, work: Path, corpus: Path, tokenizer: Path, backend: str, buckets: int) -> None:
    """Issue 18: dedup's CPU against tokenize's on the bench corpus (all splits), same run, with
    ``buckets`` and with 4 buckets (fewer units: the per-unit fixed cost is what a small job pays);
    and how much of dedup's wall its fsyncs (4 per unit) can explain."""
    from slimtok.dedup import run_dedup
    from slimtok.dedup.plan import unit_count
    from slimtok.protocol import DedupPlan, OutputRoot, read_record

    root, tok_cpu = tokenized_root(work, "dedup-all", corpus, tokenizer, backend,
                                   splits=("train", "validation", "test"),
                                   fresh=True)  # tokenize is timed in this run
    fsync = fsync_seconds(root)
    for b in dict.fromkeys((None, buckets, 4)):  # None: --buckets auto
        shutil.rmtree(root / "dedup", ignore_errors=True)
        c0, w0 = time.process_time(), time.time()  # not os.times: its 10 ms ticks are too coarse here
        job = run_dedup(root, b, 1)
        wall, cpu = time.time() - w0, time.process_time() - c0
        plan = read_record(OutputRoot(root).dedup_plan, DedupPlan)
        assert plan is not None
        units = sum(unit_count(plan, phase) for phase in ("scatter", "bucket", "gather"))
        label = f"{plan.buckets} buckets" + (" (auto)" if b is None else "")
        table.notes += [
            f"dedup cost, {label}: bench corpus {job.documents:,} docs in {job.shards} shards; tokenize 1 worker "
            f"{tok_cpu:.2f} CPU-s (Worker.run); dedup in-process {cpu:.3f} CPU-s ({wall:.2f} s wall, {units} units, "
            f"{cpu / units * 1e3:.2f} ms CPU per unit) = {cpu / tok_cpu:.1%} of tokenize (target <= 5%: "
            f"{'met' if cpu <= 0.05 * tok_cpu else 'NOT met'})",
            f"dedup fsyncs, {label}: {units} units x 4 fsyncs x {fsync * 1e3:.2f} ms (median small fsync on this "
            f"disk) = {units * 4 * fsync:.2f} s of the {wall:.2f} s wall ({units * 4 * fsync / wall:.0%})"]
    shutil.rmtree(root / "dedup")
    command = child_cpu([sys.executable, "-m", "slimtok", "dedup", "--output-root", str(root), "--spawn-workers", "1",
                         "--quiet"])
    table.note(f"dedup cost: the `slimtok dedup --spawn-workers 1` command (--buckets auto) with its "
                       f"interpreter: {command:.2f} CPU-s = {command / tok_cpu:.1%} of tokenize")


