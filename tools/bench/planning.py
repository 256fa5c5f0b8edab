"""Planning at scale (issue 26, item 3): the planning section.

Over synthetic finished roots (``slimtok.testing.synthetic_root``: 10 documents per shard, sparse
token files, the worker journal a real tokenize leaves) of ``--planning-shards`` sizes, written
under ``--work/planning-<n>`` (kept, so a rerun measures without rebuilding; delete to rebuild):

* ``slimtok status --json`` in a fresh python: the first call (no roll-up: built from the journal
  and a listing of ``done/`` with sizes), then a warm call (the roll-up read back);
* ``slimtok mix SPEC --plan`` in a fresh python: one source, the root's train split, 500 tokens
  per shard asked (a sample of about half its tokens, shuffled by document);
* a worker's start: in a fresh python, the wall seconds from ``Worker(job, 0)`` to its first
  claim, with the job's entries in memory as a forking launcher hands them over (the manifest is
  the launcher's to read and check) and nothing done yet. Its ratio to the same start at 1,000
  shards is the growth the issue bounds (target <= 1.2).

Wall and CPU seconds (the child's user + system) include each command's interpreter start. A row
per size and a growth note follow.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .harness import Table, child_env

#: the size the worker's start is compared with
BASE_SHARDS = 1000


def _root(work: Path, shards: int) -> Path:
    """The synthetic root of ``shards`` shards (built once; ``.complete`` marks a whole one)."""
    from slimtok.testing import synthetic_root

    folder = work / f"planning-{shards}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        synthetic_root(folder / "root", shards, 10, data=True)
        (folder / ".complete").write_text("")
    return folder


def _timed(command: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``command``: the CPU (user + system of the child) says what the
    command costs on a host that other work shares, where its wall also counts the waiting."""
    w0, c0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, capture_output=True, env=child_env())
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.time() - w0, (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)


def status_seconds(root: Path) -> tuple[tuple[float, float], tuple[float, float]]:
    """(first call with no roll-up, warm call) of `slimtok status --json`, (wall, CPU) seconds each."""
    (root / "status" / "done-rollup.json").unlink(missing_ok=True)
    command = [sys.executable, "-m", "slimtok", "status", "--output-root", str(root), "--json"]
    return _timed(command), _timed(command)


def mix_plan_seconds(folder: Path, shards: int) -> tuple[float, float]:
    """`slimtok mix --plan` of one source over the root's train split, (wall, CPU) seconds."""
    spec = folder / "mix.yaml"
    spec.write_text(f"seed: 1\nshuffle: document\nsources:\n  - {{name: s, root: {folder / 'root'}, "
                    f"tokens: {shards * 500}}}\n")
    return _timed([sys.executable, "-m", "slimtok", "mix", str(spec), "--plan"])


def worker_start(folder: Path, shards: int) -> float:
    """Seconds from ``Worker(job, 0)`` to its first claim over a fresh tokenize job of ``shards``
    one-line shards (run in this process; the bench calls it in a fresh python)."""
    from slimtok.job import Job, TokenizeSettings, pin_job
    from slimtok.manifest import ShardEntry, write_manifest
    from slimtok.worker import Worker

    from .corpus import tiny_tokenizer

    base = folder / "worker"
    shutil.rmtree(base, ignore_errors=True)
    (base / "data").mkdir(parents=True)
    shard = base / "data" / "0.jsonl"
    shard.write_bytes(b'{"text": "x"}\n')
    first = ShardEntry(id="train/chunk1/example_train_0", split="train", chunk=1, index=0, path=str(shard),
                       size=shard.stat().st_size)
    manifest, _ = write_manifest([first], base / "m", base / "data")
    tiny_tokenizer(base / "tok")
    settings = TokenizeSettings(dtype="uint32", manifest=str(manifest), output_root=str(base / "out"),
                                tokenizer=str(base / "tok"), backend="tokenizers", splits=("train",))
    job = pin_job(settings)
    # the launcher's entries at this size (the worker never reads or stats the manifest's files)
    entries = [first] + [ShardEntry(id=f"train/chunk1/example_train_{i}", split="train", chunk=1, index=i,
                                    path=str(shard), size=first.size) for i in range(1, shards)]
    job = Job(job.settings, job.root, entries, job.pinned)
    claimed: list[float] = []
    w0 = time.perf_counter()
    worker = Worker(job, 0)

    def first_claim(entry: ShardEntry, claim: object) -> None:
        claimed.append(time.perf_counter() - w0)
        worker.claimer.release(claim)  # type: ignore[arg-type]
        worker.stop.set()  # the loop stops at its next safe point

    worker._process = first_claim  # type: ignore[method-assign]
    worker.run()
    if not claimed:
        raise SystemExit(f"worker start over {shards} shards: no shard was claimed")
    return claimed[0]


def worker_start_seconds(folder: Path, shards: int) -> float:
    """:func:`worker_start` in a fresh python (its imports and tokenizer load excluded: only the start)."""
    out = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                          "from tools.bench.planning import worker_start; "
                          "print(worker_start(Path(sys.argv[1]), int(sys.argv[2])))", str(folder), str(shards)],
                         check=True, capture_output=True, text=True, env=child_env())
    return float(out.stdout.strip().splitlines()[-1])


def bench_planning(table: Table, work: Path, sizes: list[int]) -> list[dict[str, float]]:
    """The section: one row per size (seconds), and the worker start's growth against BASE_SHARDS."""
    base_folder = work / f"planning-worker-{BASE_SHARDS}"
    base_folder.mkdir(parents=True, exist_ok=True)
    base = worker_start_seconds(base_folder, BASE_SHARDS)
    table.note(f"planning: worker start at {BASE_SHARDS:,} shards: {base * 1e3:.1f} ms to its first claim")
    rows = []
    for shards in sizes:
        b0 = time.time()
        folder = _root(work, shards)
        built = time.time() - b0
        first, warm = status_seconds(folder / "root")
        plan = mix_plan_seconds(folder, shards)
        start = worker_start_seconds(folder, shards)
        row = {"shards": shards, "status_first": first[0], "status_first_cpu": first[1], "status_warm": warm[0],
               "status_warm_cpu": warm[1], "mix_plan": plan[0], "mix_plan_cpu": plan[1], "worker_start": start,
               "worker_start_ratio": start / base, "root_built": built}
        rows.append(row)
        table.note(f"planning over {shards:,} shards (wall s / CPU s): status first {first[0]:.2f} / {first[1]:.2f}, "
                   f"warm {warm[0]:.2f} / {warm[1]:.2f} · mix --plan {plan[0]:.1f} / {plan[1]:.1f} · "
                   f"worker start {start * 1e3:.1f} ms "
                   f"({start / base:.2f}x its start at {BASE_SHARDS:,}) · root built in {built:.0f} s")
    print(json.dumps(rows), file=sys.stderr)
    return rows
