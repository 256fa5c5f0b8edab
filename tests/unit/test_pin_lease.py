"""A re-pin never happens under a running launch that asks other settings, and waits for no launch
asking the same (slimtok.job.pin: launch leases). Each case starts from a job in which nothing was
kept, which the re-pin rules re-pin, and puts the lease of one other launch beside it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from helpers.cli import manifest as list_manifest
from helpers.corpus import make_dataset
from slimtok.errors import JobMismatch
from slimtok.job import TokenizeSettings, pin_job, read_job, request_digest
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
