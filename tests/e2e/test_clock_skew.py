"""Liveness compares no two clocks: a holder whose clock is hours behind keeps its claims, and one
whose clock is ahead loses its shard after ``--stale-after`` like any other.

The skewed holder runs under libfaketime (LD_PRELOAD + FAKETIME). A local file system stores the
mtimes a process sets with utime(2), so the holder's heartbeats carry its faked clock, which is
what a file system whose clients stamp mtimes (some FUSE and object-store mounts) does.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import cli
from helpers.cli import tokenize_cmd
from helpers.launches import (
    assert_no_orphans,
    assert_taken_over_and_stood_down,
    claims_per_shard,
    combined_split,
    framed_dataset,
    run_captured,
    stop_while_holding_a_shard,
    wait_for,
    worker_logs,
)
from slimtok.claims import Claimer
from slimtok.protocol import Holder, OutputRoot

pytestmark = pytest.mark.slow  # launches under a faked clock, waiting out --stale-after

LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))


def _faked(offset: str) -> dict[str, str]:
    """Environment that runs a process with its wall clock shifted by ``offset`` (e.g. ``-2h``).

    Its monotonic clock stays true: a skewed host's timeouts still last as long as they say, and a
    faked monotonic clock would stretch every timed wait (Event.wait) by the offset."""
    if not LIBFAKETIME:
        pytest.skip("libfaketime is not installed (apt-get install libfaketime)")
    return {**os.environ, "LD_PRELOAD": LIBFAKETIME[0], "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


HOLDER = """
import os, sys, threading, time
from slimtok.claims import Claimer
from slimtok.protocol import Holder, OutputRoot
root, n, seconds = OutputRoot(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
me = Claimer(root, Holder("behind", "", os.getpid(), 0.0, 0, 0), 1.0)
claims = [me.try_claim(f"s{i}") for i in range(n)]
for c in claims:  # a client-stamping file system stamps the new lock with this host's clock
    now = time.time_ns()
    os.utime(root.lock(c.shard), ns=(now, now))
open(sys.argv[4], "w").close()
end = time.monotonic() + seconds
while time.monotonic() < end:
    threading.Event().wait(0.2)  # not time.sleep: libfaketime refuses its absolute monotonic sleep
    lost = [c.shard for c in claims if not me.refresh(c)]
    if lost:
        sys.exit(f"lost {lost}")
print("held", sum(me.holds(c) for c in claims), flush=True)
"""


def test_live_holder_two_hours_behind_keeps_all_its_claims(tmp_path):
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "out"), "34", "6", str(ready)],
                              env=_faked("-2h"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(ready.exists, 60)
    lag = time.time() - os.stat(OutputRoot(tmp_path / "out").lock("s0")).st_mtime
    assert 7100 < lag < 7300  # the locks really carry a clock 2 h behind
    observer = Claimer(OutputRoot(tmp_path / "out"), Holder("undisturbed", "", 1, 0.0, 1, 0), 1.0)
    taken = []
    while holder.poll() is None:  # the waiting loop's polls, across which the observer remembers
        taken += [s for s in (f"s{i}" for i in range(34)) if observer.try_claim(s)]
        time.sleep(0.3)
    out, err = holder.communicate()
    assert holder.returncode == 0, err
    assert taken == [] and "held 34" in out


def test_stopped_holder_120_s_ahead_loses_its_shard_after_stale_after(tmp_path, bpe_tokenizer):
    ds = framed_dataset(tmp_path / "ds", shards=3, docs=600)
    manifest = cli.manifest(tmp_path, ds)
    root = tmp_path / "out"
    common = ["--spawn-workers", 1, "--process-count", 2, "--stale-after", 2, "--tokens-per-write", 500,
              "--checkpoint-every", 0]
    a = subprocess.Popen(tokenize_cmd(manifest, root, bpe_tokenizer, *common, "--process-index", 0),
                         env=_faked("+120s"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # its heartbeats (every 0.33 s) stamp the lock with a clock two minutes ahead of ours
    worker, shard = stop_while_holding_a_shard(root, ahead=100.0)
    try:
        # Judged by the mtime against a clock the lock would look fresh for another 120 s; watched
        # unchanged it is stale after 2. The bound is far from both (the takeover needs ~2 s).
        b = subprocess.run(tokenize_cmd(manifest, root, bpe_tokenizer, *common, "--process-index", 1),
                           capture_output=True, text=True, timeout=60)
        assert b.returncode == 0, b.stderr
    finally:
        worker.send_signal(signal.SIGCONT)
    assert_taken_over_and_stood_down(a, root, shard, manifest, bpe_tokenizer)


def test_a_worker_two_hours_behind_beside_an_undisturbed_one_gives_the_undisturbed_output(tmp_path, bpe_tokenizer):
    ds = framed_dataset(tmp_path / "ds", shards=4, docs=300)
    manifest = cli.manifest(tmp_path, ds)
    clean = tmp_path / "clean"
    assert run_captured(tokenize_cmd(manifest, clean, bpe_tokenizer, "--spawn-workers", "1")).returncode == 0
    root = tmp_path / "out"
    common = ["--spawn-workers", 1, "--process-count", 2, "--stale-after", 2, "--tokens-per-write", 500,
              "--checkpoint-every", 0]
    a = subprocess.Popen(tokenize_cmd(manifest, root, bpe_tokenizer, *common, "--process-index", 0), env=_faked("-2h"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    b = run_captured(tokenize_cmd(manifest, root, bpe_tokenizer, *common, "--process-index", 1))
    _, err = a.communicate(timeout=600)
    assert a.returncode == 0 and b.returncode == 0, err.decode() + b.stderr
    assert "taking over from" not in worker_logs(root)
    assert set(claims_per_shard(root).values()) == {1}
    assert_no_orphans(root)
    assert combined_split(root) == combined_split(clean)
