"""Step 2: hand shards to workers through lock files on a shared filesystem.

Reads and writes ``locks/`` and ``probes/`` of an output root (see :mod:`slimtok.protocol`).

* **Claim**: a worker owns a shard once it has created ``locks/<id>.lock`` with
  :func:`~slimtok.protocol.create_exclusive` (link(2) of a private file, safe on NFS). The lock
  names a fresh random token; only that token's part file is ever written by the holder.
* **Heartbeat**: the holder touches the lock's mtime; a holder that finds another token in its
  lock has lost it and must stop writing the shard (fencing).
* **Staleness**: a lock is stale when its holder is provably dead (same host and boot, pid gone
  or reused) or its mtime is older than ``stale_after`` seconds by the *file server's* clock,
  read by touching a probe file, so clock skew between nodes does not matter.
* **Steal**: at most one worker takes over a given stale claim: it must first create
  ``locks/<id>.<stale token>.stolen`` exclusively, then replaces the lock with its own in one
  rename, so at every moment some lock names either the stale claim or the new one.

Locks and markers are not synced to disk: a crash that could lose one also kills its holder, and
a lock that comes back empty is taken over as unreadable once stale. Skipping the syncs saves
two of a shard's round trips to the file server.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from .protocol import (Holder, LockRecord, OutputRoot, boot_id, create_exclusive, hostname, new_token, read_record,
                       write_atomic)


def file_server_now(probe: Path) -> float:
    """The file server's idea of now: the mtime of ``probe`` touched just now (created if needed)."""
    try:
        os.utime(probe, None)
    except FileNotFoundError:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
    return os.stat(probe).st_mtime


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

    def __init__(self, root: OutputRoot, me: Holder, stale_after: float, probe_name: str):
        self.root = root
        self.me = me
        self.stale_after = stale_after
        self._probe = root.probe(probe_name)

    # -- clock ------------------------------------------------------------------------------
    def server_now(self) -> float:
        return file_server_now(self._probe)

    # -- claim ------------------------------------------------------------------------------
    def try_claim(self, shard: str) -> Claim | None:
        """Claim ``shard`` if it is free or its holder is stale; None when someone else holds it."""
        lock = self.root.lock(shard)
        lock.parent.mkdir(parents=True, exist_ok=True)
        record = self._new_record(shard)
        if create_exclusive(lock, record.to_json(), durable=False):
            return Claim(shard, record.token, record, None)
        held = read_record(lock, LockRecord)
        if held is None:
            return self._steal_unreadable(shard, record)
        if not self.is_stale(lock, held):
            return None
        return self._steal(shard, held.token, record, held)

    def _steal_unreadable(self, shard: str, record: LockRecord) -> Claim | None:
        """A lock that exists but holds no record (a crash of the file server mid-write) is
        taken over once it is older than ``stale_after``; its inode number names the marker."""
        lock = self.root.lock(shard)
        try:
            ino = os.stat(lock).st_ino
        except FileNotFoundError:
            return None
        if self._age(lock) <= self.stale_after or read_record(lock, LockRecord) is not None:
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
            if self._age(marker) > self.stale_after:
                marker.unlink(missing_ok=True)
            return None
        try:
            if not lock.exists():
                return None  # released meanwhile: claim it afresh next time, exclusively
            current = read_record(lock, LockRecord)
            if current is not None and current.token != stale_token:
                return None  # the holder released it meanwhile and somebody claimed it afresh
            # Replace in one rename, never unlink-then-create: a stealer killed in between would
            # leave no lock naming the stale claim, and its part file would never be cleaned up.
            write_atomic(lock, record.to_json(), durable=False)
            taken = Claim(shard, record.token, record, stale)
            return taken if self.holds(taken) else None  # a rename over NFS may report wrongly
        finally:
            marker.unlink(missing_ok=True)

    def is_stale(self, lock: Path, held: LockRecord) -> bool:
        """True when the holder is provably dead or silent for longer than ``stale_after``."""
        if held.host == self.me.host and held.boot_id == self.me.boot_id and held.boot_id:
            if not _alive(held.pid, held.pid_started):
                return True
        return self._age(lock) > self.stale_after

    def _age(self, path: Path) -> float:
        """Seconds since ``path`` was last touched, by the file server's clock (0 when gone)."""
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            return 0.0
        return self.server_now() - mtime

    # -- holding ----------------------------------------------------------------------------
    def holds(self, claim: Claim) -> bool:
        """True while the lock still names this claim's token."""
        current = read_record(self.root.lock(claim.shard), LockRecord)
        return current is not None and current.token == claim.token

    def refresh(self, claim: Claim) -> bool:
        """Heartbeat: touch the lock if still ours; False means the claim was lost."""
        if not self.holds(claim):
            return False
        try:
            os.utime(self.root.lock(claim.shard), None)
        except FileNotFoundError:
            return False
        return True

    def clear_leftover(self, shard: str) -> None:
        """Remove a stale lock left on a settled shard (its holder was killed after committing).

        Called by the one worker whose slice the shard is in, so the extra stat is paid once per
        shard and launch, not once per worker.
        """
        lock = self.root.lock(shard)
        if not lock.exists():
            return
        held = read_record(lock, LockRecord)
        if held is None or self.is_stale(lock, held):
            lock.unlink(missing_ok=True)

    def release(self, claim: Claim) -> None:
        """Remove the lock if it is still ours (never someone else's)."""
        if self.holds(claim):
            self.root.lock(claim.shard).unlink(missing_ok=True)


def _alive(pid: int, started: float) -> bool:
    """True when ``pid`` runs and is the same process (start time within a second)."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def preference_order(n: int, process_index: int, process_count: int, worker: int, workers: int) -> list[int]:
    """Manifest positions in the order one worker tries them.

    Process I first takes positions ≡ I (mod P); its W local workers interleave over those
    (worker w starts with every W-th of them), then anything else, starting at the process's own
    offset so that idle processes spread out over the remaining shards.
    """
    own = list(range(process_index, n, process_count))
    first = own[worker::workers]
    first_set = set(first)
    rest_own = [p for p in own if p not in first_set]
    own_set = set(own)
    start = (process_index * n) // max(process_count, 1)
    others = [p for p in list(range(start, n)) + list(range(0, start)) if p not in own_set]
    return first + rest_own + others
