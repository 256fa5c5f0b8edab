"""A link planted at a worker's heartbeat file while it runs (issue 24, item 5): nothing is written
through it, one line naming it is logged, and the heartbeat thread, which also refreshes the
worker's claims, keeps beating, so the claim it holds is never taken for stale."""

from __future__ import annotations

import logging
import os
import threading

from slimtok.claims import Claimer, current_holder
from slimtok.executor import HeldClaims
from slimtok.protocol import Heartbeat, OutputRoot, read_record
from slimtok.worker.heartbeat import Heartbeats
from slimtok.worker.stats import Stats


def test_a_link_at_the_heartbeat_mid_run_is_refused_once_and_the_claims_stay_fresh(tmp_path, caplog):
    root = OutputRoot(tmp_path / "out")
    outside = tmp_path / "elsewhere"
    outside.write_bytes(b"another user's bytes\n")
    os.utime(outside, ns=(10**18, 10**18))
    me = current_holder(0, 0)
    claimer = Claimer(root, me, 60)
    claim = claimer.try_claim("train/a")
    assert claim is not None
    beats = Heartbeats(root, "w0", me, 0, Stats(), 0.01)
    beats.start()
    heartbeat = root.heartbeat("w0")
    heartbeat.unlink()
    heartbeat.symlink_to(outside)

    ticks = threading.Semaphore(0)

    def tick() -> None:
        beats.tick("train/a")
        ticks.release()

    lock = root.lock("train/a")
    os.utime(lock, ns=(10**9, 10**9))  # so a refresh is seen by the mtime moving on
    with caplog.at_level(logging.WARNING, logger="slimtok.worker"), HeldClaims(claimer, 0.01, tick=tick) as held:
        held.hold(claim)
        for _ in range(5):  # five rounds: the thread outlived the refused writes
            assert ticks.acquire(timeout=60)
    assert not held.lost(claim)
    assert lock.stat().st_mtime_ns > 10**9  # refreshed after the link was planted
    assert (outside.read_bytes(), outside.stat().st_mtime_ns) == (b"another user's bytes\n", 10**18)
    assert heartbeat.is_symlink()
    refusals = [r.getMessage() for r in caplog.records if "symbolic link" in r.getMessage()]
    assert refusals == [f"w0: {heartbeat}: is a symbolic link where slimtok writes its own file; slimtok never "
                        f"writes through a link; remove the link (nothing was written through it) and run the "
                        f"command again"]

    heartbeat.unlink()  # removed: the next beat writes the file again
    beats.tick(None)
    beat = read_record(heartbeat, Heartbeat)
    assert beat is not None and beat.state == "waiting"
