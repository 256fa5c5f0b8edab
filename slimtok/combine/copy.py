"""Copying a split: each finished shard checked and its bytes appended to the split's file.

Reads the shard files and document tables the done records of a :class:`~slimtok.finished.SplitPlan`
name; writes the temporary files of ``<split>.bin`` and ``<split>.idx`` in a
:class:`~slimtok.publish.PendingSet` the caller publishes. Per shard: **segment** (the shard and
its table checked against its done record; the spans and document lengths it contributes, less
what an ``exclude`` callable leaves out) → **concatenate** (:mod:`slimtok.spans`, in the kernel);
per split: **meta entry** (:func:`meta_entry`, also used by a consuming combine). Shards without a
table (older roots) get their document ends from an eos scan, which must find exactly the done
record's documents.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..dedup.drops import Exclusion
from ..errors import CombineError
from ..finished import READ_BLOCK, SplitPlan, checked_table, inside, read_checked, redo_fix
from ..job import load_job
from ..protocol import DoneRecord, JobSettings, OutputRoot, storage_for
from ..protocol.docindex import DocEnds
from ..publish import PendingSet
from ..spans import Span, concatenate, document_spans, keep_mask


class _EosScan:
    """Document lengths of a legacy shard (no table) from its eos ids, block by block: the eos id
    is the document separator there (special-token strings in text were encoded as text). The
    count must equal the done record's documents and the shard must end with eos."""

    def __init__(self, dtype: str, eos: int):
        self.dtype, self.eos = np.dtype(dtype), eos
        self.position, self.ends, self.last_is_eos = 0, [np.zeros(1, np.int64)], False

    def add(self, block: bytes) -> None:
        ids = np.frombuffer(block, dtype=self.dtype)
        self.ends.append(np.flatnonzero(ids == self.eos) + 1 + self.position)
        self.last_is_eos = bool(ids.size) and int(ids[-1]) == self.eos
        self.position += ids.size

    def counts(self, record: DoneRecord, path: Path) -> np.ndarray:
        counts = np.diff(np.concatenate(self.ends))
        if counts.size != record.documents or (record.tokens and not self.last_is_eos):
            raise CombineError(f"{counts.size} eos ids ({self.eos}) for {record.documents} documents in its done "
                               "record, or it does not end with eos: the file is not what tokenize wrote", path,
                               redo_fix(record))
        return counts


#: Per shard, the documents to leave out (None: keep all); dedup and decontamination provide it.
Exclude = Callable[[DoneRecord], "Exclusion | None"]


@dataclass
class Segment:
    """What one shard contributes to a split: byte spans of its data, the token count of every
    kept document, and what was removed: {reason: {source: {"documents", "tokens"}}}."""

    record: DoneRecord
    spans: list[Span]
    counts: np.ndarray
    removed: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)


def _table(root: OutputRoot, record: DoneRecord, verify: bool) -> np.ndarray:
    """The shard's document table, checked against its done record (slimtok.finished.checked_table)."""
    return checked_table(root, record, verify)


def _removed(table: np.ndarray, record: DoneRecord, exclusion: Exclusion) -> dict[str, dict[str, dict[str, int]]]:
    idx = np.asarray(exclusion.indices, dtype=np.int64)
    if len(exclusion.reasons) != idx.size or (idx.size and (idx[0] < 0 or idx[-1] >= len(table)
                                                             or (np.diff(idx) <= 0).any())):
        raise CombineError(f"the exclusion for {record.shard} needs sorted unique indices below {len(table)} and "
                           "one reason each", None, "fix the stage that computed it")
    removed: dict[str, dict[str, dict[str, int]]] = {}
    for i, reason in zip(idx.tolist(), exclusion.reasons, strict=True):  # lengths checked above
        row = table[i]
        names = record.source_names
        source = (names[int(row["source"])] if int(row["source"]) < len(names) else "") or "(none)"
        counts = removed.setdefault(reason, {}).setdefault(source, {"documents": 0, "tokens": 0})
        counts["documents"] += 1
        counts["tokens"] += int(row["tokens"])
    return removed


def segment_of(root: OutputRoot, record: DoneRecord, job: JobSettings, verify: bool,
               exclusion: Exclusion | None, whole: hashlib._Hash | None = None) -> Segment:
    """Check one shard (and its table) against its done record and return its segment. ``whole``
    sees the bytes the segment contributes, in order (call in shard order)."""
    path = inside(root, record.file, record, "file")
    want = record.data_checksum() if verify else None
    itemsize = job.token_width
    if not record.table:
        if exclusion is not None:
            raise CombineError(f"shard {record.shard} has no document table (written before tables existed), so "
                               "documents cannot be left out of it", root.done(record.shard), redo_fix(record))
        scan = _EosScan(job.dtype, job.eos_token_id)

        def scan_and_hash(block: bytes) -> None:  # one read feeds the check, the scan and the split's hash
            scan.add(block)
            if whole is not None:
                whole.update(block)

        read_checked(path, record, record.bytes, want, scan_and_hash)
        return Segment(record, [Span(path, 0, record.bytes)], scan.counts(record, path))
    table = _table(root, record, verify)
    if exclusion is None or not len(exclusion.indices):
        read_checked(path, record, record.bytes, want, whole.update if whole else None)
        return Segment(record, [Span(path, 0, record.bytes)], np.asarray(table["tokens"], dtype=np.int64))
    read_checked(path, record, record.bytes, want, None)
    keep = keep_mask(len(table), drop=exclusion.indices)
    segment = Segment(record, document_spans(path, table, keep, itemsize),
                      np.asarray(table["tokens"][keep], dtype=np.int64), _removed(table, record, exclusion))
    if whole is not None:
        with storage_for(path).open_read(path) as f:
            for span in segment.spans:
                f.seek(span.start)
                for lo in range(0, span.length, READ_BLOCK):
                    whole.update(f.read(min(READ_BLOCK, span.length - lo)))
    return segment

def write_split(root: OutputRoot, plan: SplitPlan, pending: PendingSet, verify: bool = True,
                job: JobSettings | None = None, exclude: Exclude | None = None,
                log: Callable[[str], None] = print, advance: Callable[[DoneRecord], None] | None = None) -> dict:
    """Concatenate ``plan.done`` (less what ``exclude`` leaves out) into the temporary files of the
    split's data and document index in ``pending`` (published by the caller); returns its meta entry.
    ``advance`` is told of each shard once it is checked and copied."""
    job = job or load_job(root)[0]
    dest, index_dest = root.combined(plan.split), root.doc_index(plan.split)
    whole = hashlib.sha256() if verify else None
    legacy = [r.shard for r in plan.done if not r.table]
    if legacy:
        log(f"note: {len(legacy)} shard(s) of split {plan.split} (first {legacy[0]}) have no document table (written "
            "before tables existed); their document ends come from an eos scan")
    written: list[Written] = []
    with root.storage.open_write(pending.tmp(dest), "create") as out:
        with root.storage.open_write(pending.tmp(index_dest), "create") as index_file:
            ends = DocEnds(index_file)
            for segment in _checked(root, plan.done, job, verify, exclude, whole):
                concatenate(segment.spans, out.fileno())
                ends.add(segment.counts)
                written.append(Written(segment.record, len(segment.counts), int(segment.counts.sum()),
                                       sum(span.length for span in segment.spans), segment.removed))
                if advance is not None:
                    advance(segment.record)
            root.storage.sync(index_file)
        root.storage.sync(out)
    entry = meta_entry(plan, written, dest, index_dest, whole, legacy, exclude is not None)
    entry["index_checksum"] = ends.checksum  # what every reader checks the index against
    return entry


def _checked(root: OutputRoot, records: Sequence[DoneRecord], job: JobSettings, verify: bool,
             exclude: Exclude | None, whole: hashlib._Hash | None, ahead: int = 2) -> Iterator[Segment]:
    """``segment_of`` each record in order on one thread, at most ``ahead`` ahead of the consumer:
    hashing releases the GIL, so on two cores the checks run while the kernel copies the segment
    checked before, and memory holds a few segments, not a split's."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="combine-check") as pool:
        futures: deque = deque()
        todo = iter(records)
        try:
            while True:
                while len(futures) < ahead and (record := next(todo, None)) is not None:
                    futures.append(pool.submit(segment_of, root, record, job, verify,
                                               exclude(record) if exclude else None, whole))
                if not futures:
                    return
                yield futures.popleft().result()
        finally:
            for future in futures:
                future.cancel()


@dataclass(frozen=True)
class Written:
    """What one segment put in the split's file, for its summary."""

    record: DoneRecord
    documents: int
    tokens: int
    bytes: int
    removed: dict[str, dict[str, dict[str, int]]]


def meta_entry(plan: SplitPlan, segments: Sequence[Written], dest: Path, index_dest: Path,
              whole: hashlib._Hash | None, legacy: Sequence[str], excluding: bool) -> dict:
    """The split's meta entry: counts of what was written, skipped lines and per-source sums; with
    an exclusion, ``removed`` per reason and per source (kept counts exclude them)."""
    records = [s.record for s in segments]
    entry: dict = {"file": dest.name, "shards": len(records),
                   "documents": sum(s.documents for s in segments),
                   "tokens": sum(s.tokens for s in segments),
                   "bytes": sum(s.bytes for s in segments),
                   "partial": bool(plan.missing), "missing_shards": len(plan.missing)}
    if whole is not None:
        entry["sha256"] = whole.hexdigest()
    entry["skipped_lines"] = _sum_counts(r.skipped for r in records)
    entry["index"] = index_dest.name
    sources: dict[str, dict[str, Any]] = {}  # counts, and with an exclusion a "removed" dict
    for r in records:
        for name, counts in r.sources.items():
            total = sources.setdefault(name, {"documents": 0, "tokens": 0})
            for key in total:
                total[key] += counts.get(key, 0)
    if excluding:
        removed: dict[str, dict[str, int]] = {}
        for s in segments:
            for reason, by_source in s.removed.items():
                total = removed.setdefault(reason, {"documents": 0, "tokens": 0})
                for name, counts in by_source.items():
                    kept = sources.setdefault(name, {"documents": 0, "tokens": 0})
                    per_reason = kept.setdefault("removed", {}).setdefault(reason, {"documents": 0, "tokens": 0})
                    for key in ("documents", "tokens"):
                        total[key] += counts[key]
                        per_reason[key] += counts[key]
                        kept[key] -= counts[key]
        entry["removed"] = dict(sorted(removed.items()))
    entry["sources"] = dict(sorted(sources.items()))
    if legacy:
        entry["document_ends"] = "eos scan (shards without document tables)"
    return entry


def _sum_counts(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for key, n in d.items():
            total[key] = total.get(key, 0) + n
    return total
