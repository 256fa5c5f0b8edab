"""Step 2: hand shards to workers through lock files on a shared filesystem.

Reads and writes ``locks/`` of an output root (see :mod:`slimtok.protocol`); :func:`file_server_now`
(for status's heartbeat ages) touches ``probes/``. Every file operation goes through the root's
:class:`~slimtok.protocol.Storage` (its clock too), so no two clocks are compared here.

* **Claim**: a worker owns a shard once it has created ``locks/<id>.lock`` with
  :func:`~slimtok.protocol.create_exclusive` (link(2) of a private file, safe on NFS). The lock
  names a fresh random token; only that token's part file is ever written by the holder.
* **Heartbeat**: the holder sets the lock's mtime to a strictly later whole second on every
  refresh (its own clock, or one second past the last beat if that clock lags), so each beat is
  an observable change whoever stamps mtimes; a holder that finds another token in its lock has
  lost it and must stop writing the shard (fencing).
* **Staleness**: a lock is stale when its holder is provably dead (same host and boot, pid gone
  or reused) or when this observer has watched it *unchanged* (inode, size, mtime, ctime, token)
  for ``stale_after`` seconds of its own monotonic clock. No two clocks are ever compared, so
  skew between hosts, or between a host and the file server, does not matter. The observations
  live in the Claimer: a relaunched observer starts with none and waits ``stale_after`` before
  it takes over a claim of another host.
* **Steal**: at most one worker takes over a given stale claim: it must first create
  ``locks/<id>.<stale token>.stolen`` exclusively, then replaces the lock with its own in one
  rename, so at every moment some lock names either the stale claim or the new one.

Locks and markers are not synced to disk: a crash that could lose one also kills its holder, and
a lock that comes back empty is taken over as unreadable once stale. Skipping the syncs saves
two of a shard's round trips to the file server.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from .protocol import (
    DoneRecord,
    Holder,
    LockRecord,
    OutputRoot,
    boot_id,
    create_exclusive,
    hostname,
    new_token,
    read_record,
    storage_for,
    write_atomic,
)


def file_server_now(probe: Path) -> float:
    """The storage's idea of now (the file server's, on POSIX: the mtime of ``probe`` touched just now)."""
    return storage_for(probe).now(probe)


NS = 1_000_000_000


def next_beat_ns(previous_ns: int) -> int:
    """The mtime of the next heartbeat: now, but at least the whole second after ``previous_ns``
    (coarse file systems keep only seconds, and a lagging clock must still move the mtime on)."""
    return max(time.time_ns(), (previous_ns // NS + 1) * NS)


def current_holder(process_index: int, worker: int) -> Holder:
    """The identity of this process as a claim holder."""
    pid = os.getpid()
    return Holder(hostname(), boot_id(), pid, psutil.Process(pid).create_time(), process_index, worker)


@dataclass(frozen=True)
class Claim:
    """A held shard. ``previous`` is the stale claim this one replaced, if any."""

    shard: str
    token: str
    record: LockRecord
    previous: LockRecord | None


class Claimer:
    """Claims, refreshes and releases shard locks under one output root for one worker."""

    def __init__(self, root: OutputRoot, me: Holder, stale_after: float):
        self.root = root
        self.me = me
        self.stale_after = stale_after
        # path -> (what the file looked like, time.monotonic() when we first saw it so): kept
        # across polls so that the waiting loop's looks add up to one watch per lock
        self._seen: dict[Path, tuple[tuple, float]] = {}

    # -- observation ------------------------------------------------------------------------
    def unchanged_for(self, path: Path, content: str = "") -> float:
        """Seconds of our monotonic clock for which ``path`` (and ``content``, what we read from
        it) has looked the same to us; 0 when first seen, changed, or gone."""
        try:
            st = self.root.storage.stat(path)
        except FileNotFoundError:
            self._seen.pop(path, None)
            return 0.0
        look = (st.identity, st.size, st.mtime_ns, st.change_ns, content)
        now = time.monotonic()
        seen = self._seen.get(path)
        if seen is None or seen[0] != look:
            self._seen[path] = (look, now)
            return 0.0
        return now - seen[1]

    def _forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    # -- claim ------------------------------------------------------------------------------
    def try_claim(self, shard: str) -> Claim | None:
        """Claim ``shard`` if it is free or its holder is stale; None when someone else holds it."""
        lock = self.root.lock(shard)
        self.root.storage.make_folders(lock.parent)
        record = self._new_record(shard)
        if create_exclusive(lock, record.to_json(), durable=False):
            self._forget(lock)
            return Claim(shard, record.token, record, None)
        held = read_record(lock, LockRecord)
        if held is None:
            return self._steal_unreadable(shard, record)
        if not self.is_stale(lock, held):
            return None
        return self._steal(shard, held.token, record, held)

    def _steal_unreadable(self, shard: str, record: LockRecord) -> Claim | None:
        """A lock that exists but holds no record (a crash of the file server mid-write) is
        taken over once watched unchanged for ``stale_after``; its inode number names the marker."""
        lock = self.root.lock(shard)
        try:
            ino = self.root.storage.stat(lock).identity
        except FileNotFoundError:
            return None
        if self.unchanged_for(lock) <= self.stale_after or read_record(lock, LockRecord) is not None:
            return None
        return self._steal(shard, f"ino{ino}", record, None)

    def _new_record(self, shard: str) -> LockRecord:
        return LockRecord(**asdict(self.me), shard=shard, token=new_token(), claimed_at=time.time())

    def _steal(self, shard: str, stale_token: str, record: LockRecord,
               stale: LockRecord | None) -> Claim | None:
        lock = self.root.lock(shard)
        marker = self.root.stolen(shard, stale_token)
        if not create_exclusive(marker, record.to_json(), durable=False):
            # Another worker is taking over this very claim, unless it died doing so.
            if self.unchanged_for(marker) > self.stale_after:
                self.root.storage.delete(marker)
                self._forget(marker)
            return None
        try:
            if not self.root.storage.exists(lock):
                return None  # released meanwhile: claim it afresh next time, exclusively
            current = read_record(lock, LockRecord)
            if current is not None and current.token != stale_token:
                return None  # the holder released it meanwhile and somebody claimed it afresh
            # Replace in one rename, never unlink-then-create: a stealer killed in between would
            # leave no lock naming the stale claim, and its part file would never be cleaned up.
            write_atomic(lock, record.to_json(), durable=False)
            self._forget(lock)
            taken = Claim(shard, record.token, record, stale)
            return taken if self.holds(taken) else None  # a rename over NFS may report wrongly
        finally:
            self.root.storage.delete(marker)

    def is_stale(self, lock: Path, held: LockRecord) -> bool:
        """True when the holder is provably dead, or we have watched its lock ``lock`` (holding
        ``held``) go without a heartbeat for longer than ``stale_after``."""
        if held.host == self.me.host and held.boot_id == self.me.boot_id and held.boot_id:
            if not _alive(held.pid, held.pid_started):
                return True
        return self.unchanged_for(lock, held.token) > self.stale_after

    # -- holding ----------------------------------------------------------------------------
    def holds(self, claim: Claim) -> bool:
        """True while the lock still names this claim's token."""
        current = read_record(self.root.lock(claim.shard), LockRecord)
        return current is not None and current.token == claim.token

    def refresh(self, claim: Claim) -> bool:
        """Heartbeat: move the lock's mtime on (:func:`next_beat_ns`) if still ours; False means
        the claim was lost."""
        if not self.holds(claim):
            return False
        lock = self.root.lock(claim.shard)
        try:
            beat = next_beat_ns(self.root.storage.stat(lock).mtime_ns)
            self.root.storage.set_mtime(lock, beat)
        except FileNotFoundError:
            return False
        return True

    def clear_leftover(self, shard: str) -> None:
        """Remove a lock left on a settled shard (its holder was killed after committing).

        A lock whose token the done record names belongs to a claim that has committed: its
        holder has nothing left to do but release it, so it goes at once, whatever its holder's
        clock. Called by the one worker whose slice the shard is in, so the extra reads are paid
        once per shard and launch, not once per worker.
        """
        lock = self.root.lock(shard)
        if self.root.storage.exists(lock) and self.is_leftover(shard):
            self.root.storage.delete(lock)
            self._forget(lock)

    def is_leftover(self, shard: str) -> bool:
        """True when the lock on ``shard`` holds no live claim: unreadable, naming the claim its
        done record committed, or stale (:meth:`is_stale`)."""
        lock = self.root.lock(shard)
        held = read_record(lock, LockRecord)
        done = read_record(self.root.done(shard), DoneRecord)
        return held is None or (done is not None and done.token == held.token) or self.is_stale(lock, held)

    def release(self, claim: Claim) -> None:
        """Remove the lock if it is still ours (never someone else's)."""
        if self.holds(claim):
            self.root.storage.delete(self.root.lock(claim.shard))


def held_by(root: OutputRoot, pid: int) -> list[str]:
    """The units whose locks name process ``pid`` of this host and boot, in id order: what a worker
    held when it died (its launcher asks; the locks are then stale at once, see :meth:`Claimer.is_stale`)."""
    host, boot = hostname(), boot_id()
    held = []
    for unit in sorted(root.locked_ids()):
        record = read_record(root.lock(unit), LockRecord)
        if record is not None and (record.host, record.boot_id, record.pid) == (host, boot, pid):
            held.append(unit)
    return held


def _alive(pid: int, started: float) -> bool:
    """True when ``pid`` runs and is the same process (start time within a second)."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def preference_order(n: int, process_index: int, process_count: int, worker: int, workers: int) -> Iterator[int]:
    """Manifest positions in the order one worker tries them.

    Process I first takes positions ≡ I (mod P); its W local workers interleave over those
    (worker w starts with every W-th of them), then anything else, starting at the process's own
    offset so that idle processes spread out over the remaining shards.

    Produced lazily, O(1) per position (the slices are ranges, whose membership test is
    arithmetic): a worker's first claim never waits for an order over the whole manifest.
    """
    own = range(process_index, n, process_count)
    first = own[worker::workers]
    yield from first
    yield from (p for p in own if p not in first)
    start = (process_index * n) // max(process_count, 1)
    yield from (p for p in itertools.chain(range(start, n), range(0, start)) if p not in own)
