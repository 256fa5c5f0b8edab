"""Reading a finished dedup: the documents each shard drops, for combine and mix.

A reader checks once that ``dedup/job.json`` exists and that its fingerprint is that of the root's
current shards; then a shard's drops are one slice of its gather unit's file (sorted by order).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DedupError
from ..protocol import (
    DEDUP_DROP_DTYPE,
    DEDUP_REASONS,
    DedupJob,
    DedupPlan,
    DedupUnitRecord,
    DoneRecord,
    OutputRoot,
    read_record,
)
from .plan import fingerprint, order_base, read_inputs, unit_of_rank


@dataclass
class Exclusion:
    """Documents of one shard to leave out: sorted, unique row indices of its document table, and
    a reason label for each ("duplicate" or "contamination"). Same shape as combine's."""

    indices: np.ndarray
    reasons: Sequence[str]


class DropReader:
    """The drops of a finished dedup, shard by shard; keeps the last gather file it opened."""

    def __init__(self, output_root: str | os.PathLike[str] | OutputRoot):
        self.root = output_root if isinstance(output_root, OutputRoot) else OutputRoot(output_root)
        job = read_record(self.root.dedup_job, DedupJob)
        if job is None:
            raise DedupError("no finished dedup here", self.root.dedup_job,
                             f"run `slimtok dedup --output-root {self.root.root}` first")
        inputs = read_inputs(self.root)
        if fingerprint(inputs) != job.fingerprint:
            raise DedupError("the shards changed after this dedup (done records or tables differ)",
                             self.root.dedup_job, f"delete {self.root.dedup_dir} and run "
                             f"`slimtok dedup --output-root {self.root.root}` again")
        plan = read_record(self.root.dedup_plan, DedupPlan)
        assert plan is not None, "a finished dedup has its plan"
        self.plan = plan
        self.rank = {e.id: (rank, e.split) for rank, e in enumerate(inputs.entries)}
        #: the done records the fingerprint was checked against, by shard id (combine plans from them)
        self.records = {e.id: r for e, r in zip(inputs.entries, inputs.records, strict=True)}
        self._open: tuple[int, np.ndarray] | None = None

    def _unit(self, k: int) -> np.ndarray:
        if self._open is None or self._open[0] != k:
            record = read_record(self.root.dedup_unit_done("gather", k), DedupUnitRecord)
            assert record is not None, "a finished dedup has every gather unit"
            drops = (np.memmap(self.root.resolve(record.file), DEDUP_DROP_DTYPE, "r") if record.rows
                     else np.zeros(0, DEDUP_DROP_DTYPE))
            self._open = (k, drops)
        return self._open[1]

    def drops(self, shard: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """(row indices int64 sorted, reasons uint8, labels): ``labels[reasons[i]]`` names why."""
        if shard not in self.rank:
            raise DedupError(f"shard {shard} is not in this dedup's manifest", self.root.manifest)
        rank, split = self.rank[shard]
        drops = self._unit(unit_of_rank(self.plan, rank))
        base = order_base(split, rank)
        a, z = np.searchsorted(drops["order"], [base, base + (1 << 32)], side="left")
        rows = drops[a:z]
        return ((rows["order"] - np.uint64(base)).astype(np.int64), np.array(rows["reason"], dtype=np.uint8),
                DEDUP_REASONS)

    def exclusion(self, record: DoneRecord) -> Exclusion | None:
        indices, reasons, labels = self.drops(record.shard)
        if not len(indices):
            return None
        return Exclusion(indices, [labels[r] for r in reasons])


def drops_for(root: str | OutputRoot, shard_id: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """One shard's drops (see DropReader.drops); a reader of many shards keeps one DropReader."""
    return DropReader(root).drops(shard_id)


def exclusion_for(root: str | os.PathLike[str] | OutputRoot) -> Callable[[DoneRecord], Exclusion | None]:
    """combine's ``exclude``: per done record, the documents to leave out (None: keep all)."""
    return DropReader(root).exclusion
