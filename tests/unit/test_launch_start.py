"""How a launcher starts its workers: forked from a single-threaded launcher, which loads the job's
tokenizer once for all of them, or spawned, each loading it itself; both give the same ids. The
launcher imports neither numpy nor tokenizers before it starts workers, and a signal that comes
while it loads the tokenizer starts none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import slimtok, slimtok_in_python
from helpers.corpus import make_dataset, reference_ids
from slimtok import launch
from slimtok.errors import EXIT_INTERRUPTED, EXIT_OK
from slimtok.job import TokenizeSettings
from slimtok.protocol import OutputRoot


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("start")
    make_dataset(tmp / "ds", train_shards=4, docs_per_shard=8, holdout_docs=2)
    slimtok("manifest", "--dataset-dir", tmp / "ds", "--output-dir", tmp / "m")
    return tmp / "m" / "manifest.jsonl"


def _worker_logs(root: Path) -> str:
    return "".join(p.read_text() for p in sorted((root / "logs").glob("*.log")))


def _shard_ids(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "shards").rglob("*.bin"))}


def _combined(root: Path, manifest: Path, tokenizer: Path) -> tuple[np.ndarray, np.ndarray]:
    slimtok("combine", "--output-root", root, "--quiet")
    job = json.loads((root / "job.json").read_text())
    got = np.fromfile(root / "train.bin", dtype=job["dtype"])
    return got, reference_ids(manifest, tokenizer / "tokenizer.json", job["eos_token_id"], "train")


def test_the_command_forks_its_workers_which_share_the_launchers_tokenizer(manifest, bpe_tokenizer, tmp_path):
    root = tmp_path / "out"
    proc = slimtok("tokenize", "--manifest", manifest, "--output-root", root, "--tokenizer", bpe_tokenizer,
                   "--spawn-workers", "2")
    assert "2 worker(s) started (forked" in proc.stderr + proc.stdout
    logs = _worker_logs(root)
    # (a worker that finds every shard claimed before its first claim loads nothing: hence >= 1)
    assert logs.count("tokenizer shared with the launcher that forked this worker") >= 1, logs
    assert "loaded from" not in logs
    got, want = _combined(root, manifest, bpe_tokenizer)
    assert np.array_equal(got, want)


def test_a_launcher_running_other_threads_spawns_its_workers_with_the_same_ids(manifest, bpe_tokenizer, tmp_path):
    """In this test process another thread is running: forking it could copy a held lock, so the
    workers are spawned, and each loads the tokenizer itself."""
    forked_root, spawned_root = tmp_path / "forked", tmp_path / "spawned"
    slimtok("tokenize", "--manifest", manifest, "--output-root", forked_root, "--tokenizer", bpe_tokenizer,
            "--spawn-workers", "2", "--quiet")
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    try:
        assert launch.start_method() == "spawn"
        lines: list[str] = []
        settings = TokenizeSettings(manifest=str(manifest), output_root=str(spawned_root),
                                    tokenizer=str(bpe_tokenizer), workers=2)
        assert launch.tokenize(settings, log=lines.append) == EXIT_OK
    finally:
        release.set()
        other.join()
    assert any("2 worker(s) started (spawned" in line for line in lines), lines
    logs = _worker_logs(spawned_root)
    assert logs.count("tokenizer loaded from") >= 1 and "shared with the launcher" not in logs, logs
    assert _shard_ids(spawned_root) == _shard_ids(forked_root) and _shard_ids(forked_root)


def test_a_fresh_single_threaded_python_forks_and_a_second_thread_makes_it_spawn():
    # a joined thread can stay listed for a moment while the kernel finishes its exit
    code = ("import threading, time\nfrom slimtok.launch import start_method\nprint(start_method())\n"
            "e = threading.Event()\nt = threading.Thread(target=e.wait)\nt.start()\nprint(start_method())\n"
            "e.set()\nt.join()\nend = time.time() + 5\n"
            "while start_method() != 'fork' and time.time() < end:\n    time.sleep(0.01)\nprint(start_method())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["fork", "spawn", "fork"]


def test_the_launcher_imports_neither_numpy_nor_tokenizers_before_starting_workers(manifest, bpe_tokenizer,
                                                                                   tmp_path):
    """Pinning a new job from a local tokenizer.json reads its JSON only; numpy and tokenizers are
    imported by the preload, once for every forked worker (a fresh python records what is loaded
    when the workers start)."""
    root = tmp_path / "out"
    hook = ("import sys\nfrom slimtok import launch\nreal = launch._prepare\nseen = []\n"
            "def prepare(settings):\n"
            "    seen.append(sorted(m for m in ('numpy', 'tokenizers', 'tqdm') if m in sys.modules))\n"
            "    return real(settings)\n"
            "launch._prepare = prepare")
    proc = slimtok_in_python(hook, "print('EXIT', code, 'BEFORE', seen)", "tokenize", "--manifest", manifest,
                             "--output-root", root, "--tokenizer", bpe_tokenizer, "--spawn-workers", "1", "--quiet")
    assert "EXIT 0 BEFORE [[]]" in proc.stdout, proc.stdout + proc.stderr
    assert "shared with the launcher" in _worker_logs(root)


def test_a_signal_while_the_tokenizer_loads_starts_no_worker_and_a_relaunch_finishes(manifest, bpe_tokenizer,
                                                                                   tmp_path, monkeypatch):
    root = tmp_path / "out"
    settings = TokenizeSettings(manifest=str(manifest), output_root=str(root), tokenizer=str(bpe_tokenizer),
                                workers=1)
    real = launch._prepare

    def interrupted(s):
        os.kill(os.getpid(), signal.SIGTERM)  # taken by the launcher's handler, as from `kill`
        return real(s)

    monkeypatch.setattr(launch, "_prepare", interrupted)
    assert launch.tokenize(settings) == EXIT_INTERRUPTED
    out = OutputRoot(root)
    assert not out.done_ids() and not list((root / "locks").rglob("*.lock")) and not (root / "logs").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the launcher's handler is gone again
    monkeypatch.setattr(launch, "_prepare", real)
    assert launch.tokenize(settings) == EXIT_OK
    got, want = _combined(root, manifest, bpe_tokenizer)
    assert np.array_equal(got, want)


def test_an_encoder_given_what_load_backends_loaded_loads_nothing_and_encodes_the_same(bpe_tokenizer, monkeypatch):
    from tokenizers import Tokenizer

    from slimtok.tokenizer import Encoder, encoder, load_backends, load_tokenizer

    path = bpe_tokenizer / "tokenizer.json"
    policy = load_tokenizer(str(bpe_tokenizer)).policy
    texts = ["Hello there, world.", "A second document\n\nwith two paragraphs.", ""]
    alone = Encoder(path, policy, "uint32", "tokenizers")
    loaded = load_backends(path, "tokenizers")
    assert loaded.fast is None and loaded.reference_cpu > 0
    calls: list[str] = []
    for name in ("read_tokenizer_file", "_load_fastokens"):
        real = getattr(encoder, name)
        monkeypatch.setattr(encoder, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    shared = Encoder(path, policy, "uint32", "tokenizers", loaded=loaded)
    deferred = Encoder(path, policy, "uint32", "auto", defer_fastokens=True,
                       loaded=load_backends(path, "auto", defer_fastokens=True))
    assert calls == ["read_tokenizer_file"]  # the second load_backends; neither encoder loaded anything
    assert "deferred" in deferred.report.verification
    for other in (shared, deferred):
        a_ids, a_lengths = alone.encode(texts)
        o_ids, o_lengths = other.encode(texts)
        assert a_lengths == o_lengths and np.array_equal(a_ids, o_ids)
    with pytest.raises(ValueError, match="need the tokenizer's path"):
        Encoder(Tokenizer.from_file(str(path)), policy, "uint32", "tokenizers", loaded=loaded)
