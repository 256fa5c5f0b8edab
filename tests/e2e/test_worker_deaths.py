"""Workers killed by a signal (the OOM killer, an operator's kill -9): the launcher names each in one
line (worker, pid, signal, the shard it held), starts a replacement that takes the dead holder's
claim over at once, and exits 0 when every shard is done; a shard that kills every worker holding
it is failed after two deaths and named, and the launch exits 1. Status shows a killed worker once,
as dead, never as a worker still working on its shard."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from helpers import cli
from helpers.cli import slimtok, tokenize_cmd
from helpers.corpus import doc_line, reference_ids, sample_documents, write_shard
from helpers.launches import assert_no_orphans, combined_split, framed_dataset, worker_logs
from slimtok.protocol import OutputRoot

KILLED_LINE = re.compile(r"^slimtok-worker-(\d+) \(pid (\d+)\) was killed by (SIG\w+) (.*)$", re.M)


def _kill_a_worker_holding_a_shard(root: Path, launcher: int, timeout: float = 60.0) -> tuple[int, str]:
    """SIGKILL a worker of ``launcher`` while its lock names an unfinished shard; (pid, shard)."""
    out = OutputRoot(root)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for lock in (root / "locks").rglob("*.lock"):
            try:
                record = json.loads(lock.read_text())
                worker = psutil.Process(record["pid"])
            except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
                continue
            if worker.ppid() != launcher:
                continue
            worker.send_signal(signal.SIGSTOP)  # hold it still while we look again
            if lock.exists() and not out.done(record["shard"]).exists():
                worker.send_signal(signal.SIGKILL)
                return record["pid"], record["shard"]
            worker.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"no worker held an unfinished shard under {root / 'locks'} within {timeout} s")


def test_killed_worker_is_named_replaced_and_the_job_finishes_exit_0(tmp_path, bpe_tokenizer):
    ds = framed_dataset(tmp_path / "ds", shards=6, docs=400)
    manifest = cli.manifest(tmp_path, ds)
    root = tmp_path / "out"
    launch = subprocess.Popen(tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", 2,
                                           "--tokens-per-write", 500),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid, shard = _kill_a_worker_holding_a_shard(root, launch.pid)
    _, err = launch.communicate(timeout=600)
    assert launch.returncode == 0, err

    lines = KILLED_LINE.findall(err)
    assert len(lines) == 1, err
    slot, named_pid, signame, rest = lines[0]
    assert (int(named_pid), signame) == (pid, "SIGKILL")
    assert rest.startswith(f"while holding {shard}; replaced by pid "), rest
    replacement = int(rest.split("replaced by pid ")[1].split(" ")[0])
    logs = worker_logs(root)
    # the replacement (its own name and log) took the dead holder's claim over without waiting
    assert f"-w{slot}r1" in " ".join(p.name for p in (root / "logs").glob("*.log"))
    assert f"taking over from {socket.gethostname()} pid {pid}" in logs

    assert_no_orphans(root)
    got = np.frombuffer(combined_split(root), dtype=np.uint32)
    assert np.array_equal(got, reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train"))

    status = json.loads(slimtok("status", "--output-root", root, "--json").stdout)
    rows = [w for w in status["workers"] if w["pid"] == pid]
    assert len(rows) == 1 and rows[0]["health"] == "dead" and rows[0]["state"] == "killed by SIGKILL", rows
    assert rows[0]["shard"] == shard
    assert [w["health"] for w in status["workers"] if w["pid"] == replacement] == ["exited"]
    assert not [w for w in status["workers"] if w["health"] == "ok"], status["workers"]


#: Runs the command line with an encoder that kills its own process on a document holding
#: "SLIMTOK-POISON" (as the OOM killer or a native crash would). At module level, so a spawned worker,
#: which imports this file again as its main module, is patched too.
POISONED = '''
import os, signal, sys
import slimtok.tokenizer.encoder as encoder

_encode = encoder.Encoder.encode


def encode(self, texts):
    if any("SLIMTOK-POISON" in t for t in texts):
        os.kill(os.getpid(), signal.SIGKILL)
    return _encode(self, texts)


encoder.Encoder.encode = encode

if __name__ == "__main__":
    from slimtok.cli import main
    main(sys.argv[1:])
'''


def _poisoned_launch(tmp_path: Path, tokenizer: Path, poisoned: set[int]) -> tuple[Path, Path, str]:
    """Four shards, those of ``poisoned`` holding one killing document, tokenized by 2 workers
    under :data:`POISONED`; (manifest, output root, "exit <status>" and the launch's stderr)."""
    ds = tmp_path / "ds"
    for i in range(4):
        docs = sample_documents(20, seed=i)
        if i in poisoned:
            docs[5] = "SLIMTOK-POISON " + docs[5]
        write_shard(ds / f"train/chunk1/example_train_{i}.jsonl.zst", [doc_line(d) for d in docs])
    manifest = cli.manifest(tmp_path, ds)
    root = tmp_path / "out"
    script = tmp_path / "poisoned.py"
    script.write_text(POISONED)
    run = subprocess.run([sys.executable, str(script), *cli.tokenize_args(manifest, root, tokenizer,
                                                                          "--spawn-workers", 2)],
                         capture_output=True, text=True, timeout=600)
    return manifest, root, f"exit {run.returncode}\n{run.stderr}"


def test_a_shard_that_kills_every_holder_is_failed_named_and_replacements_stop(tmp_path, bpe_tokenizer):
    manifest, root, err = _poisoned_launch(tmp_path, bpe_tokenizer, {1})
    assert err.startswith("exit 1\n"), err  # a shard failed, named below

    poisoned = next(json.loads(line)["id"] for line in manifest.read_text().splitlines()
                    if "example_train_1" in json.loads(line)["path"])
    lines = KILLED_LINE.findall(err)
    # The second death fails the shard, so no claim is made on it after the launcher sees that
    # death; a live worker may take it over from the dead holder in the moment before (one more
    # death per other worker at most).
    assert 2 <= len(lines) <= 3, err
    assert all(signame == "SIGKILL" and rest.startswith(f"while holding {poisoned}")
               for _s, _p, signame, rest in lines), lines
    failed = json.loads((root / "failed" / f"{poisoned}.json").read_text())
    assert "2 workers were killed while holding it" in failed["reason"]
    assert all(f"pid {p} by SIGKILL" in failed["reason"] for _s, p, _n, _r in lines[:2])
    out = OutputRoot(root)
    others = [json.loads(line)["id"] for line in manifest.read_text().splitlines()]
    assert {s for s in others if s != poisoned} <= out.done_ids()
    assert poisoned not in out.done_ids()


def test_replacements_stop_at_the_bound_and_the_exit_status_says_the_job_is_unfinished(tmp_path, bpe_tokenizer):
    _manifest, root, err = _poisoned_launch(tmp_path, bpe_tokenizer, {0, 1, 2, 3})
    assert err.startswith("exit 3\n"), err  # shards are left that no worker can take: not done, not failed
    lines = KILLED_LINE.findall(err)
    replaced = [rest for *_x, rest in lines if "; replaced by pid " in rest]
    refused = [rest for *_x, rest in lines if "; not replaced: 2 worker(s) already replaced" in rest]
    assert len(replaced) == 2 and refused and len(replaced) + len(refused) == len(lines), err
    assert all(rest.startswith("while holding train/chunk1/example_train_") for *_x, rest in lines), err
    assert not OutputRoot(root).done_ids()
