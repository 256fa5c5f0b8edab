import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from slimtok.claims import Claimer, current_holder, preference_order
from slimtok.protocol import LockRecord, OutputRoot, create_exclusive, read_record


def _claimer(root, stale_after=60.0, worker=0):
    return Claimer(OutputRoot(root), current_holder(0, worker), stale_after, f"test-w{worker}")


def _race(root, shard, barrier, results):
    barrier.wait()
    claim = _claimer(root, worker=os.getpid()).try_claim(shard)
    results.put(claim.token if claim else None)
    barrier.wait()  # stay alive until all have tried: a dead holder's lock is rightly taken over


def test_only_one_of_16_simultaneous_claimers_wins(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(16), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(tmp_path, "train/chunk1/s0", barrier, results)) for _ in range(16)]
    for p in procs:
        p.start()
    tokens = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join()
    winners = [t for t in tokens if t]
    assert len(winners) == 1
    assert read_record(OutputRoot(tmp_path).lock("train/chunk1/s0"), LockRecord).token == winners[0]


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    child = subprocess.run([sys.executable, "-c",
                            "from slimtok.claims import Claimer, current_holder; from slimtok.protocol import OutputRoot;"
                            f"Claimer(OutputRoot({str(tmp_path)!r}), current_holder(0, 0), 60, 'c')"
                            ".try_claim('a/b')"], check=True)
    assert child.returncode == 0
    old = read_record(OutputRoot(tmp_path).lock("a/b"), LockRecord)
    claim = _claimer(tmp_path).try_claim("a/b")
    assert claim is not None and claim.previous.token == old.token
    assert not list(tmp_path.rglob("*.stolen"))


def test_live_holder_is_respected_until_silent_for_stale_after(tmp_path):
    holder = _claimer(tmp_path, worker=1)
    claim = holder.try_claim("s")
    other = _claimer(tmp_path, stale_after=1.0, worker=2)
    assert other.try_claim("s") is None  # alive (it is us) and fresh
    assert holder.refresh(claim)
    time.sleep(1.3)
    taken = other.try_claim("s")
    assert taken is not None and taken.previous.token == claim.token
    assert not holder.holds(claim) and not holder.refresh(claim)  # fenced: the old holder sees the loss
    holder.release(claim)  # must not remove the new holder's lock
    assert other.holds(taken)


def test_only_one_stealer_takes_a_stale_claim(tmp_path):
    first = _claimer(tmp_path, worker=1).try_claim("s")
    os.utime(OutputRoot(tmp_path).lock("s"), (time.time() - 100, time.time() - 100))
    stealers = [_claimer(tmp_path, stale_after=10, worker=w) for w in range(2, 6)]
    # Each holds a marker attempt in turn; after the first steal the lock is fresh again.
    results = [s.try_claim("s") for s in stealers]
    assert sum(r is not None for r in results) == 1
    assert first is not None


def test_create_exclusive_never_overwrites(tmp_path):
    target = tmp_path / "x.json"
    assert create_exclusive(target, b"one")
    assert not create_exclusive(target, b"two")
    assert target.read_bytes() == b"one"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.parametrize("n,p,w", [(100, 3, 2), (7, 4, 1), (60000, 64, 1)])
def test_preference_order_is_a_permutation_starting_with_own_residue(n, p, w):
    for i in range(p):
        for k in range(w):
            order = preference_order(n, i, p, k, w)
            assert sorted(order) == list(range(n))
            own = len(range(i, n, p))
            assert all(x % p == i for x in order[:own])
