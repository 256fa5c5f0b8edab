"""Planning a dedup: the inputs (done records with document tables), the global document order,
and the cut into units. Planning is arithmetic over the manifest: no file per shard per bucket.

Global order of a document: (split rank train < validation < test, manifest position, row of its
shard's document table). Shards are numbered by that order (``rank``), and a document's order is
the uint64 ``split << 62 | rank << 32 | row``, so comparing orders compares places, and the shards
of one unit (a contiguous range of ranks) own one contiguous range of orders.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DedupError
from ..manifest import ShardEntry, read_manifest
from ..protocol import SPLITS, DedupPlan, DoneRecord, JobSettings, OutputRoot, read_record

#: Shards per scatter and gather unit: few enough that a unit's tables fit in memory, many enough
#: that 100k shards make ~1.6k units (files), not one per shard.
UNIT_SHARDS = 64
#: ``--buckets auto``: one bucket per ROWS_PER_BUCKET documents, at least 1 and at most
#: AUTO_MAX_BUCKETS. A small job then pays for three units in all (each unit costs a claim, records
#: and fsyncs, which dominate a job of a few thousand documents); from 16.8 M documents on it is
#: 256 buckets, each task holding 1/256 of the job's rows (~45 bytes each).
ROWS_PER_BUCKET = 1 << 16
AUTO_MAX_BUCKETS = 256
MAX_BUCKETS = 1 << 16
MAX_RANK = 1 << 30


@dataclass
class Inputs:
    """The shards of a dedup in global order, with their done records."""

    entries: list[ShardEntry]
    records: list[DoneRecord]

    def documents(self) -> int:
        return sum(r.documents for r in self.records)


def global_order(entries: Sequence[ShardEntry]) -> list[ShardEntry]:
    """The manifest's shards, train first, then validation, then test, each in manifest order."""
    return sorted(entries, key=lambda e: SPLITS.index(e.split))  # stable: keeps manifest order


def order_base(split: str, rank: int) -> int:
    """Order of row 0 of the shard at ``rank``; row r has ``order_base + r``."""
    return (SPLITS.index(split) << 62) | (rank << 32)


def read_inputs(root: OutputRoot) -> Inputs:
    """Every shard of the manifest, each finished and with a document table, or a DedupError."""
    if read_record(root.job, JobSettings) is None:
        raise DedupError("job.json is missing or unreadable", root.job,
                         f"is {root.root} a slimtok output root? run `slimtok tokenize` first")
    entries = global_order(read_manifest(root.manifest, check_files=False))  # checked when it was pinned
    if len(entries) >= MAX_RANK:
        raise DedupError(f"{len(entries):,} shards exceed the {MAX_RANK:,} a dedup orders", root.manifest)
    records = []
    for e in entries:
        record = read_record(root.done(e.id), DoneRecord)
        if record is None:
            raise DedupError(f"shard {e.id} is not finished (no done record)", root.done(e.id),
                             f"run `slimtok tokenize --output-root {root.root}` to finish it, then dedup")
        if not record.table:
            raise DedupError(f"shard {e.id} has no document table (written by an older slimtok)",
                             root.done(e.id), "dedup needs document tables: tokenize again into a new "
                             "output root with this slimtok, then run `slimtok dedup` there")
        if record.documents >= 1 << 32:
            raise DedupError(f"shard {e.id} has {record.documents:,} documents, more than 2^32",
                             root.done(e.id))
        records.append(record)
    return Inputs(entries, records)


def fingerprint(inputs: Inputs) -> str:
    """sha256 over the shards' ids, data checksums and table hashes in global order: changes with any input."""
    h = hashlib.sha256()
    for e, r in zip(inputs.entries, inputs.records, strict=True):
        h.update(f"{e.id}\t{e.split}\t{r.checksum or r.sha256}\t{r.table_sha256}\n".encode())
    return h.hexdigest()


def auto_buckets(documents: int) -> int:
    """The bucket count ``--buckets auto`` picks for a job of ``documents`` documents."""
    return min(AUTO_MAX_BUCKETS, max(1, -(-documents // ROWS_PER_BUCKET)))


def make_plan(inputs: Inputs, buckets: int | None = None, unit_shards: int = UNIT_SHARDS) -> DedupPlan:
    """The plan for ``inputs``; ``buckets`` None: ``auto_buckets`` of the job's documents."""
    if buckets is None:
        buckets = auto_buckets(inputs.documents())
    if not 1 <= buckets <= MAX_BUCKETS:
        raise DedupError(f"--buckets {buckets} must be between 1 and {MAX_BUCKETS}")
    if unit_shards < 1:
        raise DedupError(f"unit size {unit_shards} must be at least 1 shard")
    return DedupPlan(fingerprint(inputs), len(inputs.entries), inputs.documents(), buckets, unit_shards)


def unit_count(plan: DedupPlan, phase: str) -> int:
    """Units of a phase: buckets for ``bucket``, shard ranges for ``scatter`` and ``gather``."""
    if phase == "bucket":
        return plan.buckets
    return max(1, -(-plan.shards // plan.unit_shards))


def unit_ranks(plan: DedupPlan, k: int) -> range:
    """Ranks (global-order positions) of the shards of scatter/gather unit ``k``."""
    return range(k * plan.unit_shards, min((k + 1) * plan.unit_shards, plan.shards))


def unit_of_rank(plan: DedupPlan, rank: int) -> int:
    return rank // plan.unit_shards


def bucket_of(hash_hi: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket of each hash: its top bits scaled to [0, buckets) (contiguous hash ranges)."""
    return ((hash_hi >> np.uint64(32)) * np.uint64(buckets)) >> np.uint64(32)
