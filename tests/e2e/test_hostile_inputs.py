"""Hostile input files (issue 24, item 2): a named pipe or an endless device where a shard should
be, a shard whose one line never ends, an encoder that panics. None may hang a launcher or a
worker, grow memory without bound, or kill a worker unnamed: each becomes a refusal or a failed
record naming the file and the reason, and the good shards are tokenized as usual."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import cli
from helpers.cli import slimtok, tokenize_cmd
from helpers.corpus import make_dataset, reference_ids
from slimtok.budget import sample_texts
from slimtok.errors import ShardReadError
from slimtok.formats.streams import open_shard

#: A hang shows as a timeout, never as a test run that never ends.
TIMEOUT = 120


def _failed(root: Path) -> dict[str, str]:
    return {json.loads(p.read_text())["shard"]: json.loads(p.read_text())["reason"]
            for p in (root / "failed").rglob("*.json")}


def _returns_within(fn, seconds: float = 10.0) -> object:
    """``fn()``'s result, or a test failure if it has not returned within ``seconds`` (it hangs)."""
    box: list[object] = []
    thread = threading.Thread(target=lambda: box.append(_outcome(fn)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"{fn} blocked for {seconds}s"
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _outcome(fn) -> object:
    try:
        return fn()
    except BaseException as exc:  # handed to the test thread, which re-raises it
        return exc


def test_fifo_and_device_shards_fail_with_their_reason_and_nothing_hangs(tmp_path, bpe_tokenizer):
    """After the manifest, one shard becomes a FIFO (nobody writes to it: opening it for reading
    would block forever) and one a link to /dev/zero (endless). The launch (disk sampler included)
    and its workers must finish, record both in failed/ with the kind of file, and write the
    other shards exactly."""
    ds = make_dataset(tmp_path / "ds", train_shards=4, docs_per_shard=8, holdout_docs=2)
    manifest = cli.manifest(tmp_path, ds)
    fifo = ds / "train/chunk2/example_train_1.jsonl.zst"
    device = ds / "train/chunk1/example_train_2.jsonl.zst"
    fifo.unlink()
    os.mkfifo(fifo)
    device.unlink()
    device.symlink_to("/dev/zero")
    good = tmp_path / "good.jsonl"
    good.write_text("".join(line for line in manifest.read_text().splitlines(keepends=True)
                            if "example_train_1" not in line and "example_train_2" not in line))
    root = tmp_path / "out"
    proc = subprocess.run(tokenize_cmd(manifest, root, bpe_tokenizer, "--spawn-workers", 2), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 1, proc.stderr
    failed = _failed(root)
    assert set(failed) == {"train/chunk2/example_train_1", "train/chunk1/example_train_2"}
    assert "is a named pipe (FIFO), not a regular file" in failed["train/chunk2/example_train_1"]
    assert "is a character device, not a regular file" in failed["train/chunk1/example_train_2"]
    slimtok("combine", "--output-root", root, "--quiet", "--allow-partial", timeout=TIMEOUT)
    got = np.fromfile(root / "train.bin", dtype=np.uint32)
    assert np.array_equal(got, reference_ids(good, bpe_tokenizer / "tokenizer.json", 0, "train"))


def test_manifest_refuses_a_fifo_naming_it(tmp_path):
    ds = make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=4, holdout_docs=2)
    os.mkfifo(ds / "train/chunk1/pipe.jsonl.zst")
    proc = slimtok("manifest", "--dataset-dir", ds, "--output-dir", tmp_path / "m", check=False, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr
    assert "train/chunk1/pipe.jsonl.zst matched --pattern but is a named pipe (FIFO)" in proc.stderr
    assert not (tmp_path / "m" / "manifest.jsonl").exists()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_reader_and_sampler_never_open_a_special_file(tmp_path, kind):
    path = tmp_path / "x.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(ShardReadError, match="not a regular file") as caught:
        _returns_within(lambda: open_shard(path))
    assert str(path) in str(caught.value)
    assert _returns_within(lambda: sample_texts(str(path), "text")) is None


def test_sampler_reads_a_bounded_prefix_of_an_endless_line(tmp_path):
    """A zstd shard whose first line is 1 GiB of one byte (a few hundred KiB on disk): the sample
    decompresses a bounded prefix, finds no complete line and gives up, in a child whose peak RSS
    is measured."""
    import zstandard

    path = tmp_path / "endless.jsonl.zst"
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as w:
        w.write(b'{"text": "')
        chunk = b"a" * (1 << 24)
        for _ in range(64):
            w.write(chunk)
    code = ("import resource, sys\nfrom slimtok.budget import sample_texts\n"
            "print(sample_texts(sys.argv[1], 'text'), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    baseline = subprocess.run(["python", "-c", code.replace("sample_texts(sys.argv[1], 'text')", "None"), "x"],
                              capture_output=True, text=True, check=True, timeout=TIMEOUT)
    proc = subprocess.run(["python", "-c", code, str(path)], capture_output=True, text=True, check=True,
                          timeout=TIMEOUT)
    *result, peak_kib = proc.stdout.split()
    grown = int(peak_kib) - int(baseline.stdout.split()[-1])
    assert grown < 64 << 10, f"sampling grew the process by {grown} KiB"
    assert result == ["None"]


#: A sitecustomize for the launch and every worker it starts (forked or spawned): the reference
#: encoder raises a BaseException subclass, as pyo3's PanicException is, on a batch with the marker.
PANIC_HOOK = """
from slimtok.tokenizer.encoder import Encoder

class PanicException(BaseException):
    pass

real = Encoder._encode_reference

def panicking(self, texts):
    if any("PANIC-HERE" in t for t in texts):
        raise PanicException("regex backtrack limit exceeded")
    return real(self, texts)

Encoder._encode_reference = panicking
"""


def test_a_native_encoder_panic_fails_that_shard_and_the_worker_goes_on(tmp_path, bpe_tokenizer):
    """The panic hits one of four shards. That shard's failed record names the panic, and the one
    worker goes on to tokenize the other three exactly (the job ends with status 1: shards failed)."""
    from helpers.corpus import doc_line, sample_documents, write_shard

    ds = make_dataset(tmp_path / "ds", train_shards=4, docs_per_shard=8, holdout_docs=2)
    bad = ds / "train/chunk1/example_train_0.jsonl.zst"
    write_shard(bad, [doc_line(d) for d in sample_documents(3, seed=99)] + [doc_line("PANIC-HERE")])
    manifest = cli.manifest(tmp_path, ds)
    good = tmp_path / "good.jsonl"
    good.write_text("".join(line for line in manifest.read_text().splitlines(keepends=True)
                            if "example_train_0" not in line))
    root = tmp_path / "out"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PANIC_HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(tokenize_cmd(manifest, root, bpe_tokenizer, "--backend", "tokenizers", "--spawn-workers", 1),
                          capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert proc.returncode == 1, proc.stderr
    failed = _failed(root)
    assert list(failed) == ["train/chunk1/example_train_0"]
    assert "native encoder panicked" in failed["train/chunk1/example_train_0"]
    assert "PanicException: regex backtrack limit exceeded" in failed["train/chunk1/example_train_0"]
    assert len(list((root / "done").rglob("*.json"))) == 5  # 3 train shards + the 2 holdouts
    slimtok("combine", "--output-root", root, "--quiet", "--allow-partial", timeout=TIMEOUT)
    got = np.fromfile(root / "train.bin", dtype=np.uint32)
    assert np.array_equal(got, reference_ids(good, bpe_tokenizer / "tokenizer.json", 0, "train"))


#: Runs the command given as arguments and prints the peak RSS (KiB) of its largest process: the
#: launcher or one of the workers it starts and waits for.
PEAK = ("import resource, subprocess, sys\nproc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(proc.stderr)\n"
        "print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


def _peak(cmd: list[str]) -> tuple[int, int, str]:
    proc = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, timeout=TIMEOUT * 3)
    code, peak = proc.stdout.split()
    return int(code), int(peak), proc.stderr


def test_a_shard_of_one_endless_line_is_skipped_within_the_cap(tmp_path, bpe_tokenizer):
    """A 1 GiB line with no newline (a few hundred KiB of zstd) among good shards: the worker that
    claims it reads past it within the cap and records it as a skipped line; the peak RSS of every
    process stays within the cap of what the same job without that shard needs."""
    import zstandard

    cap = 8 << 20
    ds = make_dataset(tmp_path / "ds", train_shards=3, docs_per_shard=8, holdout_docs=2)
    manifest_good = cli.manifest(tmp_path / "good", ds)
    endless = ds / "train/chunk1/example_train_9.jsonl.zst"
    with open(endless, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as w:
        w.write(b'{"text": "')
        chunk = b"a" * (1 << 24)
        for _ in range(64):
            w.write(chunk)
    manifest = cli.manifest(tmp_path / "all", ds)
    flags = ("--spawn-workers", 1, "--max-line-bytes", cap)
    code, base, err = _peak(tokenize_cmd(manifest_good, tmp_path / "out-good", bpe_tokenizer, *flags))
    assert code == 0, err
    code, peak, err = _peak(tokenize_cmd(manifest, tmp_path / "out", bpe_tokenizer, *flags))
    assert code == 1, err  # the endless shard holds no document: it fails as empty, naming the skip
    reason = _failed(tmp_path / "out")["train/chunk1/example_train_9"]
    assert "no usable document in 1 lines" in reason and "line_too_long=1" in reason, reason
    grown_mib = (peak - base) / 1024
    assert grown_mib < 3 * cap / (1 << 20) + 32, f"the endless line grew the largest process by {grown_mib:.0f} MiB"
