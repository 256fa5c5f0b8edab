"""Start-up cost (issue 15 target 1): the startup section.

Writes a 1-shard job of one small document and its output roots under ``--work/startup`` (removed
first). Every figure is the CPU of a fresh process (getrusage of waited-for children), as a ratio
to L, a fresh python that only loads tokenizer.json. The first-batch figures come from
tools/bench/first_batch.py, run as a script with -P (nothing of tools/bench on its sys.path).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

from .harness import Table, child_cpu, settings_for

#: Runs `slimtok tokenize` and writes the launcher's and its forked worker's CPU beside the root.
FIRST_BATCH = Path(__file__).with_name("first_batch.py")


def bench_startup(table: Table, work: Path, manifest: Path, tokenizer: Path, backend: str, runs: int) -> None:
    """Issue 15 target 1, each as a ratio to L = CPU of a fresh python that only loads tokenizer.json.

    Each run times L; the two loads a worker can do on the job's own tokenizer copy (tokenizers,
    fastokens), each alone in a fresh python; `slimtok tokenize` of a 1-shard job of one small
    document on a new output root: the whole run, and up to the end of its first encoded batch
    (tools/bench/first_batch.py), once per backend; the launcher's own share, `pin_job` alone in a
    fresh python on another new root; the same command relaunched, all shards done. A worker's
    start is measured both ways a launcher starts one: forked (the first-batch run's worker share)
    and spawned (a fresh python builds the Worker and encodes its first batch).
    """
    from slimtok.manifest import ShardEntry, read_manifest, write_manifest
    from slimtok.reader import ShardReader

    base = work / "startup"
    shutil.rmtree(base, ignore_errors=True)
    one = base / "data" / "train" / "chunk1" / "example_train_0.jsonl"
    one.parent.mkdir(parents=True)
    first = next(iter(read_manifest(manifest)))
    text = next(t for t, _ in ShardReader(first.path).records())
    one.write_bytes(json.dumps({"text": str(text)[:2000]}).encode() + b"\n")
    tiny, _ = write_manifest([ShardEntry(id="train/chunk1/example_train_0", split="train", chunk=1, index=0,
                                         path=str(one), size=one.stat().st_size)], base / "m", base / "data")
    load_code = "import sys; from tokenizers import Tokenizer; Tokenizer.from_file(sys.argv[1])"
    fast_code = "import sys, fastokens; fastokens.Tokenizer.from_file(sys.argv[1])"
    settings_code = "import sys,json;from slimtok.job import TokenizeSettings;d=json.loads(sys.argv[1]);" \
                    "d['splits']=tuple(d['splits']);s=TokenizeSettings(**d);"
    pin_code = settings_code + "from slimtok.job import pin_job;pin_job(s)"
    worker_code = (settings_code + "from slimtok.job import open_job;from slimtok.worker import Worker;"
                   "w=Worker(open_job(s),0);w.encoder.encode(['The first batch.'])")
    # What a user gets by default (--backend auto: the worker starts on the reference and loads
    # fastokens once its encoding has paid for it), and each backend asked for explicitly.
    backends = ["auto", *dict.fromkeys([backend, "tokenizers"])]
    rows: dict[str, list[float]] = {k: [] for k in ("L", "load tokenizers", "load fastokens", "new", "pin",
                                                    "relaunch", *(f"{k} {b}" for k in ("first", "forked", "spawned")
                                                                  for b in backends))}
    if backend == "tokenizers":
        del rows["load fastokens"]

    def tokenize(root: Path, b: str) -> list[str]:
        return ["tokenize", "--manifest", str(tiny), "--output-root", str(root), "--tokenizer", str(tokenizer),
                "--spawn-workers", "1", "--backend", b, "--quiet"]

    for run in range(runs):
        rows["L"].append(child_cpu([sys.executable, "-c", load_code, str(tokenizer / "tokenizer.json")]))
        root = base / f"out-{run}"
        command = [sys.executable, "-m", "slimtok", *tokenize(root, "auto")]
        rows["new"].append(child_cpu(command))
        rows["relaunch"].append(child_cpu(command))
        copy = str(root / "tokenizer" / "tokenizer.json")  # the form a worker loads
        rows["load tokenizers"].append(child_cpu([sys.executable, "-c", load_code, copy]))
        if "load fastokens" in rows:
            rows["load fastokens"].append(child_cpu([sys.executable, "-c", fast_code, copy]))
        wroot = base / f"worker-{run}"
        spec = json.dumps(asdict(settings_for(tiny, wroot, tokenizer, "auto")))
        rows["pin"].append(child_cpu([sys.executable, "-c", pin_code, spec]))
        for b in backends:
            spec = json.dumps(asdict(settings_for(tiny, wroot, tokenizer, b)))
            rows[f"spawned {b}"].append(child_cpu([sys.executable, "-c", worker_code, spec]))
            froot = base / f"first-{b}-{run}"
            child_cpu([sys.executable, "-P", str(FIRST_BATCH), str(froot), *tokenize(froot, b)])
            launcher, worker = _first_batch_cpu(froot)
            rows[f"first {b}"].append(launcher + worker)
            rows[f"forked {b}"].append(worker)
    med = {k: statistics.median(v) for k, v in rows.items()}
    table.note(f"startup: L (fresh python, tokenizers loads tokenizer.json) {med['L']:.2f} CPU-s "
               f"(median of {runs})")
    for key, what, target in (("load tokenizers", "fresh python, tokenizers loads the job's copy", None),
                              ("load fastokens", "fresh python, fastokens loads the job's copy", None),
                              ("new", "`slimtok tokenize` (--backend auto), 1-shard job, new output root, whole run",
                               None),
                              ("pin", "the launcher's share: pin_job alone on a new root", None),
                              *((f"first {b}", f"new job to the end of its first encoded batch (--backend {b})",
                                 2 if b == "auto" else None) for b in backends),
                              ("relaunch", "relaunch, all shards done", 1),
                              *((f"forked {b}", f"one forked worker ({b}): from its fork to its first encoded batch",
                                 1.5) for b in backends),
                              *((f"spawned {b}", f"one spawned worker ({b}): fresh python, Worker() + first encoded "
                                 "batch", 1.5) for b in backends)):
        if key not in med:
            continue
        ratio = med[key] / med["L"]
        verdict = f" (target <= {target}: {'met' if ratio <= target else 'NOT met'})" if target else ""
        table.note(f"startup: {what}: {med[key]:.2f} CPU-s = {ratio:.2f} x L{verdict}; "
                   f"runs {[round(x, 2) for x in rows[key]]}")


def _first_batch_cpu(root: Path) -> tuple[float, float]:
    """(the launcher's CPU until it started its workers, its forked worker's until the end of the
    first encoded batch), as tools/bench/first_batch.py wrote them beside ``root``."""
    mark = Path(f"{root}.first")
    if not mark.exists():
        raise RuntimeError(f"{root}: no first-batch mark; the launcher did not fork its worker (see its log)")
    launcher, worker = json.loads(mark.read_text())
    return launcher, worker


