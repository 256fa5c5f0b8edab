"""A re-pin never happens under a running launch that asks other settings, and waits for no launch
asking the same (slimtok.job.pin: launch leases). Each case starts from a job in which nothing was
kept, which the re-pin rules re-pin, and puts the lease of one other launch beside it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

from helpers.cli import manifest as list_manifest
from helpers.corpus import make_dataset
from slimtok.errors import JobMismatch
from slimtok.job import TokenizeSettings, keep_lease_fresh, launch_lease, pin, pin_job, read_job, request_digest
from slimtok.job.pin import LEASE_TTL, running_launches
from slimtok.protocol import LaunchLease, OutputRoot, boot_id, hostname, write_record
from slimtok.tokenizer.loading import local_tokenizer_file


@pytest.fixture()
def job(tmp_path, bpe_tokenizer):
    """A root pinned with --text-key body (nothing done), and how to ask it other settings."""
    listed = list_manifest(tmp_path, make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=3, holdout_docs=1))
    root = OutputRoot(tmp_path / "out")

    def settings(text_key: str) -> TokenizeSettings:
        return TokenizeSettings(manifest=str(listed), output_root=str(root.root), tokenizer=str(bpe_tokenizer),
                                text_key=text_key)

    old = pin_job(settings("body")).pinned
    return root, settings, old


def _request(settings: TokenizeSettings) -> str:
    """What a launch of ``settings`` records in its lease, computed from its inputs."""
    file = local_tokenizer_file(settings.tokenizer)
    assert file is not None
    return request_digest(settings, hashlib.sha256(file.read_bytes()).hexdigest(), file.parent)


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


@pytest.mark.parametrize("other", ["same", "not yet pinning", "dead, asking other"])
def test_a_lease_that_cannot_conflict_lets_the_job_be_re_pinned(job, other):
    root, settings, old = job
    asked = settings("text")
    request = {"same": _request(asked), "not yet pinning": None, "dead, asking other": _request(settings("content"))}
    pid = _dead_pid() if other.startswith("dead") else os.getpid()
    write_record(root.launch_lease("other"), LaunchLease(hostname(), boot_id(), pid, 0.0, request[other]))
    new = pin_job(asked).pinned
    assert old.text_key == "body" and new.text_key == "text" and read_job(root) == new
    assert root.storage.exists(root.launch_lease("other")) == (not other.startswith("dead"))  # a dead one is cleared


@pytest.mark.parametrize("other", ["asking other", "asking what no digest tells", "unreadable"])
def test_a_running_launch_that_may_ask_other_settings_refuses_the_re_pin_naming_them(job, other):
    root, settings, old = job
    lease = root.launch_lease("other")
    if other == "unreadable":
        root.storage.write_whole(lease, b"{")
    else:
        request = _request(settings("content")) if other == "asking other" else ""
        write_record(lease, LaunchLease(hostname(), boot_id(), os.getpid(), 0.0, request))
    with pytest.raises(JobMismatch) as refused:
        pin_job(settings("text"))
    line = str(refused.value)
    assert "text_key: pinned 'body', requested 'text'" in line and "another launch" in line
    assert line.startswith(str(root.job)) and str(lease.parent) in line
    assert read_job(root) == old  # nothing was re-pinned
    assert not root.pin_stages() and root.launch_leases() == {"other"}  # the refused launch left nothing


@pytest.mark.parametrize("refreshed", ["fresh", "expired"])
def test_a_lease_of_another_host_blocks_until_it_expires_by_the_stores_clock(job, refreshed):
    """A launch killed on another node leaves a lease no pid check can judge: it blocks a re-pin
    while its mtime is within LEASE_TTL of the store's now (a probe touched in the root), and is
    removed once older, so the relaunch re-pins. Ages come from mtimes only: no host clock."""
    root, settings, old = job
    lease = root.launch_lease("other")
    write_record(lease, LaunchLease("another-node", "another-boot", 1, 0.0, _request(settings("content"))))
    probe = root.root / "store-now"
    probe.touch()
    store_now = probe.stat().st_mtime_ns  # the store's clock, as the pin reads it
    age = 2 * LEASE_TTL if refreshed == "expired" else LEASE_TTL / 2
    os.utime(lease, ns=(store_now - int(age * 1e9),) * 2)
    if refreshed == "fresh":
        with pytest.raises(JobMismatch, match="another launch that may ask other settings is running"):
            pin_job(settings("text"))
        assert read_job(root) == old and root.launch_leases() == {"other"}
    else:
        assert pin_job(settings("text")).pinned.text_key == "text"
        assert root.launch_leases() == set()  # the expired lease was removed


def test_a_live_launch_keeps_its_lease_fresh(job, monkeypatch):
    """The lease's mtime is moved on while its launch runs, so it never expires under a live launch."""
    root, _settings, _old = job
    monkeypatch.setattr(pin, "LEASE_TTL", 1.2)  # refreshed every 0.2 s
    lease = root.launch_lease("mine")
    with launch_lease(root, "mine"):
        keep_lease_fresh(root, "mine")  # as a launch does once its workers are forked
        os.utime(lease, ns=(0, 0))  # as if last refreshed long ago
        for _ in range(600):  # bounded: the refresher runs every 0.2 s
            if lease.stat().st_mtime_ns > 0:
                break
            time.sleep(0.1)
        assert lease.stat().st_mtime_ns > 0
        assert set(running_launches(root, "someone else")) == {"mine"}
    assert root.launch_leases() == set()
