"""Run a dedup: pin the plan, let local worker processes claim units phase by phase, record the job.

Every unit is claimed like a shard (``slimtok.claims``: lock files, staleness, steal), under the
claim id ``dedup/<phase>/<k>``. A worker takes the units of a phase in its preference order, then
waits for the units others hold (taking over stale ones) before it starts the next phase, since a
bucket needs every scatter unit and a gather unit every bucket. Finished units are never redone.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..claims import Claim, Claimer, current_holder, held_by
from ..errors import EXIT_FATAL, EXIT_OK, DedupError, OutputError, SlimtokError, Stopped
from ..executor import REPLACEMENTS_PER_WORKER, HeldClaims, NodeRun, Revive, refresh_interval, run_units, start_method
from ..progress import REFRESH, ProgressFactory
from ..protocol import (
    DEDUP_PHASES,
    DedupJob,
    DedupPlan,
    DedupUnitRecord,
    OutputRoot,
    create_exclusive,
    dedup_unit,
    hostname,
    read_record,
    require_kind,
    storage_for,
    write_atomic,
)
from ..publish import full_disk_is_fatal
from .plan import UNIT_SHARDS, Inputs, make_plan, read_inputs, unit_count, unit_ranks
from .units import bucket_rows, find_drops, gather_drops, reason_counts, scatter_rows


def pin_plan(root: OutputRoot, plan: DedupPlan, auto: bool = False) -> DedupPlan:
    """Create ``dedup/plan.json`` once; a relaunch must ask for the same plan on the same inputs
    (``auto``: the bucket count was not asked for, so the pinned one is taken)."""
    path = root.dedup_plan
    create_exclusive(path, plan.to_json())
    pinned = read_record(path, DedupPlan)
    if pinned is None:
        raise DedupError("unreadable dedup plan", path, "delete the dedup/ folder and run `slimtok dedup` again")
    if auto:
        plan = dataclasses.replace(plan, buckets=pinned.buckets)
    if pinned != plan:
        what = ("the shards changed since this dedup started (done records or tables differ)"
                if pinned.fingerprint != plan.fingerprint else
                f"this dedup was planned with --buckets {pinned.buckets} and units of {pinned.unit_shards} shards")
        raise DedupError(what, path, f"relaunch with --buckets {pinned.buckets}, or delete {path.parent} "
                         "to deduplicate the current shards from scratch")
    return pinned


class DedupWorker:
    """One worker process's loop over the units of every phase."""

    def __init__(self, root: OutputRoot, plan: DedupPlan, inputs: Inputs, stale_after: float,
                 process_index: int, process_count: int, worker: int, workers: int):
        self.root, self.plan, self.inputs = root, plan, inputs
        self.grid = (process_index, process_count, worker, workers)
        self.stale_after = stale_after
        self.claimer = Claimer(root, current_holder(process_index, worker), stale_after)

    def run(self) -> None:
        for phase in DEDUP_PHASES:
            self._phase(phase)

    def _phase(self, phase: str) -> None:
        """Every unit of ``phase``, until all are done (by anyone): the next phase needs every one."""
        run_units(self.claimer, range(unit_count(self.plan, phase)), self.grid, functools.partial(dedup_unit, phase),
                  lambda k: self.root.storage.exists(self.root.dedup_unit_done(phase, k)),
                  functools.partial(self._work, phase))

    def _work(self, phase: str, k: int, claim: Claim) -> None:
        """Compute and publish one unit under ``claim``, kept fresh meanwhile, then release it."""
        try:
            with HeldClaims(self.claimer, refresh_interval(self.stale_after)) as held:
                held.hold(claim)
                self._publish(phase, k, claim, *self._compute(phase, k))
        finally:
            self.claimer.release(claim)

    def _compute(self, phase: str, k: int) -> tuple[np.ndarray, list[int], dict[str, int]]:
        if phase == "scatter":
            rows, offsets = scatter_rows(self.root, self.plan, self.inputs, k)
            return rows, offsets, {}
        drops = (find_drops(bucket_rows(self.root, self.plan, k)) if phase == "bucket"
                 else gather_drops(self.root, self.plan, self.inputs, k))
        return drops, [], reason_counts(drops)

    def _publish(self, phase: str, k: int, claim: Claim, data: np.ndarray, offsets: list[int],
                 counts: dict[str, int]) -> None:
        """Data file into place, then the done record, only while the claim is still ours."""
        path = self.root.dedup_unit_data(phase, k)
        payload = data.tobytes()
        write_atomic(path, payload)
        if not self.claimer.holds(claim):
            return  # taken over: the new holder writes the same bytes and the record
        record = DedupUnitRecord(dedup_unit(phase, k), self.root.relative(path), len(data), len(payload),
                                 hashlib.sha256(payload).hexdigest(), hostname(), time.time(), offsets, counts)
        create_exclusive(self.root.dedup_unit_done(phase, k), record.to_json())


def finish(root: OutputRoot, plan: DedupPlan) -> DedupJob:
    """Record ``dedup/job.json`` from the gather records (once; every caller gets the same record)."""
    dropped: dict[str, int] = {}
    for k in range(unit_count(plan, "gather")):
        record = read_record(root.dedup_unit_done("gather", k), DedupUnitRecord)
        if record is None:
            raise DedupError(f"gather unit {k} is not finished", root.dedup_unit_done("gather", k),
                             f"run `slimtok dedup --output-root {root.root}` again to finish it")
        for name, n in record.counts.items():
            dropped[name] = dropped.get(name, 0) + n
    job = DedupJob(plan.fingerprint, plan.shards, plan.documents, plan.buckets, plan.unit_shards, dropped,
                   time.time())
    create_exclusive(root.dedup_job, job.to_json())
    written = read_record(root.dedup_job, DedupJob)
    assert written is not None
    return written


class DedupProgress:
    """Shows a running dedup on a ProgressDisplay: a thread lists the phases' done records every
    REFRESH seconds (they are the truth whichever process did the unit). Units count across all
    phases; each phase weighs the job's table bytes once (a scatter or gather unit its shards'
    tables, a bucket 1/buckets of them), so MB/s and the ETA span the whole run; the documents
    shown are those the current phase (named in the label) has covered."""

    def __init__(self, root: OutputRoot, plan: DedupPlan, inputs: Inputs,
                 progress: ProgressFactory):
        self.root, self.plan = root, plan
        ranges = [unit_ranks(plan, k) for k in range(unit_count(plan, "scatter"))]
        spans = [(sum(inputs.records[r].table_bytes for r in rs), sum(inputs.records[r].documents for r in rs))
                 for rs in ranges]
        total = (sum(b for b, _ in spans), inputs.documents())
        per_bucket = (total[0] / plan.buckets, total[1] / plan.buckets)
        # (bytes, documents) per unit of each phase; a bucket's are a fractional share
        self.weights: dict[str, Sequence[tuple[float, float]]] = {
            "scatter": spans, "bucket": [per_bucket] * plan.buckets, "gather": spans}
        self.shown = progress(sum(unit_count(plan, p) for p in DEDUP_PHASES), len(DEDUP_PHASES) * total[0])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="dedup-progress", daemon=True)

    def poll(self) -> None:
        done = {phase: [int(n) for n in _names(self.root.dedup_unit_done(phase, 0).parent, ".json") if n.isdigit()]
                for phase in DEDUP_PHASES}
        current = next((p for p in DEDUP_PHASES if len(done[p]) < unit_count(self.plan, p)), DEDUP_PHASES[-1])
        nbytes = sum(self.weights[phase][k][0] for phase, ks in done.items() for k in ks)
        self.shown.label = f"dedup {current}"
        self.shown.update(sum(map(len, done.values())), round(sum(self.weights[current][k][1] for k in done[current])),
                          None, round(nbytes))

    def _loop(self) -> None:
        while not self.stop.wait(REFRESH):
            self.poll()

    def __enter__(self) -> DedupProgress:
        self.poll()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.poll()
        self.shown.close()


#: The fix of a dedup that could not write: what a relaunch keeps.
_RELAUNCH_KEEPS = "free space there and run `slimtok dedup --output-root {root}` again: finished units are kept"


def _work_units(root: str, plan: DedupPlan, inputs: Inputs, stale_after: float,
                grid: tuple[int, int, int, int]) -> int:
    """One dedup worker process's run; its exit status (an error is printed: the launcher says only
    how many workers failed)."""
    try:
        with full_disk_is_fatal("writing dedup units", Path(root), _RELAUNCH_KEEPS.format(root=root)):
            DedupWorker(OutputRoot(root), plan, inputs, stale_after, *grid).run()
    except SlimtokError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    return EXIT_OK


def run_dedup(output_root: str | Path, buckets: int | None = None, workers: int = 1, process_index: int = 0,
              process_count: int = 1, stale_after: float = 300.0, unit_shards: int = UNIT_SHARDS,
              progress: ProgressFactory | None = None) -> DedupJob:
    """Deduplicate a tokenized output root with ``workers`` local processes; returns the job record.

    Resumes whatever a killed run finished; every process of a grid returns the same record.
    ``progress(total_units, total_bytes)`` makes the display to show the run on (None: none).
    Raises Stopped when a signal stopped the workers, OutputError when the root cannot be written.
    """
    root = OutputRoot(output_root)
    require_kind(root, "dedup")
    try:
        inputs = read_inputs(root)
        plan = pin_plan(root, make_plan(inputs, buckets, unit_shards), auto=buckets is None)
        if progress is None:
            return _run_workers(root, plan, inputs, workers, process_index, process_count, stale_after)
        with DedupProgress(root, plan, inputs, progress):
            return _run_workers(root, plan, inputs, workers, process_index, process_count, stale_after)
    except OSError as exc:
        raise OutputError(f"cannot write under it: {exc}", root.root,
                          "fix the cause and relaunch: finished units are kept") from exc


def _run_workers(root: OutputRoot, plan: DedupPlan, inputs: Inputs, workers: int, process_index: int,
                 process_count: int, stale_after: float) -> DedupJob:
    if workers == 1:
        with full_disk_is_fatal("writing dedup units", root.root, _RELAUNCH_KEEPS.format(root=root.root)):
            DedupWorker(root, plan, inputs, stale_after, process_index, process_count, 0, 1).run()
        return finish(root, plan)
    def args(w: int, _generation: int) -> tuple[object, ...]:
        return str(root.root), plan, inputs, stale_after, (process_index, process_count, w, workers)

    # A killed worker is replaced in its slot (the same grid place); a unit holds no worker state.
    revive = Revive(args=args, held=lambda _slot, _generation, pid: held_by(root, pid),
                    log=lambda line: print(line, file=sys.stderr), limit=REPLACEMENTS_PER_WORKER * workers)
    # A unit is short and atomic: on a signal its workers are killed, nothing is lost.
    with NodeRun("slimtok-dedup", forward=signal.SIGKILL) as run:
        run.start(start_method(), _work_units, [args(w, 0) for w in range(workers)])
        codes = run.wait(revive=revive)
    if run.signalled:
        raise Stopped("stopped on a signal; finished units are kept", root.root,
                      f"run `slimtok dedup --output-root {root.root}` again to resume")
    if all(root.storage.exists(root.dedup_unit_done("gather", k)) for k in range(unit_count(plan, "gather"))):
        codes = [c for c in codes if c is not None and c >= 0]  # the last phase done: a killed worker cost nothing
    failed = [c for c in codes if c != EXIT_OK]
    if EXIT_FATAL in failed:  # a worker could not write (its line is above): the root's problem, as in one process
        raise OutputError(f"{failed.count(EXIT_FATAL)} dedup worker(s) could not write under it", root.root,
                          _RELAUNCH_KEEPS.format(root=root.root))
    if failed:
        raise DedupError(f"{len(failed)} dedup worker(s) exited with status {failed}", root.root,
                         f"see the messages above, then run `slimtok dedup --output-root {root.root}` "
                         "again: finished units are kept")
    return finish(root, plan)


def dedup_status(output_root: str | Path) -> dict[str, object]:
    """Units done / held / pending per phase, and whether the dedup is finished (for ``slimtok status``)."""
    root = OutputRoot(output_root)
    plan = read_record(root.dedup_plan, DedupPlan)
    if plan is None:
        return {"started": False, "finished": False, "phases": {}}
    phases = {}
    for phase in DEDUP_PHASES:
        done = _names(root.dedup_unit_done(phase, 0).parent, ".json")
        held = _names(root.lock(dedup_unit(phase, 0)).parent, ".lock") - done
        total = unit_count(plan, phase)
        phases[phase] = {"units": total, "done": len(done), "held": len(held),
                         "pending": total - len(done) - len(held)}
    return {"started": True, "finished": root.storage.exists(root.dedup_job), "phases": phases}


def _names(folder: Path, suffix: str) -> set[str]:
    return {name[:-len(suffix)] for name in storage_for(folder).list_names(folder) if name.endswith(suffix)}
