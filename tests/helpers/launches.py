"""Launches watched from outside, for the fault and clock tests: run a ``slimtok tokenize`` to
its end or stop one of its workers mid-shard, read what its workers logged, and check that a
finished root holds no partial files or locks and combines to the expected bytes.

Reads only the output root (logs/, locks/, done/, shards/) and psutil's view of the processes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

from helpers.cli import slimtok
from helpers.corpus import doc_line, reference_ids, sample_documents, write_shard
from slimtok.protocol import OutputRoot


def run_captured(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run ``cmd`` to its end, both streams captured as text (a hung launch fails after 10 min)."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def wait_for(predicate: Callable[[], object], timeout: float = 120.0) -> bool:
    """Poll ``predicate`` every 20 ms until it holds (True) or ``timeout`` s pass (False)."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def worker_logs(root: Path) -> str:
    """Every worker log of the root (``logs/*.log``), in name order."""
    return "".join(p.read_text(errors="replace") for p in sorted((root / "logs").glob("*.log")))


def claims_per_shard(root: Path) -> dict[str, int]:
    """How many times the workers logged claiming each shard."""
    counts: dict[str, int] = {}
    for line in worker_logs(root).splitlines():
        if ": claimed " in line:
            shard = line.split(": claimed ", 1)[1].split(" ", 1)[0]
            counts[shard] = counts.get(shard, 0) + 1
    return counts


def assert_no_orphans(root: Path) -> None:
    """No partial shard output and no claim is left under the root."""
    assert not list((root / "shards").rglob("*.part")), "partial output left behind"
    assert not list((root / "locks").rglob("*.lock")), "locks left behind"


def combined_split(root: Path, split: str = "train") -> bytes:
    """``slimtok combine`` of one split; the bytes of its token file."""
    slimtok("combine", "--output-root", root, "--splits", split)
    return (root / {"train": "train.bin", "validation": "val.bin", "test": "test.bin"}[split]).read_bytes()


def framed_dataset(root: Path, shards: int, docs: int, seed: int = 7) -> Path:
    """``shards`` train shards of ``docs`` documents over three chunks, each in two zstd frames."""
    for i in range(shards):
        write_shard(root / f"train/chunk{1 + i % 3}/example_train_{i}.jsonl.zst",
                    [doc_line(t) for t in sample_documents(docs, seed=seed * 100 + i)], frames=2)
    return root


def stop_while_holding_a_shard(root: Path, ahead: float | None = None,
                               timeout: float = 30.0) -> tuple[psutil.Process, str]:
    """SIGSTOP a worker while it holds an unfinished shard; (worker, shard). With ``ahead``, only a
    lock whose mtime (its heartbeat) is that many seconds past our clock counts. A shard can finish
    between a look and the signal, so the lock and the missing done record are checked again once
    the worker is stopped, and the look repeats otherwise."""
    out = OutputRoot(root)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for lock in (root / "locks").rglob("*.lock"):
            try:
                stamped = ahead is None or lock.stat().st_mtime > time.time() + ahead
                record = json.loads(lock.read_text())
            except (FileNotFoundError, ValueError):
                continue
            if not stamped:
                continue
            worker = psutil.Process(record["pid"])
            worker.send_signal(signal.SIGSTOP)
            if lock.exists() and not out.done(record["shard"]).exists():
                return worker, record["shard"]
            worker.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"no worker held a shard under {root / 'locks'}"
                         + (f" with a clock {ahead} s ahead" if ahead is not None else "") + f" within {timeout} s")


def assert_taken_over_and_stood_down(first: subprocess.Popen, root: Path, shard: str, manifest: Path,
                                     tokenizer: Path) -> None:
    """The stopped first launch, once woken, finished cleanly after another took ``shard`` over;
    nothing is left behind and the output equals the reference encoding."""
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()
    logs = worker_logs(root)
    assert "taking over from" in logs and "stopping this copy" in logs
    assert claims_per_shard(root)[shard] == 2
    assert_no_orphans(root)
    got = np.frombuffer(combined_split(root), dtype=np.uint32)
    assert np.array_equal(got, reference_ids(manifest, tokenizer / "tokenizer.json", 0, "train"))
