"""Run claimed units on this node: one executor for every claimed stage (tokenize, dedup).

A stage brings its unit list and a per-unit ``work(unit, claim)`` and calls :func:`run_units` in
each worker; the launcher places its process in the job (:func:`process_grid`,
:func:`worker_count`) and starts the local workers (:class:`NodeRun`: forked when it runs one
thread on Linux, else spawned), which forwards its SIGTERM/SIGINT to them. Inside a worker,
:func:`run_units` claims units in preference order, and waits for the units other workers hold
(:func:`wait_for_held`); :class:`HeldClaims` keeps a long unit's claim fresh. It writes nothing
itself: the lock files are ``slimtok.claims``'s, the unit outputs the stage's.

Invariants:

* a unit is worked on only under its claim, and only after a second look (taken after the
  claim) found it still unsettled;
* a worker returns from :func:`wait_for_held` only when every unit it waited for is settled,
  by anyone: a stage whose next phase needs them all can start it then;
* a worker dies with its launcher (Linux), so no orphan keeps a claim alive;
* a worker killed by a signal the launcher did not forward is named in one line (with the units
  its locks name) and, up to :data:`REPLACEMENTS_PER_WORKER` times the workers started, replaced
  by a new process in its slot; its claims need no wait: a dead holder on this host is stale at
  once (:meth:`slimtok.claims.Claimer.is_stale`).
"""

from __future__ import annotations

import ctypes
import enum
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .errors import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_SHARDS_FAILED, LaunchError

if TYPE_CHECKING:  # a launcher imports this module before it knows whether any worker starts
    from .claims import Claim, Claimer

U = TypeVar("U")

#: (rank variable, size variable) pairs, in the order they are trusted.
GRID_VARIABLES = (("SLURM_PROCID", "SLURM_NTASKS"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                  ("PMI_RANK", "PMI_SIZE"))

#: Environment the workers start with (a value the user set is kept): one encoder thread per
#: process, since cores are shared out by process count, and no idle BLAS pool in a process that
#: never multiplies a matrix (OpenBLAS would start one thread per core in each worker).
WORKER_THREAD_LIMITS = {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1", "FASTOKENS_BPE_THREADS": "1",
                        "OPENBLAS_NUM_THREADS": "1"}

#: The signals a launcher takes and passes on to its workers.
FORWARDED = {signal.SIGTERM, signal.SIGINT}

#: Replacements of killed workers per launch, per worker started. An outside kill (the OOM killer
#: during a node-wide memory spike, an operator's mistake) costs the run one unit's work, and a
#: node can lose each of its workers once that way and still finish at full strength; a cause
#: that kills workers again and again (a unit that kills whoever holds it, a node short of memory)
#: stops after that many more deaths, each costing at most one unit's work, and the exit status
#: says so instead of looping.
REPLACEMENTS_PER_WORKER = 1

#: Holders of one unit killed in one launch after which the stage is asked to settle it
#: (:attr:`Revive.settle`): once may be bad luck, twice is the unit.
UNIT_DEATHS = 2

#: Seconds between looks at units other workers hold: doubling from the first to the longest.
POLL_FIRST = 0.05
POLL_LONGEST = 5.0


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
    """How a launch starts its workers: "fork" on Linux when the launcher runs one thread (no
    lock or pool can be caught mid-use in the copy), so they share its imports and loaded
    state; else "spawn", a fresh interpreter per worker that loads everything itself."""
    return "fork" if sys.platform.startswith("linux") and single_threaded() else "spawn"


def refresh_interval(stale_after: float) -> float:
    """Seconds between refreshes of a held claim (and a worker's heartbeats): six per
    ``stale_after``, so a few missed ones never make a live claim look stale."""
    return max(0.2, min(30.0, stale_after / 6))


class Attempt(enum.Enum):
    """What one look at a unit came to."""

    SETTLED = "settled"  # it needs nothing from this worker (done, or failed and not retried)
    BUSY = "busy"  # another worker holds it
    PROCESSED = "processed"  # this worker worked on it (its claim may still be held, handed on)


def attempt(claimer: Claimer, unit: str, settled: Callable[[], bool], work: Callable[[Claim], None]) -> Attempt:
    """Claim ``unit`` unless it is settled or held, and ``work`` on it. ``work`` owns the claim:
    it releases it, or hands it on to whatever releases it later."""
    if settled():
        return Attempt.SETTLED
    claim = claimer.try_claim(unit)
    if claim is None:
        return Attempt.BUSY
    if settled():  # finished between our look and our claim
        claimer.release(claim)
        return Attempt.SETTLED
    work(claim)
    return Attempt.PROCESSED


def run_units(claimer: Claimer, units: Sequence[U], grid: tuple[int, int, int, int], unit_id: Callable[[U], str],
              settled: Callable[[U], bool], work: Callable[[U, Claim], None], *,
              selected: Callable[[U], bool] = lambda _unit: True, pause: Callable[[float], object] = time.sleep,
              stop_point: Callable[[], None] = lambda: None,
              before_wait: Callable[[list[U]], None] | None = None) -> None:
    """One worker's run of a claimed stage: every ``selected`` unit, in this worker's preference
    order for ``grid`` (process index, process count, worker, workers), is claimed and worked on
    unless settled or held (:func:`attempt`); then, after ``before_wait(held)``, the units others
    held are waited for (:func:`wait_for_held`) until every one is settled. A unit of this worker's
    own slice found settled has a leftover lock cleared, so each settled unit is looked after by
    exactly one worker. ``stop_point()`` runs before each look and may raise to stop the run."""
    from .claims import preference_order  # not at the top: a launcher imports this module without claiming

    order = preference_order(len(units), *grid)
    own = range(grid[0], len(units), grid[1])[grid[2]::grid[3]]  # its own slice heads its order (`in`: O(1))

    def look(unit: U) -> Attempt:
        stop_point()
        return attempt(claimer, unit_id(unit), lambda: settled(unit), lambda claim: work(unit, claim))

    waiting = []
    for k in order:
        if not selected(units[k]):
            continue
        outcome = look(units[k])
        if outcome is Attempt.BUSY:
            waiting.append(units[k])
        elif outcome is Attempt.SETTLED and k in own:
            claimer.clear_leftover(unit_id(units[k]))
    if before_wait is not None:
        before_wait(waiting)
    wait_for_held(waiting, look, claimer.stale_after, pause)


def wait_for_held(waiting: Iterable[U], look: Callable[[U], Attempt], stale_after: float,
                  pause: Callable[[float], object]) -> None:
    """Look at the held units until none is: soon at first, then backing off, since the last units
    of a run usually finish within seconds, while a long wait (a lost node) only needs checking a
    few times per ``stale_after`` (a stale claim is taken over by ``look``). ``pause(seconds)``
    sleeps (an event's wait cuts it short)."""
    waiting = list(waiting)
    poll, longest = POLL_FIRST, max(POLL_FIRST, min(POLL_LONGEST, stale_after / 4))
    while waiting:
        pause(poll)
        waiting = [u for u in waiting if look(u) is Attempt.BUSY]
        poll = min(poll * 2, longest)


class HeldClaims:
    """The claims a worker holds, refreshed on a background thread every ``every`` seconds so a long
    unit never looks stale; a claim whose refresh fails was taken over (:meth:`lost`). ``tick``
    runs after each round of refreshes (a stage's heartbeat)."""

    def __init__(self, claimer: Claimer, every: float, tick: Callable[[], None] | None = None):
        self.claimer, self.every, self.tick = claimer, every, tick
        self._held: dict[str, Claim] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()  # the worker thread and a commit thread change _held
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def hold(self, claim: Claim) -> None:
        with self._lock:
            self._held[claim.token] = claim

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self._held.pop(claim.token, None)

    def lost(self, claim: Claim) -> bool:
        return claim.token in self._lost

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            with self._lock:
                held = list(self._held.values())
            for claim in held:
                if not self.claimer.refresh(claim):
                    self._lost.add(claim.token)
            if self.tick is not None:
                self.tick()

    def __enter__(self) -> HeldClaims:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=max(5.0, self.every))


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the launching process dies, so no orphan keeps a claim alive."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(parent: int, target: Callable[..., int], args: tuple[object, ...]) -> None:
    # A forked worker starts with the launcher's handlers, and every worker with the forwarded
    # signals blocked (see NodeRun.start): take them back to a fresh interpreter's, then accept them.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    _die_with_parent()
    if os.getppid() != parent:
        sys.exit(EXIT_FATAL)  # the launcher died before the death signal was armed
    sys.exit(target(*args))


@dataclass(frozen=True)
class Death:
    """A worker that a signal killed: its slot (worker index), pid, the signal, and the units it
    held when it died, the one it was working on first (others: its commits in flight)."""

    slot: int
    pid: int
    signum: int
    units: tuple[str, ...]

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"


@dataclass(frozen=True)
class Revive:
    """How a stage has its killed workers replaced (:meth:`NodeRun.wait`).

    ``args(slot, generation)``: the arguments of the replacement's ``target`` (generation counts
    the slot's processes, 0 the first); ``held(slot, generation, pid)``: the units that process
    held, the one it was working on first (its locks; a stage may add what its own records say,
    since a live worker can take a dead holder's lock over before the launcher looks); ``log``:
    where the one line per death goes; ``limit``: replacements this launch; ``settle(unit,
    deaths)``: called once for a unit whose holders were killed :data:`UNIT_DEATHS` times while
    working on it (a unit only being committed is not the cause), so the stage can settle it (a
    failed record) rather than hand it to another worker;
    ``died(death, generation)``: the stage's own record of the death (its heartbeat)."""

    args: Callable[[int, int], tuple[object, ...]]
    held: Callable[[int, int, int], list[str]]
    log: Callable[[str], None]
    limit: int
    settle: Callable[[str, list[Death]], None] | None = None
    died: Callable[[Death, int], None] | None = None


class NodeRun:
    """The local workers of one launch, as a context: while it is open, SIGTERM and SIGINT sent to
    the launcher are recorded (:attr:`signalled`) and passed on to every started worker as
    ``forward``: SIGTERM lets a worker finish its batch and stop, SIGKILL suits units that are
    short and atomic. Leaving the context restores the launcher's handlers.

    :attr:`procs` holds the current process of each slot (worker index); :attr:`generations`
    how many processes each slot has had before it (a replaced slot's count goes up)."""

    def __init__(self, name: str, forward: signal.Signals = signal.SIGTERM):
        self.name, self.forward = name, forward
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.generations: list[int] = []
        self.received: list[int] = []
        self.deaths: list[Death] = []
        self._previous: dict[int, object] = {}
        self._target: Callable[..., int] | None = None
        self._seen: set[int] = set()  # pids of dead workers already named

    @property
    def signalled(self) -> bool:
        return bool(self.received)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        for p in self.procs:
            if p.pid and p.is_alive():
                os.kill(p.pid, self.forward)

    def __enter__(self) -> NodeRun:
        self._previous = {s: signal.signal(s, self._on_signal) for s in FORWARDED}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]

    def start(self, method: str, target: Callable[..., int], args: Sequence[tuple[object, ...]]) -> None:
        """Start one worker per ``args`` by ``method`` ("fork" or "spawn"), each running
        ``target(*args[w])`` and exiting with its status; ``target`` must be importable by name
        when spawned. The forwarded signals are blocked meanwhile, so that one arriving during a
        fork is taken by the launcher's handler (which passes it on), never run in a copy."""
        self._target = target
        self.procs += [self._process(method, w, a) for w, a in enumerate(args)]
        self.generations += [0] * len(args)
        self._launch(self.procs)

    def _process(self, method: str, slot: int, args: tuple[object, ...]) -> multiprocessing.process.BaseProcess:
        """The (unstarted) worker process of ``slot``, running the target on ``args``."""
        ctx = multiprocessing.get_context(method)
        # typeshed declares Process on each concrete context only, and get_context(str) as their base
        return ctx.Process(target=_child, args=(os.getpid(), self._target, args),  # type: ignore[attr-defined]
                           name=f"{self.name}-{slot}")

    def _launch(self, procs: Sequence[multiprocessing.process.BaseProcess]) -> None:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            for p in procs:
                p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def wait(self, tick: Callable[[], None] | None = None, every: float = 0.5,
             revive: Revive | None = None) -> list[int | None]:
        """Wait for every worker, calling ``tick`` about every ``every`` seconds; the exit code of
        each slot's last process. With ``revive``, a worker killed by a signal is named and
        replaced (:meth:`_revive`)."""
        while True:
            if revive is not None:
                self._revive(revive)
            if not any(p.is_alive() for p in self.procs):
                break
            for p in self.procs:
                p.join(timeout=every)
            if tick is not None:
                tick()
        return [p.exitcode for p in self.procs]

    def _revive(self, revive: Revive) -> None:
        """Name each worker a signal killed (one line: slot, pid, signal, the units it held) and
        start a new process in its slot while this launch has replacements left. A signal the
        launcher received and forwarded is a stop, not a death: nothing is replaced then."""
        for slot, p in enumerate(self.procs):
            code = p.exitcode
            if code is None or code >= 0 or p.pid is None or p.pid in self._seen or self.signalled:
                continue
            self._seen.add(p.pid)
            death = Death(slot, p.pid, -code, tuple(revive.held(slot, self.generations[slot], p.pid)))
            self.deaths.append(death)
            if revive.died is not None:
                revive.died(death, self.generations[slot])
            if revive.settle is not None:  # before any replacement can claim the unit again
                killed = [d for d in self.deaths if d.units[:1] == death.units[:1]]
                if death.units and len(killed) == UNIT_DEATHS:
                    revive.settle(death.units[0], killed)
            held = f"while holding {', '.join(death.units)}" if death.units else "holding no claim"
            replaced = sum(self.generations)
            if replaced >= revive.limit:
                revive.log(f"{p.name} (pid {p.pid}) was killed by {death.signal_name} {held}; not replaced: "
                           f"{replaced} worker(s) already replaced in this launch (at most {revive.limit})")
            else:
                self.generations[slot] += 1
                # start_method() again: the launcher may run threads by now (a progress bar), so
                # a replacement may have to be spawned where the first workers were forked
                new = self._process(start_method(), slot, revive.args(slot, self.generations[slot]))
                self.procs[slot] = new
                self._launch([new])
                revive.log(f"{p.name} (pid {p.pid}) was killed by {death.signal_name} {held}; replaced by pid "
                           f"{new.pid} (replacement {replaced + 1} of at most {revive.limit} in this launch)")


def exit_status(codes: Sequence[int | None], signalled: bool, failed: bool, settled: bool = False) -> int:
    """A launch's status from its workers' (``failed``: some unit has a failed record). A signal
    that arrived after every worker had finished its work interrupted nothing, so it does not turn
    a complete run into 75. ``settled``: every selected unit is settled (done, or failed), so a
    worker a signal killed along the way cost the job nothing: its status is not the job's."""
    if settled:
        codes = [c for c in codes if c is not None and c >= 0]
    finished = all(c in (EXIT_OK, EXIT_SHARDS_FAILED) for c in codes)
    if any(c is None or c < 0 or c == EXIT_FATAL for c in codes) and not signalled:
        return EXIT_FATAL
    if EXIT_INTERRUPTED in codes or (signalled and not finished):
        return EXIT_INTERRUPTED
    if failed or EXIT_SHARDS_FAILED in codes:
        return EXIT_SHARDS_FAILED
    return EXIT_OK
