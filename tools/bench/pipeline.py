"""Whole workers and stages on the bench corpus: the pipeline, memory, combine and consume sections.

Writes output roots under --work (``out-<label>-<run>``, ``out-<shard>``, ``consume-*``), big
shards under ``memory/``, and ``cat.bin``; reads their shards back to check ids. Worker CPU and
peak RSS come from the children (see harness.run_workers).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .corpus import big_shard, tokenized_root
from .harness import (
    PeakSampler,
    Result,
    Table,
    child,
    child_env,
    cpu_now,
    run_workers,
    settings_for,
    shard_ids,
    timed_cat,
    tree_bytes,
)


def bench_pipeline(table: Table, work: Path, manifest: Path, tokenizer: Path, backend: str, nbytes: int,
                   workers: int, label: str, run: int, **kw) -> tuple[str, int]:
    root = work / f"out-{label.replace(' ', '_')}-{run}"
    shutil.rmtree(root, ignore_errors=True)
    stats = run_workers(settings_for(manifest, root, tokenizer, backend, workers, **kw), workers)
    digest, tokens = shard_ids(root, manifest)
    table.add(Result(label, nbytes, max(s[0] for s in stats), sum(s[1] for s in stats), tokens,
                     max(s[2] for s in stats), digest))
    return digest, tokens


def bench_memory(table: Table, work: Path, texts: list[str], tokenizer: Path, backend: str, sizes: list[int],
                 huge: int) -> None:
    from slimtok.manifest import ShardEntry, write_manifest

    for size in sizes + ([huge] if huge else []):
        single = size == huge
        name = f"huge-{size >> 20}mb-doc" if single else f"shard-{size >> 20}mb"
        path = work / "memory" / "train" / "chunk1" / f"{name}.jsonl.zst"
        nbytes = big_shard(texts, path, size, single) if not path.exists() else size
        man_dir = work / "memory" / f"m-{name}"
        entry = ShardEntry(id=f"train/chunk1/{name}", split="train", chunk=1, index=0, path=str(path),
                           size=path.stat().st_size)
        manifest, _ = write_manifest([entry], man_dir, work / "memory")
        label = f"memory {name} ({backend})"
        root = work / f"out-{name}"
        shutil.rmtree(root, ignore_errors=True)
        stats = run_workers(settings_for(manifest, root, tokenizer, backend), 1)
        digest, tokens = shard_ids(root, manifest)
        table.add(Result(label, nbytes, stats[0][0], stats[0][1], tokens, stats[0][2], digest))
        if single:
            same = _whole_doc_digest(path, tokenizer) == digest
            table.note(f"huge document: ids {'identical' if same else 'DIFFERENT'} "
                               "to one whole-document fastokens encode (separate process)")


def bench_prepend_huge(table: Table, work: Path, texts: list[str], mb: int) -> None:
    """A Llama-2/Mistral-style tokenizer (``Prepend("▁")`` + ``Replace(" ", "▁")``, no
    pre-tokenizer) on one ``mb`` MB document on one line: the Encoder's pieces (the cut rule) against
    one whole-document encode, which is what such a tokenizer got before it had a cut rule. The
    tokenizer is the tests' SentencePiece-shaped variant, built offline (tests/helpers)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from helpers.tokenizer_families import build_family

    folder = work / "prepend-tokenizer"
    if not (folder / "tokenizer.json").exists():
        build_family("llama2_prepend", folder)
    doc = work / f"prepend-{mb}mb.txt"
    parts, size = [], 0
    while size < mb << 20:
        for t in texts:
            parts.append(" ".join(t.split()))
            size += len(parts[-1]) + 1
            if size >= mb << 20:
                break
    doc.write_text(" ".join(parts))
    nbytes = doc.stat().st_size
    digests = {}
    for mode in ("whole", "pieces"):
        report = work / f"prepend-{mode}.json"
        subprocess.run(child("huge-doc", str(folder / "tokenizer.json"), str(doc), mode, str(report)), check=True,
                       env=child_env())
        got = json.loads(report.read_text())
        digests[mode] = got["sha256"]
        table.add(Result(f"prepend tokenizer, {mb} MB document ({mode})", nbytes, got["wall"], got["cpu"],
                         got["tokens"], got["rss_growth"], got["sha256"]))
    table.note(f"prepend huge document: pieces' ids {'identical' if len(set(digests.values())) == 1 else 'DIFFERENT'}"
               " to the whole-document encode")


def _whole_doc_digest(path: Path, tokenizer: Path) -> str:
    """sha256 of tokens(doc)+[eos] for the one document in ``path``, encoded in one call, in a child
    (the ``whole-doc`` child: this process keeps no copy of the huge document's ids)."""
    from slimtok.tokenizer import load_tokenizer

    eos = load_tokenizer(str(tokenizer)).eos_token_id
    report = path.with_name(path.name + ".digest.json")
    subprocess.run(child("whole-doc", str(path), str(tokenizer / "tokenizer.json"), str(eos), str(report)),
                   check=True, env=child_env())
    return json.loads(report.read_text())


def bench_combine(table: Table, work: Path, root: Path, runs: int) -> None:
    from slimtok.combine import combine
    from slimtok.protocol import OutputRoot

    r = OutputRoot(root)
    files = sorted(r.root.joinpath("shards").rglob("*.bin"))
    nbytes = sum(f.stat().st_size for f in files)
    for _ in range(runs):
        dest = work / "cat.bin"
        table.add(Result("cat shards (+fsync)", nbytes, timed_cat(files, dest), 0.0))
        for verify in (False, True):
            r.combined("train").unlink(missing_ok=True)
            os.sync()
            c0, w0 = cpu_now(), time.time()
            combine(root, ["train"], verify=verify, log=lambda s: None)
            table.add(Result(f"combine ({'sha256 verify' if verify else '--no-verify'})", nbytes,
                             time.time() - w0, cpu_now() - c0))
    if r.combined("train").read_bytes() != dest.read_bytes():
        raise SystemExit("combine output differs from cat of the shards")


def bench_consume(table: Table, work: Path, corpus: Path, tokenizer: Path, backend: str) -> None:
    """Issue 16: the peak extra disk of `combine --consume` against a copying combine, each on its own
    copy of one tokenized root, sampling the root's allocated bytes every 20 ms."""
    from slimtok.combine import combine

    source, _ = tokenized_root(work, "consume", corpus, tokenizer, backend)
    shards = sorted((source / "shards").rglob("*.bin"))
    largest, split = max(f.stat().st_size for f in shards), sum(f.stat().st_size for f in shards)
    combined = {}
    for consume in (False, True):
        root = work / f"consume-{'move' if consume else 'copy'}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(source, root)
        os.sync()
        before = tree_bytes(root)
        w0 = time.time()
        with PeakSampler(functools.partial(tree_bytes, root)) as sampled:
            combine(root, ["train"], consume=consume, log=lambda s: None)
        wall = time.time() - w0
        combined[consume] = hashlib.sha256((root / "train.bin").read_bytes()).hexdigest()
        table.note(
            f"consume: combine {'--consume' if consume else '(copying)'} of {len(shards)} shards, {split / 1e6:.1f} MB "
            f"(largest shard {largest / 1e6:.2f} MB): peak extra disk {(sampled.peak - before) / 1e6:.2f} MB = "
            f"{(sampled.peak - before) / largest:.2f} x the largest shard, {(sampled.peak - before) / split:.2f} x the "
            f"split; after: {(tree_bytes(root) - before) / 1e6:+.2f} MB; {wall:.2f} s, {sampled.samples} samples")
    if combined[False] != combined[True]:
        raise SystemExit("combine --consume wrote another train.bin than the copying combine")


