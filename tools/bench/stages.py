"""Claims, status and the stages' cost growth: the claims, growth and stages sections.

Writes synthetic manifests of one-line shards and their output roots under ``--work/claims``,
and synthetic finished roots (``slimtok.testing.synthetic_root``) under ``--work/stages-<n>``,
removed after each size. A step whose per-shard cost grows more than 1.5x is flagged super-linear.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .corpus import tiny_tokenizer
from .harness import Table, child, child_env, cpu_now, growth_note, settings_for

if TYPE_CHECKING:  # slimtok is imported inside the sections (the bench's start-up stays small)
    from slimtok.protocol import OutputRoot


def bench_claims(table: Table, work: Path, shards: int, workers: int) -> tuple[Path, float]:
    """No-op tokenization of ``shards`` one-line shards by ``workers`` processes; (output root left, CPU-s).

    Per shard: the wall seconds inside a worker from claim to release (claim, read, commit, done
    record), and the CPU of all worker processes (start-up included) divided by the shard count;
    with more processes than cores the wall figure is mostly waiting for a core.
    """
    from dataclasses import asdict

    from slimtok.job import pin_job
    from slimtok.manifest import ShardEntry, write_manifest

    base = work / "claims"
    shutil.rmtree(base, ignore_errors=True)
    (base / "data").mkdir(parents=True)
    entries = []
    for i in range(shards):  # one file per shard: a manifest naming one file twice is refused
        path = base / "data" / f"{i}.jsonl"
        path.write_bytes(b'{"text": "x"}\n')
        entries.append(ShardEntry(id=f"train/chunk{1 + i // 6000}/example_train_{i}", split="train",
                                  chunk=1 + i // 6000, index=i, path=str(path), size=path.stat().st_size))
    manifest, _ = write_manifest(entries, base / "m", base / "data")
    tok = base / "tok"
    tiny_tokenizer(tok)
    root = base / "out"
    settings = settings_for(manifest, root, tok, "tokenizers", workers)
    pin_job(settings)
    spec = json.dumps(asdict(settings))
    w0 = time.time()
    env = child_env()
    procs = [subprocess.Popen(child("noop-worker", spec, str(i), str(base / f"t{i}.json")), env=env)
             for i in range(workers)]
    cpu = 0.0
    for i, p in enumerate(procs):
        _, status, usage = os.wait4(p.pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"no-op worker {i} failed; see its traceback above")
    wall = time.time() - w0
    per = [x for i in range(workers) for x in json.loads((base / f"t{i}.json").read_text())]
    done = sum(1 for _ in (root / "done").rglob("*.json"))
    table.note(f"claims: {shards} shards, {workers} processes: {done} done in {wall:.1f} s wall, "
                       f"{cpu:.1f} CPU-s in all = {cpu / shards * 1e3:.2f} ms CPU per shard; per shard "
                       f"claim+bookkeeping wall median {statistics.median(per) * 1e3:.2f} ms, "
                       f"p90 {statistics.quantiles(per, n=10)[-1] * 1e3:.2f} ms ({len(per)} timed)")
    return root, cpu


def bench_status(table: Table, root: Path, shards: int) -> float:
    """`slimtok status` over an output root of ``shards`` done shards: first with no roll-up cache, then
    warm; returns the cold wall seconds."""
    seconds = []
    for attempt in ("cold", "warm"):
        w0 = time.time()
        subprocess.run([sys.executable, "-m", "slimtok", "status", "--output-root", str(root)], check=True,
                       capture_output=True)
        seconds.append(time.time() - w0)
        table.note(f"status over {shards} shards ({attempt} roll-up): {seconds[-1]:.2f} s "
                           "including interpreter start")
    return seconds[0]


def bench_growth(table: Table, work: Path, sizes: list[int], workers: int) -> None:
    """Issue 15 target 4: claims and cold `slimtok status` per shard at each manifest size; a step
    whose per-shard cost grows more than 1.5x is flagged super-linear."""
    costs: dict[str, list[float]] = {"claims CPU": [], "status wall": []}
    for shards in sizes:
        root, cpu = bench_claims(table, work, shards, workers)
        costs["claims CPU"].append(cpu / shards)
        costs["status wall"].append(bench_status(table, root, shards) / shards)
    for what, per in costs.items():
        table.note(growth_note(f"{what} per shard ({workers} workers)", sizes, per))


def bench_stage_growth(table: Table, work: Path, sizes: list[int], stages: tuple[str, ...]) -> None:
    """Issue 15 target 4 / issue 18: per-shard cost of combine, dedup (planning; the whole run, i.e.
    claiming and doing every unit) and mix planning over synthetic roots of ``sizes`` shards of
    10 documents; a step whose per-shard cost grows more than 1.5x is flagged super-linear."""
    from slimtok.testing import synthetic_root

    costs: dict[str, list[float]] = {}
    for shards in sizes:
        folder = work / f"stages-{shards}"
        shutil.rmtree(folder, ignore_errors=True)
        root = synthetic_root(folder / "root", shards, 10, data="combine" in stages)
        for what, run in _stage_runs(folder, root, shards, stages):
            c0, w0 = cpu_now(), time.time()
            run()
            wall, cpu = time.time() - w0, cpu_now() - c0
            costs.setdefault(what, []).append(cpu / shards)
            table.note(f"stages: {what} over {shards:,} shards: {wall:.2f} s wall, {cpu:.2f} CPU-s")
        shutil.rmtree(folder)
    for what, per in costs.items():
        table.note(growth_note(f"{what} CPU per shard", sizes, per))


def _stage_runs(folder: Path, root: OutputRoot, shards: int,
                stages: tuple[str, ...]) -> list[tuple[str, Callable[[], object]]]:
    """(row, run) for each of ``stages`` over the synthetic ``root`` of ``shards`` shards in ``folder``."""
    from slimtok.combine import combine
    from slimtok.dedup import run_dedup
    from slimtok.dedup.plan import make_plan, read_inputs
    from slimtok.mix import load_spec, mix

    timed: list[tuple[str, Callable[[], object]]] = []
    if "combine" in stages:
        timed.append(("combine (sha256 verify)", lambda: combine(root.root, verify=True, log=lambda s: None)))
    if "dedup" in stages:
        timed += [("dedup planning", lambda: make_plan(read_inputs(root), 256)),
                  ("dedup run (plan, claim and do every unit)", lambda: run_dedup(root.root, 256, 1))]
    if "mix" in stages:
        spec = folder / "mix.yaml"
        spec.write_text(f"seed: 1\nshuffle: document\nsources:\n  - {{name: s, root: {root.root}, "
                        f"tokens: {shards * 500}}}\n")
        timed.append(("mix planning", lambda: mix(load_spec(spec), None)))
    return timed


