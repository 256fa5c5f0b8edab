"""Run ``slimtok tokenize`` on this node: place the process in the job, pin it, start its workers.

Reads the process grid from the command line or from Slurm / Open MPI / PMI variables, pins the
output root (job.json), starts the local workers as separate processes with one encoder thread
each (forked, sharing the tokenizer this process loaded once, or spawned, each loading its own:
:func:`start_method`), prints one aggregated progress line, and returns an exit
status: 0 all selected shards done, 1 some shard failed, 3 a worker could not go on, 75 stopped
by a signal (relaunch resumes).
"""

from __future__ import annotations

import functools
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from .errors import EXIT_INTERRUPTED, EXIT_SHARDS_FAILED, OutputError, TokenizerError
from .executor import (
    GRID_VARIABLES,
    REPLACEMENTS_PER_WORKER,
    WORKER_THREAD_LIMITS,
    Death,
    NodeRun,
    Revive,
    exit_status,
    limit_worker_threads,
    process_grid,
    single_threaded,
    start_method,
    usable_cores,
    worker_count,
)
from .job import Job, TokenizeSettings, keep_lease_fresh, launch_lease, pin_job
from .progress import ProgressFactory
from .protocol import (
    DoneRecord,
    FailedRecord,
    Heartbeat,
    LockRecord,
    OutputRoot,
    hostname,
    read_record,
    require_kind,
    worker_name,
    write_record,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from .tokenizer import LoadedBackends

# The process grid and worker start live in slimtok.executor; named here too, where they always were.
__all__ = ["GRID_VARIABLES", "WORKER_THREAD_LIMITS", "all_settled", "clear_leftover_locks", "limit_worker_threads",
           "process_grid", "settings_for", "single_threaded", "start_method", "tokenize", "usable_cores",
           "worker_count"]

_HOW_STARTED = {"fork": "forked: they share this process's loaded tokenizer",
                "spawn": "spawned: each loads the tokenizer itself"}


def _preload(job: Job) -> LoadedBackends | None:
    """What every worker loads at its first claim, loaded once here for the workers about to be
    forked and its start-up sample checked (:func:`_check_shape`); None when the job's tokenizer copy
    does not load (each worker then finds and reports that, as it would when spawned) or the load
    left threads running (then workers are spawned)."""
    from .worker import preload  # numpy and tokenizers: imported once for every forked worker

    try:
        loaded = preload(job)
    except TokenizerError:
        return None
    _check_shape(job, loaded.reference)
    return loaded if single_threaded() else None


def _check_shape(job: Job, reference: Tokenizer | None = None) -> None:
    """Refuse a degenerate tokenizer (:func:`slimtok.tokenizer.check_start_sample`) before any
    worker starts, so no shard is claimed with it. ``reference``: the job's tokenizer as loaded
    here; None: loaded from the job's copy, and when that does not load the workers report it."""
    from .job import load_pinned_tokenizer
    from .tokenizer import check_start_sample

    if reference is None:
        try:
            reference = load_pinned_tokenizer(job.root, job.pinned)
        except TokenizerError:
            return
    check_start_sample(reference, job.pinned.vocab_size, job.pinned.tokenizer)


def _prepare(job: Job) -> tuple[str, LoadedBackends | None]:
    """Set the workers' thread limits and choose how they start: (start method, what they share).
    Forked workers share a tokenizer loaded here; when that load fails they are spawned instead.
    Either way the tokenizer's start-up sample is checked first (TokenizerError when degenerate)."""
    limit_worker_threads()
    fork = start_method() == "fork"
    loaded = _preload(job) if fork else None
    if not fork:
        _check_shape(job)
    return ("fork" if loaded is not None else "spawn"), loaded


def all_settled(job: Job) -> bool:
    """Whether every selected shard needs nothing from a worker: a readable done record, or a failed
    record that this launch does not retry. Same rule as a worker's; anything else (an unreadable
    record, a retry) is left to the workers."""
    settings, root = job.settings, job.root
    done, failed = root.done_ids(), root.failed_ids()
    for e in job.entries:
        if e.split not in settings.splits:
            continue
        if e.id in done and read_record(root.done(e.id), DoneRecord) is not None:
            continue
        if settings.retry_failed or e.id not in failed or read_record(root.failed(e.id), FailedRecord) is None:
            return False
    return True


def clear_leftover_locks(job: Job) -> None:
    """Remove the locks a killed holder left on settled shards, as the workers do when they pass
    them (no worker runs when every shard is settled). Only locks of committed claims or of dead
    or stale holders go (:meth:`Claimer.clear_leftover`)."""
    from .claims import Claimer, current_holder

    settings, root = job.settings, job.root
    locked = root.locked_ids() & {e.id for e in job.entries if e.split in settings.splits}
    if locked:
        claimer = Claimer(root, current_holder(settings.process_index, 0), settings.stale_after)
        for shard in sorted(locked):
            claimer.clear_leftover(shard)


class _Progress:
    """The launch's progress: the whole job's shards and input bytes, this process's documents and
    tokens (from its workers' heartbeats), shown by :class:`ProgressDisplay`.

    Reads this process's heartbeat files and lists ``done/`` (one directory walk, no record
    opened), so it stays cheap with 60,000 shards.
    """

    def __init__(self, job: Job, run: NodeRun, progress: ProgressFactory | None):
        settings, self.root, self.run = job.settings, job.root, run
        self.host, self.process_index = hostname(), settings.process_index
        self.sizes = {e.id: e.size for e in job.entries if e.split in settings.splits}
        self.started = time.time()
        _shards, done_bytes = self._done()
        self.display = progress(len(self.sizes), sum(self.sizes.values()), done_bytes) if progress else None

    def _done(self) -> tuple[int, int]:
        """(shards, compressed source bytes) of the selected shards that are done, by any process."""
        done = self.root.done_ids() & self.sizes.keys()
        return len(done), sum(self.sizes[i] for i in done)

    def update(self) -> None:
        if self.display is None:
            return
        # every process each slot has had: a killed worker's documents were read in this launch too
        names = [worker_name(self.host, self.process_index, w, g)
                 for w, last in enumerate(self.run.generations) for g in range(last + 1)]
        beats = [b for b in (read_record(self.root.heartbeat(n), Heartbeat) for n in names)
                 if b is not None and b.started_at >= self.started - 5]
        shards, done_bytes = self._done()
        self.display.update(shards, sum(b.documents for b in beats), sum(b.tokens for b in beats), done_bytes)

    def close(self) -> None:
        self.update()
        if self.display is not None:
            self.display.close()


def tokenize(settings: TokenizeSettings, log: Callable[[str], None] | None = None,
             progress: ProgressFactory | None = None) -> int:
    """Pin the job, run ``settings.workers`` workers to completion, and return the exit status;
    ``progress`` makes the display of the whole job's shards and bytes (None: nothing shown).
    A launch whose selected shards are all settled spawns no worker: it reads records and returns.
    The launch holds its lease (:func:`slimtok.job.launch_lease`) from before it pins until it ends."""
    root = OutputRoot(settings.output_root)
    require_kind(root, "tokenize")  # before the lease: a refusal writes nothing
    with launch_lease(root, settings.launch):
        return _tokenize(settings, log, progress)


def _tokenize(settings: TokenizeSettings, log: Callable[[str], None] | None,
              progress: ProgressFactory | None) -> int:
    try:
        job = pin_job(settings, log=log)
    except OSError as exc:
        raise OutputError(f"cannot write the job's files: {exc.strerror or exc}", exc.filename or settings.output_root,
                          "free space or fix permissions on the output root, then relaunch the same command") from exc
    if all_settled(job):
        clear_leftover_locks(job)
        if log:
            log("every selected shard is already settled (done, or failed and not retried): no worker started")
        return _exit_status([], job, False)
    with NodeRun("slimtok-worker", forward=signal.SIGTERM) as run:  # each worker finishes its batch and stops
        method, loaded = _prepare(job)
        if run.signalled:  # stopped while the tokenizer was loading: nothing was started
            return EXIT_INTERRUPTED
        # imported after _prepare set the thread limits (numpy's BLAS pool starts at import), and
        # not at the top: a launch with nothing to do never imports it
        from .worker import worker_main

        run.start(method, worker_main, [(job, w, loaded) for w in range(settings.workers)])
        keep_lease_fresh(job.root, settings.launch)  # a thread: only once the workers are forked
        del loaded  # the workers have their copies; this one need not live as long as the launch
        if log:
            log(f"{len(run.procs)} worker(s) started ({_HOW_STARTED[method]})")
        monitor = _Progress(job, run, progress)  # its bar's thread comes after the forks
        codes = run.wait(monitor.update, revive=_revive(job, log))
        monitor.close()
    status = _exit_status(codes, job, run.signalled)
    root = job.root
    if status == EXIT_SHARDS_FAILED and log and not root.done_ids():
        log(f"no shard is done and {len(root.failed_ids())} failed (reasons in {root.failed_dir}); if a setting "
            "caused it (e.g. --text-key), relaunch with the corrected one: with nothing done, job.json is re-pinned")
    return status


def _exit_status(codes: list[int | None], job: Job, signalled: bool) -> int:
    """:func:`exit_status`, with whether a selected shard has a failed record and whether every
    selected shard is settled (then a worker killed along the way cost the job nothing)."""
    failed = any(e.split in job.settings.splits and job.root.storage.exists(job.root.failed(e.id)) for e in job.entries)
    return exit_status(codes, signalled, failed, settled=all_settled(job))


def _revive(job: Job, log: Callable[[str], None] | None) -> Revive:
    """How tokenize replaces a killed worker: a new process in its slot with the next generation's
    name (loading the tokenizer itself, or sharing what a fork copies), its death written into
    its heartbeat, and a shard whose holders were killed twice failed with that reason."""
    return Revive(args=lambda slot, generation: (job, slot, None, generation),
                  held=functools.partial(_held, job), log=log or _to_stderr,
                  limit=REPLACEMENTS_PER_WORKER * job.settings.workers,
                  settle=functools.partial(_fail_killer, job), died=functools.partial(_mark_killed, job))


def _held(job: Job, slot: int, generation: int, pid: int) -> list[str]:
    """The shards a dead worker held: the one its heartbeat names as being worked on first (done or
    not: a live worker may have taken its lock over from the dead holder and finished it before
    the launcher looked), then the others its locks name (a commit in flight), unless its done
    record names that very claim (committed; only the release was lost)."""
    from .claims import held_by  # psutil: imported once a worker runs, not by a launch with nothing to do

    beat = read_record(job.root.heartbeat(worker_name(hostname(), job.settings.process_index, slot, generation)),
                       Heartbeat)
    working = [beat.shard] if beat is not None and beat.pid == pid and beat.state == "working" and beat.shard else []
    return working + [s for s in held_by(job.root, pid) if s not in working and not _committed(job, s)]


def _committed(job: Job, shard: str) -> bool:
    """Whether the claim the lock on ``shard`` names has committed (its done record names it)."""
    lock, done = read_record(job.root.lock(shard), LockRecord), read_record(job.root.done(shard), DoneRecord)
    return lock is not None and done is not None and lock.token == done.token


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _mark_killed(job: Job, death: Death, generation: int) -> None:
    """Write the killed worker's heartbeat as killed (by which signal, holding which shard), so
    status shows it once, as dead, on any host: not as a worker still "working" on its shard."""
    path = job.root.heartbeat(worker_name(hostname(), job.settings.process_index, death.slot, generation))
    beat = read_record(path, Heartbeat)
    if beat is not None and beat.pid == death.pid:
        write_record(path, replace(beat, state=f"killed by {death.signal_name}",
                                   shard=death.units[0] if death.units else None, updated_at=time.time()),
                     durable=False)


def _fail_killer(job: Job, shard: str, deaths: list[Death]) -> None:
    """A shard whose every holder a signal killed (the OOM killer, a native encoder's crash) is
    failed with that reason for this launch, so no further worker takes it and dies of it."""
    entry = next(e for e in job.entries if e.id == shard)
    reason = (f"{len(deaths)} workers were killed while holding it "
              f"({', '.join(f'pid {d.pid} by {d.signal_name}' for d in deaths)}): it kills whoever tokenizes "
              "it (out of memory?); fix or remove the file, then relaunch with --retry-failed")
    write_record(job.root.failed(shard), FailedRecord(shard=shard, path=entry.path, reason=reason, host=hostname(),
                                                      pid=deaths[-1].pid, launch=job.settings.launch,
                                                      failed_at=time.time()))


def settings_for(settings: TokenizeSettings, spawn: str, max_workers: int | None,
                 process_index: int | None, process_count: int | None) -> tuple[TokenizeSettings, str]:
    """Fill in the process grid and worker count; returns the settings and where the grid came from."""
    index, count, source = process_grid(process_index, process_count)
    return replace(settings, process_index=index, process_count=count,
                   workers=worker_count(spawn, max_workers)), source
