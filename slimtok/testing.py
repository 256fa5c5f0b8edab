"""Synthetic finished output roots, for tests and benchmarks of the stages that read finished roots.

``synthetic_root`` writes what dedup, mix planning, combine and status read of a finished root,
with no tokenizer and no source text: ``manifest.jsonl``, ``job.json``, one done record and one
document table per shard, the status journal a worker appends each done record's row to (one
journal, as from one worker), and (``data``) each shard's token file. Invariants a reader checks hold: each
table holds ``documents`` rows of DOC_TABLE_DTYPE and its recorded size and sha256; each done
record's ``tokens`` is its table's sum and ``bytes`` its data's size; job.json's manifest digest is
the manifest's. Token files are sparse files of zeros: nothing reads them but combine (and a mix
writing from them), and a sparse file costs no disk at the sizes the benchmarks plan over.
The same arguments give the same root (one seeded generator).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from .manifest import ShardEntry, manifest_digest
from .protocol import (
    DOC_TABLE_DTYPE,
    DOC_TABLE_VERSION,
    DoneRecord,
    JobSettings,
    OutputRoot,
    journal_line,
    write_atomic,
    write_json_lines,
    write_record,
)

#: the dtype of the synthetic token files (every synthetic id is 0, below any vocabulary size)
DTYPE = "uint16"


def synthetic_root(folder: str | os.PathLike[str], shards: int, docs_per_shard: int, *,
                   tokens: int | tuple[int, int] = 100, dup_fraction: float = 0.05, holdout: bool = True,
                   data: bool = False, checksums: bool = True, seed: int = 0) -> OutputRoot:
    """A finished root of ``shards`` shards of ``docs_per_shard`` documents each.

    ``tokens``: every document's token count, or (low, high): each drawn uniformly in [low, high].
    ``dup_fraction``: about this share of the rows repeat a hash of a pool drawn first (duplicates
    across shards for dedup to find); the other hashes are uniform over 128 bits.
    ``holdout``: 1% of the shards (at least one) are validation and as many test, the rest train;
    otherwise all train. Shard ``i`` is ``<split>/chunk1/shard_<i>``, in manifest order.
    ``data``: also each shard's token file; ``checksums``: with ``data``, record the data's sha256
    (combine verifies it) rather than none, which is for sizes where hashing the zeros would cost
    more than what is measured.
    """
    root = OutputRoot(folder)
    rng = np.random.default_rng(seed)
    held = max(1, shards // 100) if holdout else 0
    splits = ["train"] * (shards - 2 * held) + ["validation"] * held + ["test"] * held
    entries = [ShardEntry(f"{split}/chunk1/shard_{i}", split, 1, i, f"/synthetic/shard_{i}.jsonl.zst", 0)
               for i, split in enumerate(splits)]
    write_json_lines(root.manifest, entries, durable=False)
    write_record(root.job, JobSettings(manifest_sha256=manifest_digest(entries), shards=shards, tokenizer="synthetic",
                                       tokenizer_sha256="synthetic", vocab_size=1 << 16, eos_token_id=0,
                                       eos_token=None, dtype=DTYPE, text_key="text"), durable=False)
    itemsize = np.dtype(DTYPE).itemsize
    pool = _hashes(rng, max(1, docs_per_shard))
    journal: list[bytes] = []
    for e in entries:
        table = np.zeros(docs_per_shard, DOC_TABLE_DTYPE)
        if isinstance(tokens, int):
            table["tokens"] = tokens
        else:
            table["tokens"] = rng.integers(tokens[0], tokens[1] + 1, docs_per_shard, dtype=np.uint32)
        fresh = _hashes(rng, docs_per_shard)
        repeat = rng.random(docs_per_shard) < dup_fraction
        fresh[repeat] = pool[rng.integers(0, len(pool), int(repeat.sum()))]
        table["hash_hi"], table["hash_lo"] = fresh[:, 0], fresh[:, 1]
        path = root.table(e.id)
        write_atomic(path, table.tobytes(), durable=False)
        count = int(table["tokens"].sum(dtype=np.int64))
        size = count * itemsize if data else 0
        digest = ""
        if data:
            with root.storage.open_write(root.data(e.id), "truncate") as f:
                f.truncate(size)
            digest = _zeros_sha256(size) if checksums else ""
        record = DoneRecord(
            shard=e.id, split=e.split, file=root.relative(root.data(e.id)), lines=docs_per_shard,
            documents=docs_per_shard, tokens=count, bytes=size, sha256=digest, dtype=DTYPE, skipped={},
            source_size=0, token="synthetic", host="synthetic", finished_at=0.0, seconds=0.0,
            table=root.relative(path), table_bytes=table.nbytes,
            table_sha256=hashlib.sha256(table.tobytes()).hexdigest(),
            source_names=[""], table_version=DOC_TABLE_VERSION)
        write_record(root.done(e.id), record, durable=False)
        journal.append(journal_line(record))
    write_atomic(root.done_journal("synthetic"), b"".join(journal), durable=False)
    return root


def _hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random 128-bit hashes as (hi, lo) uint64 pairs over the whole range."""
    return rng.integers(0, np.iinfo(np.uint64).max, size=(n, 2), dtype=np.uint64, endpoint=True)


def _zeros_sha256(size: int) -> str:
    """sha256 of ``size`` zero bytes (a sparse token file's content), hashed in 1 MiB pieces."""
    h, zeros = hashlib.sha256(), bytes(1 << 20)
    for _ in range(size >> 20):
        h.update(zeros)
    h.update(zeros[:size & ((1 << 20) - 1)])
    return h.hexdigest()
