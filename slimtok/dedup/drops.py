"""Reading a finished dedup: the documents each shard drops, for combine and mix.

A reader checks once that ``dedup/job.json`` exists and that its fingerprint is that of the root's
current shards; then a shard's drops are one slice of its gather unit's file (sorted by order),
read whole and checked against the unit's done record (size, sha256, order) before any is used.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DedupError, IntegrityError
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
            done = self.root.dedup_unit_done("gather", k)
            record = read_record(done, DedupUnitRecord)
            if record is None:
                raise DedupError("is missing or unreadable, but dedup/job.json says the dedup finished", done,
                                 self._redo)
            self._open = (k, self._checked(record))
        return self._open[1]

    @property
    def _redo(self) -> str:
        return f"delete {self.root.dedup_dir} and run `slimtok dedup --output-root {self.root.root}` again"

    def _checked(self, record: DedupUnitRecord) -> np.ndarray:
        """A gather unit's drop list, held in memory and checked against its done record before any
        row is used: ``rows`` rows of ``bytes`` bytes hashing to its sha256, orders strictly
        increasing and reasons among DEDUP_REASONS (drop lists are 9 bytes per dropped document)."""
        path = self.root.resolve(record.file)
        if not record.rows:
            return np.zeros(0, DEDUP_DROP_DTYPE)
        try:
            payload = self.root.storage.read_whole(path)
        except FileNotFoundError as exc:
            raise IntegrityError("is missing, but its unit's done record says it is finished", path,
                                 self._redo) from exc
        if len(payload) != record.bytes or len(payload) != record.rows * DEDUP_DROP_DTYPE.itemsize:
            raise IntegrityError(f"{len(payload):,} bytes, but its done record says {record.bytes:,} ({record.rows:,} "
                                 "drops): changed after it was written", path, self._redo)
        if hashlib.sha256(payload).hexdigest() != record.sha256:
            raise IntegrityError("sha256 does not match its unit's done record (changed after it was written)", path,
                                 self._redo)
        drops = np.frombuffer(payload, DEDUP_DROP_DTYPE)
        orders = drops["order"]
        if (orders[1:] <= orders[:-1]).any() or (drops["reason"] >= len(DEDUP_REASONS)).any():
            raise IntegrityError("its drops are not in strictly increasing order with known reasons", path,
                                 self._redo)
        return drops

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
