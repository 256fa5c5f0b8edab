"""A synthetic output root for timing dedup, combine and mix planning: done records and
document tables, and (``data=True``) token files of zeros that match them.

``bench_dedup`` times a dedup of one. Without ``data`` the shards' data files do not exist, since
dedup and mix planning read only tables and records.
"""

from __future__ import annotations

import hashlib
import resource
import time
from pathlib import Path

import numpy as np

from ..protocol import (DOC_TABLE_DTYPE, DoneRecord, JobSettings, OutputRoot, write_atomic, write_json_lines,
                        write_record)
from .plan import UNIT_SHARDS
from .run import run_dedup


def synthetic_root(folder: str | Path, shards: int, docs_per_shard: int, dup_fraction: float = 0.05,
                   seed: int = 0, data: bool = False, tokens_per_doc: int = 100) -> OutputRoot:
    """An output root of ``shards`` shards (1% validation, 1% test, the rest train) whose tables
    repeat about ``dup_fraction`` of their hashes from earlier rows, ``tokens_per_doc`` tokens each;
    ``data``: also write each shard's uint16 token file (zeros) with its size and sha256 recorded."""
    root = OutputRoot(folder)
    rng = np.random.default_rng(seed)
    holdout = max(1, shards // 100)
    splits = ["train"] * (shards - 2 * holdout) + ["validation"] * holdout + ["test"] * holdout
    entries = [{"id": f"{s}/chunk1/shard_{i}", "split": s, "chunk": 1, "index": i, "path": f"/bench/{i}",
                "size": 0} for i, s in enumerate(splits)]
    write_json_lines(root.manifest, entries, durable=False)
    write_record(root.job, JobSettings("bench", shards, "bench", "bench", 1 << 16, 0, None, "uint16", "text"),
                 durable=False)
    pool = _hashes(rng, max(1, docs_per_shard))
    for e in entries:
        table = np.zeros(docs_per_shard, DOC_TABLE_DTYPE)
        fresh = _hashes(rng, docs_per_shard)
        repeat = rng.random(docs_per_shard) < dup_fraction
        fresh[repeat] = pool[rng.integers(0, len(pool), int(repeat.sum()))]
        table["tokens"], table["hash_hi"], table["hash_lo"] = tokens_per_doc, fresh[:, 0], fresh[:, 1]
        path = root.table(e["id"])
        write_atomic(path, table.tobytes(), durable=False)
        ids = bytes(2 * tokens_per_doc * docs_per_shard) if data else b""
        if data:
            write_atomic(root.data(e["id"]), ids, durable=False)
        record = DoneRecord(e["id"], e["split"], root.relative(root.data(e["id"])), docs_per_shard, docs_per_shard,
                            tokens_per_doc * docs_per_shard, len(ids), hashlib.sha256(ids).hexdigest() if data else "",
                            "uint16", {}, 0, "bench", "bench", 0.0, 0.0,
                            table=root.relative(path), table_bytes=table.nbytes,
                            table_sha256=hashlib.sha256(table.tobytes()).hexdigest())
        write_record(root.done(e["id"]), record, durable=False)
    return root


def _hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random 128-bit hashes as (hi, lo) uint64 pairs over the whole range."""
    return rng.integers(0, np.iinfo(np.uint64).max, size=(n, 2), dtype=np.uint64, endpoint=True)


def bench_dedup(tmpdir: str | Path, shards: int, docs_per_shard: int, buckets: int | None = None,
                workers: int = 1, unit_shards: int = UNIT_SHARDS) -> dict[str, float]:
    """Build a synthetic root under ``tmpdir`` and dedup it; seconds, documents, drops, peak RSS."""
    root = synthetic_root(Path(tmpdir) / "dedup-bench", shards, docs_per_shard)
    started = time.perf_counter()
    job = run_dedup(root.root, buckets, workers, unit_shards=unit_shards)
    seconds = time.perf_counter() - started
    return {"shards": shards, "documents": job.documents, "seconds": seconds,
            "dropped": sum(job.dropped.values()),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
