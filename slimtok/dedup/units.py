"""What one unit of each dedup phase computes. Each is a pure function of its inputs, so any
holder of a unit (after a kill, a steal, on another node) writes the same bytes.

* scatter k: the rows (hash, order) of unit k's shards, grouped by bucket (offsets in the record);
* bucket b: bucket b's rows from every scatter unit, sorted by (hash, order); drops every document
  whose text repeats (kept: the first of each split) and every train document whose text occurs in
  validation or test (the holdout keeps it), as (order, reason) sorted by order;
* gather k: the drops of unit k's shards from every bucket, sorted by order, so a reader of one
  shard opens one file.
"""

from __future__ import annotations

import numpy as np

from ..errors import DedupError
from ..protocol import (
    DEDUP_DROP_DTYPE,
    DEDUP_REASONS,
    DEDUP_ROW_DTYPE,
    DedupPlan,
    DedupUnitRecord,
    OutputRoot,
    read_record,
)
from ..protocol.doctable import read_checked_table
from .plan import Inputs, bucket_of, order_base, unit_count, unit_ranks

DUPLICATE = DEDUP_REASONS.index("duplicate")
CONTAMINATION = DEDUP_REASONS.index("contamination")


def scatter_rows(root: OutputRoot, plan: DedupPlan, inputs: Inputs, k: int) -> tuple[np.ndarray, list[int]]:
    """Unit k's rows grouped by bucket (stable: order ascending within a bucket), and the offsets."""
    parts = []
    for rank in unit_ranks(plan, k):
        entry, record = inputs.entries[rank], inputs.records[rank]
        table = read_checked_table(root.resolve(record.table), record, root.done(record.shard))
        rows = np.empty(len(table), dtype=DEDUP_ROW_DTYPE)
        rows["hash_hi"], rows["hash_lo"] = table["hash_hi"], table["hash_lo"]
        rows["order"] = np.uint64(order_base(entry.split, rank)) + np.arange(len(table), dtype=np.uint64)
        parts.append(rows)
    rows = np.concatenate(parts) if parts else np.zeros(0, DEDUP_ROW_DTYPE)
    buckets = bucket_of(rows["hash_hi"], plan.buckets)
    rows = rows[np.argsort(buckets, kind="stable")]
    offsets = np.searchsorted(np.sort(buckets), np.arange(plan.buckets + 1), side="left")
    return rows, [int(x) for x in offsets]


def bucket_rows(root: OutputRoot, plan: DedupPlan, b: int) -> np.ndarray:
    """Bucket b's rows from every scatter unit, read straight into one array: only those slices of
    the files are read, and with plain reads rather than a memory map, since a mapped file's pages
    count in the task's RSS (a whole large folio, 2 MB here, per file touched)."""
    records = []
    for k in range(unit_count(plan, "scatter")):
        record = read_record(root.dedup_unit_done("scatter", k), DedupUnitRecord)
        assert record is not None, "bucket tasks run only after every scatter unit is done"
        records.append(record)
    rows = np.empty(sum(r.offsets[b + 1] - r.offsets[b] for r in records), dtype=DEDUP_ROW_DTYPE)
    at, width = 0, DEDUP_ROW_DTYPE.itemsize
    for record in records:
        lo, hi = record.offsets[b], record.offsets[b + 1]
        if hi == lo:
            continue
        path = root.resolve(record.file)
        with root.storage.open_read(path) as f:
            f.seek(lo * width)
            got = f.readinto(rows[at:at + hi - lo].data.cast("B"))
        if got != (hi - lo) * width:
            raise DedupError(f"{got} bytes where its done record promises {(hi - lo) * width} from byte {lo * width}",
                             path, f"the dedup's files were changed: delete {root.dedup_dir} and "
                             f"run `slimtok dedup --output-root {root.root}` again")
        at += hi - lo
    return rows


def find_drops(rows: np.ndarray) -> np.ndarray:
    """The documents to drop among ``rows`` (any order in), as DEDUP_DROP_DTYPE sorted by order."""
    rows = rows[np.lexsort((rows["order"], rows["hash_lo"], rows["hash_hi"]))]
    n = len(rows)
    split = (rows["order"] >> np.uint64(62)).astype(np.uint8)
    same_text = np.zeros(n, dtype=bool)
    same_text[1:] = (rows["hash_hi"][1:] == rows["hash_hi"][:-1]) & (rows["hash_lo"][1:] == rows["hash_lo"][:-1])
    starts = np.flatnonzero(~same_text)
    # within a text's group rows run train -> validation -> test, so the group's last split says
    # whether a holdout has the text
    group_last_split = split[np.r_[starts[1:] - 1, n - 1]] if n else split
    in_holdout = np.repeat(group_last_split > 0, np.diff(np.r_[starts, n]))
    contamination = (split == 0) & in_holdout
    repeat = np.zeros(n, dtype=bool)
    repeat[1:] = same_text[1:] & (split[1:] == split[:-1])
    reason = np.where(contamination, CONTAMINATION, np.where(repeat, DUPLICATE, 0)).astype(np.uint8)
    keep = reason > 0
    drops = np.empty(int(keep.sum()), dtype=DEDUP_DROP_DTYPE)
    drops["order"], drops["reason"] = rows["order"][keep], reason[keep]
    return drops[np.argsort(drops["order"], kind="stable")]


def gather_drops(root: OutputRoot, plan: DedupPlan, inputs: Inputs, k: int) -> np.ndarray:
    """Drops of unit k's shards, from every bucket's sorted drop file, sorted by order."""
    ranks = unit_ranks(plan, k)
    first, last = inputs.entries[ranks[0]], inputs.entries[ranks[-1]]
    lo, hi = order_base(first.split, ranks[0]), order_base(last.split, ranks[-1]) + (1 << 32)
    parts = []
    for b in range(plan.buckets):
        record = read_record(root.dedup_unit_done("bucket", b), DedupUnitRecord)
        assert record is not None, "gather tasks run only after every bucket is done"
        if record.rows == 0:
            continue
        mapped = np.memmap(root.resolve(record.file), DEDUP_DROP_DTYPE, "r")
        a, z = np.searchsorted(mapped["order"], [lo, hi], side="left")
        if z > a:
            parts.append(np.array(mapped[a:z]))
    drops = np.concatenate(parts) if parts else np.zeros(0, DEDUP_DROP_DTYPE)
    return drops[np.argsort(drops["order"], kind="stable")]


def reason_counts(drops: np.ndarray) -> dict[str, int]:
    counts = np.bincount(drops["reason"], minlength=len(DEDUP_REASONS))
    return {name: int(counts[i]) for i, name in enumerate(DEDUP_REASONS) if i}
