import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from slimtok.claims import Claimer, current_holder, preference_order
from slimtok.protocol import DoneRecord, Holder, LockRecord, OutputRoot, create_exclusive, read_record, write_record


def _claimer(root, stale_after=60.0, worker=0):
    return Claimer(OutputRoot(root), current_holder(0, worker), stale_after)


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
                            "from slimtok.claims import Claimer, current_holder; "
                            "from slimtok.protocol import OutputRoot;"
                            f"Claimer(OutputRoot({str(tmp_path)!r}), current_holder(0, 0), 60)"
                            ".try_claim('a/b')"], check=True)
    assert child.returncode == 0
    old = read_record(OutputRoot(tmp_path).lock("a/b"), LockRecord)
    claim = _claimer(tmp_path).try_claim("a/b")
    assert claim is not None and claim.previous.token == old.token
    assert not list(tmp_path.rglob("*.stolen"))


def _other_host(root, stale_after, name="elsewhere"):
    """A Claimer on another host: only its own watch of a lock can make the lock stale to it."""
    return Claimer(OutputRoot(root), Holder(name, "", 1, 0.0, 9, 9), stale_after)


def test_live_holder_is_respected_until_unchanged_for_stale_after(tmp_path):
    holder = _claimer(tmp_path, worker=1)
    claim = holder.try_claim("s")
    other = _claimer(tmp_path, stale_after=1.0, worker=2)
    assert other.try_claim("s") is None  # alive (it is us) and first seen
    time.sleep(1.3)
    assert holder.refresh(claim)
    assert other.try_claim("s") is None  # watched 1.3 s, but the heartbeat just changed the lock
    time.sleep(1.3)
    taken = other.try_claim("s")
    assert taken is not None and taken.previous.token == claim.token
    assert not holder.holds(claim) and not holder.refresh(claim)  # fenced: the old holder sees the loss
    holder.release(claim)  # must not remove the new holder's lock
    assert other.holds(taken)


def test_an_old_mtime_alone_is_not_staleness_a_relaunched_observer_watches_first(tmp_path):
    first = _claimer(tmp_path, worker=1).try_claim("s")
    lock = OutputRoot(tmp_path).lock("s")
    os.utime(lock, (time.time() - 7200, time.time() - 7200))  # stamped by a clock 2 h behind
    observer = _other_host(tmp_path, stale_after=0.5)
    assert observer.try_claim("s") is None  # first seen: not stale however old its mtime
    time.sleep(0.7)
    taken = observer.try_claim("s")
    assert taken is not None and taken.previous.token == first.token


def test_a_lock_stamped_in_the_future_goes_stale_after_stale_after_of_watching(tmp_path):
    first = _claimer(tmp_path, worker=1).try_claim("s")
    lock = OutputRoot(tmp_path).lock("s")
    os.utime(lock, (time.time() + 3600, time.time() + 3600))  # a dead holder's clock 1 h ahead
    observer = _other_host(tmp_path, stale_after=0.5)
    assert observer.try_claim("s") is None
    time.sleep(0.7)
    taken = observer.try_claim("s")
    assert taken is not None and taken.previous.token == first.token


def test_every_refresh_moves_the_mtime_to_a_later_whole_second_even_past_the_clock(tmp_path):
    holder = _claimer(tmp_path)
    claim = holder.try_claim("s")
    lock = OutputRoot(tmp_path).lock("s")
    ahead = (int(time.time()) + 3600) * 10**9 + 5  # set by a clock an hour ahead
    os.utime(lock, ns=(ahead, ahead))
    mtimes = []
    for _ in range(3):
        assert holder.refresh(claim)
        mtimes.append(os.stat(lock).st_mtime_ns)
    assert mtimes == [ahead - 5 + k * 10**9 for k in (1, 2, 3)]
    os.utime(lock, ns=(0, 0))  # and a lagging mtime is brought up to our clock
    before = time.time_ns()
    assert holder.refresh(claim) and os.stat(lock).st_mtime_ns >= before


def test_only_one_stealer_takes_a_stale_claim(tmp_path):
    first = _claimer(tmp_path, worker=1).try_claim("s")
    stealers = [_other_host(tmp_path, stale_after=0.5, name=f"host{w}") for w in range(2, 6)]
    assert [s.try_claim("s") for s in stealers] == [None] * 4  # each starts watching
    time.sleep(0.7)
    # Each tries in turn; after the first steal the lock changed, so the others watch it anew.
    results = [s.try_claim("s") for s in stealers]
    assert sum(r is not None for r in results) == 1
    assert first is not None


def test_a_leftover_lock_of_the_committed_claim_is_cleared_at_once(tmp_path):
    root = OutputRoot(tmp_path)
    claim = _other_host(tmp_path, 60.0, "committer").try_claim("s")
    root.done("s").parent.mkdir(parents=True, exist_ok=True)
    write_record(root.done("s"), DoneRecord(shard="s", split="train", file="shards/s.bin", lines=0, documents=0,
                                            tokens=0, bytes=0, sha256="", dtype="uint32", skipped={}, source_size=0,
                                            token=claim.token, host="committer", finished_at=0.0, seconds=0.0))
    other = _other_host(tmp_path, 60.0, "next-launch")
    other.clear_leftover("s")
    assert not root.lock("s").exists()
    again = _other_host(tmp_path, 60.0, "third").try_claim("s")  # a lock of another claim stays
    other.clear_leftover("s")
    assert read_record(root.lock("s"), LockRecord).token == again.token


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
            order = list(preference_order(n, i, p, k, w))
            assert sorted(order) == list(range(n))
            own = len(range(i, n, p))
            assert all(x % p == i for x in order[:own])
