"""Planning at scale: synthetic finished roots (document tables and done records only, no token
data) and a timed plan of a mix over them in a fresh process.

    python3 -m slimtok.mix.bench --work /tmp/mix-plan --documents 10000000 100000000

Each measurement runs ``make_plan`` in a child python and reads the child's own CPU time
(``getrusage``) and peak RSS (``VmHWM``), before planning (imports done) and after: the difference
divided by the selected documents is the plan's memory per selected document, and the difference
between two sizes per further selected document is the slope (the constant cancels out when both
sizes read whole ``inputs.PIECE_ROWS`` pieces, see ``--shards``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from ..manifest import ShardEntry, manifest_digest
from ..protocol import (DOC_TABLE_DTYPE, DoneRecord, JobSettings, OutputRoot, write_atomic, write_json_lines,
                        write_record)

#: tokens of one synthetic document: uniform in [1, MAX_DOC_TOKENS]
MAX_DOC_TOKENS = 2000


def synthetic_root(folder: Path, documents: int, shards: int, seed: int) -> Path:
    """A finished root whose train split has ``documents`` rows over ``shards`` tables (random
    token counts and hashes; the shard .bin files are sparse files of the right size: planning
    never reads them, and writing from them copies zeros)."""
    out = OutputRoot(folder)
    rng = np.random.default_rng(seed)
    per_shard = np.full(shards, documents // shards, dtype=np.int64)
    per_shard[:documents % shards] += 1
    entries = []
    for i, rows in enumerate(per_shard.tolist()):
        shard = f"train/chunk1/example_train_{i}"
        entries.append(ShardEntry(shard, "train", 1, i, f"{shard}.jsonl.zst", 0))
        table = np.zeros(rows, dtype=DOC_TABLE_DTYPE)
        table["tokens"] = rng.integers(1, MAX_DOC_TOKENS + 1, rows, dtype=np.uint32)
        table["hash_hi"], table["hash_lo"] = rng.integers(0, 2**63, (2, rows), dtype=np.uint64)
        path = out.table(shard)
        write_atomic(path, table.tobytes(), durable=False)
        tokens = int(table["tokens"].sum(dtype=np.int64))
        data = out.data(shard)
        with out.storage.open_write(data, "truncate") as f:
            f.truncate(tokens * 4)
        write_record(out.done(shard), DoneRecord(
            shard=shard, split="train", file=out.relative(data), lines=rows, documents=rows, tokens=tokens,
            bytes=tokens * 4, sha256="0" * 64, dtype="uint32", skipped={}, source_size=0, token="synthetic",
            host="bench", finished_at=0.0, seconds=0.0, table=out.relative(path), table_bytes=table.nbytes,
            table_sha256="0" * 64, source_names=[""], table_version=1), durable=False)
    write_json_lines(out.manifest, entries)
    job = JobSettings(manifest_sha256=manifest_digest(entries), shards=len(entries), tokenizer="synthetic",
                      tokenizer_sha256="0" * 64, vocab_size=151669, eos_token_id=151645, eos_token="<|im_end|>",
                      dtype="uint32", text_key="text")
    write_atomic(out.job, job.to_json())
    return folder


def synthetic_mix(work: Path, documents: int, sources: int = 4, shards: int = 250) -> Path:
    """``sources`` roots of ``documents`` in total (made once per size) and a spec drawing half
    of their tokens by weights 6:1:1:1 (the first source 1.33 epochs: every document once, then a
    sample); returns the spec's path."""
    base = work / f"docs-{documents}-{shards}"
    roots = []
    for k in range(sources):
        root = base / f"source-{k}"
        if not (root / "job.json").exists():
            synthetic_root(root, documents // sources + (k < documents % sources), shards, seed=k)
        roots.append(root)
    available = (MAX_DOC_TOKENS + 1) / 2 * documents
    spec = {"seed": 1, "shuffle": "document", "total_tokens": int(available / 2),
            "sources": [{"name": f"s{k}", "root": str(r), "weight": 6.0 if k == 0 else 1.0, "max_epochs": 2}
                        for k, r in enumerate(roots)]}
    path = base / "spec.json"
    write_atomic(path, orjson.dumps(spec))
    return path


_CHILD = """
import json, resource, sys, time
from slimtok.mix import load_spec, make_plan
from slimtok.mix.inputs import load_sources
def usage():  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent
    r = resource.getrusage(resource.RUSAGE_SELF)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return r.ru_utime + r.ru_stime, hwm * 1024
cpu0, rss0 = usage()
began = time.perf_counter()
spec = load_spec(sys.argv[1])
plan = make_plan(spec, load_sources(spec)[0])
seconds = time.perf_counter() - began
cpu1, rss1 = usage()
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu1 - cpu0, "rss_before": rss0, "peak_rss": rss1,
                  "selected": sum(len(p) for p in plan.splits.values()),
                  "available_documents": sum(r.candidates for r in plan.sources)}))
"""


def bench_plan(spec_path: str | os.PathLike[str]) -> dict:
    """One plan of the spec in a fresh python: wall and CPU seconds, peak RSS, and the RSS it
    added per selected document."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                     os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", _CHILD, str(spec_path)], check=True, capture_output=True, env=env)
    result = json.loads(done.stdout)
    result["bytes_per_selected"] = (result["peak_rss"] - result["rss_before"]) / max(result["selected"], 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--documents", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--shards", type=int, default=250,
                        help="shards per source; with fewer than inputs.PIECE_ROWS rows a shard, the streaming "
                             "pieces (a constant) are smaller at the smaller sizes and look like a per-document cost")
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    previous = None
    for n in args.documents:
        made = time.perf_counter()
        spec = synthetic_mix(args.work, n, shards=args.shards)
        print(f"{n:,} documents: tables ready in {time.perf_counter() - made:.1f} s")
        r = bench_plan(spec)
        print(f"  plan {r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU, {r['selected']:,} selected of "
              f"{r['available_documents']:,}; peak RSS {r['peak_rss'] / 2**20:.0f} MiB "
              f"({r['rss_before'] / 2**20:.0f} MiB after imports): {r['bytes_per_selected']:.1f} B per selected document")
        if previous is not None and r["selected"] > previous["selected"]:  # the constant cancels out
            slope = (r["peak_rss"] - previous["peak_rss"]) / (r["selected"] - previous["selected"])
            print(f"  slope from the previous size: {slope:.2f} B of peak RSS per further selected document")
        previous = r
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
