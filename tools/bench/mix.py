"""Mixing (issue 17): the mix section (writing, against `cat`) and the mix-plan section (planning).

The mix section tokenizes three roots from the bench corpus's train shards (``out-mix-<i>``, made
once per --work) and writes mixes of them to ``mix-out-<shuffle>-<workers>`` (removed first). The
mix-plan section writes synthetic roots (``slimtok.testing.synthetic_root``, tables and sparse
token files) under ``--work/mix-plan/docs-<n>-<shards>``, kept for the next run, and plans a mix of
them in a ``mix-plan`` child, whose CPU and VmHWM before and after planning are its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import orjson

from .corpus import tokenized_root
from .harness import Result, Table, child, child_env, cpu_now, timed_cat

#: tokens of one synthetic document in the mix-plan section: uniform in [1, MAX_DOC_TOKENS]
MAX_DOC_TOKENS = 2000


def timed_mix(spec_path: Path, output_root: Path, workers: int) -> dict:
    """One mix written to ``output_root`` (which must not exist yet, so nothing is skipped):
    seconds and bytes written."""
    from slimtok.mix import load_spec, mix

    began = time.perf_counter()
    _, meta = mix(load_spec(spec_path), output_root, workers)
    seconds = time.perf_counter() - began
    assert meta is not None
    return {"seconds": seconds, "bytes": sum(info["bytes"] for info in meta["splits"].values())}


def bench_mix_section(table: Table, work: Path, corpus: Path, tokenizer: Path, backend: str, runs: int,
                      worker_counts: list[int]) -> None:
    """Issue 17: `timed_mix` over three roots tokenized from the bench corpus (its train
    shards dealt round-robin), every document taken once, with `shuffle: none` and `document`, with
    each of ``worker_counts``, against `cat` of the same shard files onto the same disk (+fsync).
    Chunks of 1/8 of the documents, so that workers have chunks to share (a SlimPajama-sized mix
    has thousands of its default 65,536-document chunks)."""
    from slimtok.manifest import build_manifest
    from slimtok.protocol import DoneRecord, read_record

    _, found = build_manifest(corpus, ("*.jsonl.zst",))
    train = [e for e in found if e.split == "train"]
    roots = [tokenized_root(work, f"mix-{i}", corpus, tokenizer, backend, train[i::3])[0] for i in range(3)]
    records = [[rec for p in sorted((r / "done").rglob("*.json")) if (rec := read_record(p, DoneRecord)) is not None]
               for r in roots]  # each root was just tokenized: every record reads
    files = [r / rec.file for r, recs in zip(roots, records, strict=True) for rec in recs]
    nbytes = sum(f.stat().st_size for f in files)
    sources = "".join(f"  - {{name: part{i}, root: {r}, tokens: {sum(rec.tokens for rec in recs)}}}\n"
                      for i, (r, recs) in enumerate(zip(roots, records, strict=True)))
    chunk = max(1, sum(rec.documents for recs in records for rec in recs) // 8)
    for _ in range(runs):
        table.add(Result("cat of the mix's shards (+fsync)", nbytes, timed_cat(files, work / "mix-cat.bin"), 0.0))
        for shuffle in ("none", "document"):
            spec = work / f"mix-{shuffle}.yaml"
            spec.write_text(f"seed: 7\nshuffle: {shuffle}\nchunk_documents: {chunk}\nsources:\n{sources}")
            for workers in worker_counts:
                out_root = work / f"mix-out-{shuffle}-{workers}"
                shutil.rmtree(out_root, ignore_errors=True)
                os.sync()
                c0 = cpu_now()
                got = timed_mix(spec, out_root, workers)
                if got["bytes"] != nbytes:
                    raise SystemExit(f"mix wrote {got['bytes']} bytes, the shards hold {nbytes}: not every document "
                                     "was taken once")
                table.add(Result(f"mix shuffle: {shuffle} ({workers} workers)", got["bytes"], got["seconds"],
                                 cpu_now() - c0))
    for shuffle, target in (("none", 0.8), ("document", 0.5)):
        for workers in worker_counts:
            ratio = table.ratio(f"mix shuffle: {shuffle} ({workers} workers)", "cat of the mix's shards (+fsync)",
                                "mb_wall")
            table.note(f"ratio mix shuffle: {shuffle} ({workers} workers) / cat per wall-s: {ratio} over "
                               f"{nbytes / 1e6:.1f} MB (target >= {target}: "
                               f"{'met' if float(ratio) >= target else 'NOT met'})")


def synthetic_mix(work: Path, documents: int, sources: int = 4, shards: int = 250) -> Path:
    """``sources`` roots of ``documents`` in total (made once per size; each shard holds
    documents // (sources * shards) of them) and a spec drawing half of their tokens by weights
    6:1:1:1 (the first source 1.33 epochs: every document once, then a sample); the spec's path."""
    from slimtok.testing import synthetic_root

    base = work / f"docs-{documents}-{shards}"
    per_shard = max(1, documents // (sources * shards))
    roots = []
    for k in range(sources):
        root = base / f"source-{k}"
        if not (root / "bench-made").exists():
            shutil.rmtree(root, ignore_errors=True)
            synthetic_root(root, shards, per_shard, tokens=(1, MAX_DOC_TOKENS), holdout=False, data=True,
                           checksums=False, seed=k)
            (root / "bench-made").touch()
        roots.append(root)
    available = (MAX_DOC_TOKENS + 1) / 2 * per_shard * shards * sources
    spec = {"seed": 1, "shuffle": "document", "total_tokens": int(available / 2),
            "sources": [{"name": f"s{k}", "root": str(r), "weight": 6.0 if k == 0 else 1.0, "max_epochs": 2}
                        for k, r in enumerate(roots)]}
    path = base / "spec.json"
    path.write_bytes(orjson.dumps(spec))
    return path


def bench_mix_plan(table: Table, work: Path, sizes: list[int], shards: int) -> None:
    """Planning at scale: a mix plan over 4 synthetic roots of each of ``sizes`` documents in all,
    in a fresh python: wall and CPU seconds, peak RSS, and the RSS it added per selected document;
    between two sizes, the slope per further selected document (the constant cancels out when both
    sizes read whole ``inputs.PIECE_ROWS`` pieces, see --mix-plan-shards)."""
    previous = None
    for n in sizes:
        made = time.perf_counter()
        spec = synthetic_mix(work / "mix-plan", n, shards=shards)
        ready = time.perf_counter() - made
        report = spec.with_name("plan.json")
        subprocess.run(child("mix-plan", str(spec), str(report)), check=True, env=child_env())
        r = json.loads(report.read_text())
        per = (r["peak_rss"] - r["rss_before"]) / max(r["selected"], 1)
        table.note(f"mix plan, {n:,} documents (tables ready in {ready:.1f} s): {r['seconds']:.1f} s wall, "
                   f"{r['cpu_seconds']:.1f} s CPU, {r['selected']:,} selected of {r['available_documents']:,}; "
                   f"peak RSS {r['peak_rss'] / 2**20:.0f} MiB ({r['rss_before'] / 2**20:.0f} MiB after imports): "
                   f"{per:.1f} B per selected document")
        if previous is not None and r["selected"] > previous["selected"]:  # the constant cancels out
            slope = (r["peak_rss"] - previous["peak_rss"]) / (r["selected"] - previous["selected"])
            table.note(f"mix plan: slope from the previous size: {slope:.2f} B of peak RSS per further selected "
                       "document")
        previous = r
