"""Run ``slimtok tokenize`` on this node: place the process in the job, pin it, start its workers.

Reads the process grid from the command line or from Slurm / Open MPI / PMI variables, pins the
output root (job.json), starts the local workers as separate processes with one encoder thread
each (forked, sharing the tokenizer this process loaded once, or spawned, each loading its own:
:func:`start_method`), prints one aggregated progress line, and returns an exit
status: 0 all selected shards done, 1 some shard failed, 3 a worker could not go on, 75 stopped
by a signal (relaunch resumes).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Mapping

from .manifest import ShardEntry, read_manifest
from .progress import PLAIN_EVERY, ProgressDisplay
from .protocol import DoneRecord, FailedRecord, Heartbeat, OutputRoot, hostname, read_record, worker_name
from .errors import (EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_SHARDS_FAILED, LaunchError, OutputError,
                     TokenizerError)
from .job import TokenizeSettings, pin_job

if TYPE_CHECKING:
    from .tokenizer import LoadedBackends

#: (rank variable, size variable) pairs, in the order they are trusted.
GRID_VARIABLES = (("SLURM_PROCID", "SLURM_NTASKS"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                  ("PMI_RANK", "PMI_SIZE"))


def process_grid(index: int | None, count: int | None,
                 env: Mapping[str, str] = os.environ) -> tuple[int, int, str]:
    """(process index, process count, where they came from): flags first, then the environment."""
    source = "flags"
    if index is None and count is None:
        for rank_var, size_var in GRID_VARIABLES:
            if rank_var in env and size_var in env:
                try:
                    index, count = int(env[rank_var]), int(env[size_var])
                except ValueError as exc:
                    raise LaunchError(f"{rank_var}={env[rank_var]!r} / {size_var}={env[size_var]!r} "
                                      "are not integers") from exc
                source = f"{rank_var}/{size_var}"
                break
        else:
            index, count, source = 0, 1, "default (single process)"
    elif index is None or count is None:
        raise LaunchError("give both --process-index and --process-count, or neither")
    if count < 1 or not 0 <= index < count:
        raise LaunchError(f"process index {index} is not in 0..{count - 1} (process count {count})")
    return index, count, source


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def worker_count(spawn: str, max_workers: int | None) -> int:
    """``auto``: one per usable core (capped by ``max_workers``); or an explicit number."""
    if spawn == "auto":
        n = usable_cores()
    else:
        try:
            n = int(spawn)
        except ValueError as exc:
            raise LaunchError(f"--spawn-workers {spawn!r} is neither 'auto' nor a number") from exc
        if n < 1:
            raise LaunchError(f"--spawn-workers {n} must be at least 1")
    return min(n, max_workers) if max_workers else n


#: Environment the workers start with (a value the user set is kept): one encoder thread per
#: process, since cores are shared out by process count, and no idle BLAS pool in a process that
#: never multiplies a matrix (OpenBLAS would start one thread per core in each worker).
WORKER_THREAD_LIMITS = {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1", "FASTOKENS_BPE_THREADS": "1",
                        "OPENBLAS_NUM_THREADS": "1"}
#: The signals a launcher forwards to its workers (as SIGTERM: each finishes its batch and stops).
_FORWARDED = {signal.SIGTERM, signal.SIGINT}
_HOW_STARTED = {"fork": "forked: they share this process's loaded tokenizer",
                "spawn": "spawned: each loads the tokenizer itself"}


def limit_worker_threads() -> None:
    """Set :data:`WORKER_THREAD_LIMITS` where the user has not: before this process imports numpy
    or a tokenizer, so that it stays single-threaded and can fork its workers."""
    for name, value in WORKER_THREAD_LIMITS.items():
        os.environ.setdefault(name, value)


def single_threaded() -> bool:
    """Whether this process runs one thread, counted by the kernel (Python, Rust and BLAS threads
    alike); False where it cannot tell (no /proc)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def start_method() -> str:
    """How this launch starts its workers: "fork" on Linux when the launcher runs one thread (no
    lock or pool can be caught mid-use in the copy), so they share its imports and loaded
    tokenizer; else "spawn", a fresh interpreter per worker that loads everything itself."""
    return "fork" if sys.platform.startswith("linux") and single_threaded() else "spawn"


def _preload(settings: TokenizeSettings) -> LoadedBackends | None:
    """What every worker loads at its first claim, loaded once here for the workers about to be
    forked; None when the job's tokenizer copy does not load (each worker then finds and reports
    that, as it would when spawned) or the load left threads running (then workers are spawned)."""
    from .worker import preload  # numpy and tokenizers: imported once for every forked worker

    try:
        loaded = preload(settings)
    except TokenizerError:
        return None
    return loaded if single_threaded() else None


def _child(settings: TokenizeSettings, index: int, parent: int, loaded: LoadedBackends | None) -> None:
    # A forked worker starts with the launcher's handlers, and every worker with SIGTERM and SIGINT
    # blocked (see _start): take them back to what a fresh interpreter has, then accept them.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    from .worker import worker_main  # here, not at the top: a launch with nothing to do never imports it

    sys.exit(worker_main(settings, index, parent, loaded))


def _prepare(settings: TokenizeSettings) -> tuple[str, LoadedBackends | None]:
    """Set the workers' thread limits and choose how they start: (start method, what they share).
    Forked workers share a tokenizer loaded here; when that load fails they are spawned instead."""
    limit_worker_threads()
    loaded = _preload(settings) if start_method() == "fork" else None
    return ("fork" if loaded is not None else "spawn"), loaded


def _start(procs: list[multiprocessing.process.BaseProcess], settings: TokenizeSettings, method: str,
           loaded: LoadedBackends | None) -> None:
    """Start ``settings.workers`` workers by ``method``, adding each to ``procs`` before it starts.
    SIGTERM and SIGINT are blocked meanwhile, so that a signal arriving during a fork is taken by
    the launcher's handler (which forwards it to every started worker), never run in a copy."""
    ctx = multiprocessing.get_context(method)
    procs += [ctx.Process(target=_child, args=(settings, w, os.getpid(), loaded), name=f"slimtok-worker-{w}")
              for w in range(settings.workers)]
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    try:
        for p in procs:
            p.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def all_settled(settings: TokenizeSettings, entries: list[ShardEntry]) -> bool:
    """Whether every selected shard needs nothing from a worker: a readable done record, or a failed
    record that this launch does not retry. Same rule as a worker's; anything else (an unreadable
    record, a retry) is left to the workers."""
    root = OutputRoot(settings.output_root)
    done, failed = root.done_ids(), root.failed_ids()
    for e in entries:
        if e.split not in settings.splits:
            continue
        if e.id in done and read_record(root.done(e.id), DoneRecord) is not None:
            continue
        if settings.retry_failed or e.id not in failed or read_record(root.failed(e.id), FailedRecord) is None:
            return False
    return True


def clear_leftover_locks(settings: TokenizeSettings, entries: list[ShardEntry]) -> None:
    """Remove the locks a killed holder left on settled shards, as the workers do when they pass
    them (no worker runs when every shard is settled). Only locks of committed claims or of dead
    or stale holders go (:meth:`Claimer.clear_leftover`)."""
    from .claims import Claimer, current_holder

    root = OutputRoot(settings.output_root)
    locked = root.locked_ids() & {e.id for e in entries if e.split in settings.splits}
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

    def __init__(self, settings: TokenizeSettings, entries: list[ShardEntry], quiet: bool, every: float):
        self.root = OutputRoot(settings.output_root)
        host = hostname()
        self.names = [worker_name(host, settings.process_index, w) for w in range(settings.workers)]
        self.sizes = {e.id: e.size for e in entries if e.split in settings.splits}
        self.started = time.time()
        _shards, done_bytes = self._done()
        self.display = ProgressDisplay(len(self.sizes), sum(self.sizes.values()), quiet=quiet, every=every,
                                       label="tokenize", initial_bytes=done_bytes)

    def _done(self) -> tuple[int, int]:
        """(shards, compressed source bytes) of the selected shards that are done, by any process."""
        done = self.root.done_ids() & self.sizes.keys()
        return len(done), sum(self.sizes[i] for i in done)

    def update(self) -> None:
        beats = [read_record(self.root.heartbeat(n), Heartbeat) for n in self.names]
        beats = [b for b in beats if b is not None and b.started_at >= self.started - 5]
        shards, done_bytes = self._done()
        self.display.update(shards, sum(b.documents for b in beats), sum(b.tokens for b in beats), done_bytes)

    def close(self) -> None:
        self.update()
        self.display.close()


def tokenize(settings: TokenizeSettings, say: Callable[[str], None] | None = None, quiet: bool = False,
             progress_every: float = PLAIN_EVERY) -> int:
    """Pin the job, run ``settings.workers`` workers to completion, and return the exit status.
    A launch whose selected shards are all settled spawns no worker: it reads records and returns."""
    try:
        pin_job(settings, say=say)
    except OSError as exc:
        raise OutputError(f"cannot write the job's files: {exc.strerror or exc}", exc.filename or settings.output_root,
                          "free space or fix permissions on the output root, then relaunch the same command") from exc
    entries = read_manifest(settings.manifest, check_files=False)  # pin_job checked it; read once here
    if all_settled(settings, entries):
        clear_leftover_locks(settings, entries)
        if say:
            say("every selected shard is already settled (done, or failed and not retried): no worker started")
        return _exit_status([], settings, entries, False)
    procs: list[multiprocessing.process.BaseProcess] = []
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        for p in procs:
            if p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in _FORWARDED}
    try:
        method, loaded = _prepare(settings)
        if received:  # stopped while the tokenizer was loading: nothing was started
            return EXIT_INTERRUPTED
        _start(procs, settings, method, loaded)
        del loaded  # the workers have their copies; this one need not live as long as the launch
        if say:
            say(f"{len(procs)} worker(s) started ({_HOW_STARTED[method]})")
        monitor = _Progress(settings, entries, quiet, progress_every)  # its bar's thread comes after the forks
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=0.5)
            monitor.update()
        monitor.close()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    status = _exit_status([p.exitcode for p in procs], settings, entries, bool(received))
    root = OutputRoot(settings.output_root)
    if status == EXIT_SHARDS_FAILED and say and not root.done_ids():
        say(f"no shard is done and {len(root.failed_ids())} failed (reasons in {root.root / 'failed'}); if a setting "
            "caused it (e.g. --text-key), relaunch with the corrected one: with nothing done, job.json is re-pinned")
    return status


def _exit_status(codes: list[int | None], settings: TokenizeSettings, entries: list[ShardEntry],
                 signalled: bool) -> int:
    """The launch's status from its workers'. A signal that arrived after every worker had
    finished its work interrupted nothing, so it does not turn a complete run into 75."""
    finished = all(c in (EXIT_OK, EXIT_SHARDS_FAILED) for c in codes)
    if any(c is None or c < 0 or c == EXIT_FATAL for c in codes) and not signalled:
        return EXIT_FATAL
    if EXIT_INTERRUPTED in codes or (signalled and not finished):
        return EXIT_INTERRUPTED
    root = OutputRoot(settings.output_root)
    failed = [e for e in entries if e.split in settings.splits and root.failed(e.id).exists()]
    if failed or EXIT_SHARDS_FAILED in codes:
        return EXIT_SHARDS_FAILED
    return EXIT_OK


def settings_for(settings: TokenizeSettings, spawn: str, max_workers: int | None,
                 process_index: int | None, process_count: int | None) -> tuple[TokenizeSettings, str]:
    """Fill in the process grid and worker count; returns the settings and where the grid came from."""
    index, count, source = process_grid(process_index, process_count)
    return replace(settings, process_index=index, process_count=count,
                   workers=worker_count(spawn, max_workers)), source
