"""Step 6: concatenate each split's finished shards into one flat token file.

Reads ``job.json``, ``manifest.jsonl``, ``done/``, ``shards/`` and ``documents/`` of an output
root; writes ``train.bin`` / ``val.bin`` / ``test.bin`` (shards in manifest order, so the bytes
never depend on which worker finished first), their document indexes ``train.idx`` … and
``meta.pkl`` / ``meta.json`` (:class:`~slimtok.protocol.Meta`), all published as one set
(:mod:`slimtok.publish`).

Per split: **plan** (done records in manifest order) → **segments** (each shard and its document
table checked against its done record; the spans and document lengths it contributes, less what
an ``exclude`` callable leaves out) → **concatenate** (:mod:`slimtok.spans`, in the kernel) →
**summarize** (the split's meta entry). Shards without a table (older roots) get their document
ends from an eos scan. A split with missing or failed shards is refused unless ``allow_partial``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np
import orjson

from . import __version__
from .dedup.drops import Exclusion
from .job import load_job, tokenizer_fingerprint
from .manifest import ShardEntry
from .errors import CombineError
from .protocol import (SPLIT_FILES, Checksum, DoneRecord, FailedRecord, JobSettings, Meta, OutputRoot, hasher,
                       read_doc_table, read_record)
from .publish import PendingSet, require_free, roll_forward
from .spans import DocEnds, Span, concatenate, document_spans, keep_mask

if TYPE_CHECKING:
    from .progress import ProgressDisplay

READ_BLOCK = 16 << 20


@dataclass
class SplitPlan:
    """The done records of one split in manifest order, and the shards that are not done."""

    split: str
    done: list[DoneRecord] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def describe_missing(root: OutputRoot, shard: str) -> str:
    """``id (failed: reason)``, ``id (running)`` or ``id (pending)``."""
    failed = read_record(root.failed(shard), FailedRecord)
    if failed is not None:
        return f"{shard} (failed: {failed.reason})"
    if root.done(shard).exists():
        return f"{shard} (done record unreadable: relaunch tokenize, which sets it aside and redoes the shard)"
    if root.lock(shard).exists():
        return f"{shard} (running)"
    return f"{shard} (pending)"


def plan_split(root: OutputRoot, entries: Sequence[ShardEntry], split: str) -> SplitPlan:
    plan = SplitPlan(split)
    for e in entries:
        if e.split != split:
            continue
        record = read_record(root.done(e.id), DoneRecord)
        if record is None:
            plan.missing.append(e.id)
        else:
            plan.done.append(record)
    return plan


def _inside(root: OutputRoot, relative: str, record: DoneRecord, what: str) -> Path:
    """``relative`` resolved in the root; a done record naming a file outside it is refused."""
    path = root.resolve(relative)
    real, base = os.path.realpath(path), os.path.realpath(root.root)
    if not relative or os.path.isabs(relative) or os.path.commonpath([real, base]) != base:
        raise CombineError(f"its {what} {relative!r} is outside the output root", root.done(record.shard),
                           "the record was not written by slimtok; delete it and relaunch tokenize")
    return path


def _redo(record: DoneRecord) -> str:
    return f"delete done/{record.shard}.json and relaunch tokenize to redo the shard"


def _read_checked(path: Path, record: DoneRecord, size: int, expected: Checksum | None,
                  on_block: Callable[[bytes], None] | None) -> None:
    """Size of ``path`` (always) and its checksum (when ``expected`` is given) against the done
    record's; ``on_block`` sees every block in order when given (the read is shared)."""
    try:
        found = os.stat(path).st_size
    except FileNotFoundError as exc:
        raise CombineError(f"missing, but done/{record.shard}.json says it is finished", path, _redo(record)) from exc
    if found != size:
        raise CombineError(f"{found} bytes, but its done record says {size}: the file was changed after it "
                           "was written", path, _redo(record))
    if expected is None and on_block is None:
        return
    with open(path, "rb") as f:
        found_digest = checksum_of(f, size, expected.algorithm if expected else "sha256", on_block)
    if expected is not None and found_digest != expected.hexdigest:
        raise CombineError(f"{expected.algorithm} does not match its done record (corrupted after it was written)",
                           path, _redo(record))


def checksum_of(f: BinaryIO, length: int, algorithm: str,
                on_block: Callable[[bytes], None] | None = None) -> str:
    """The hex digest (``algorithm``, a protocol.CHECKSUMS name) of the next ``length`` bytes of
    ``f`` (fewer at its end), read in blocks that ``on_block`` also sees."""
    h = hasher(algorithm)
    while length > 0 and (block := f.read(min(READ_BLOCK, length))):
        h.update(block)
        length -= len(block)
        if on_block is not None:
            on_block(block)
    return h.hexdigest()


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
                               _redo(record))
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
    """The shard's document table, checked against its done record; its token sum must be the shard's."""
    path = _inside(root, record.table, record, "table")
    _read_checked(path, record, record.table_bytes, Checksum("sha256", record.table_sha256) if verify else None,
                  None)
    table = read_doc_table(path)
    if len(table) != record.documents or int(table["tokens"].sum(dtype=np.int64)) != record.tokens:
        raise CombineError(f"{len(table)} rows of {int(table['tokens'].sum(dtype=np.int64))} tokens, but shard "
                           f"{record.shard} has {record.documents} documents of {record.tokens} tokens", path,
                           _redo(record))
    return table


def _removed(table: np.ndarray, record: DoneRecord, exclusion: Exclusion) -> dict[str, dict[str, dict[str, int]]]:
    idx = np.asarray(exclusion.indices, dtype=np.int64)
    if len(exclusion.reasons) != idx.size or (idx.size and (idx[0] < 0 or idx[-1] >= len(table)
                                                             or (np.diff(idx) <= 0).any())):
        raise CombineError(f"the exclusion for {record.shard} needs sorted unique indices below {len(table)} and "
                           "one reason each", None, "fix the stage that computed it")
    removed: dict[str, dict[str, dict[str, int]]] = {}
    for i, reason in zip(idx.tolist(), exclusion.reasons):
        row = table[i]
        names = record.source_names
        source = (names[int(row["source"])] if int(row["source"]) < len(names) else "") or "(none)"
        counts = removed.setdefault(reason, {}).setdefault(source, {"documents": 0, "tokens": 0})
        counts["documents"] += 1
        counts["tokens"] += int(row["tokens"])
    return removed


def segment_of(root: OutputRoot, record: DoneRecord, job: JobSettings, verify: bool,
               exclusion: Exclusion | None, whole: "hashlib._Hash | None" = None) -> Segment:
    """Check one shard (and its table) against its done record and return its segment. ``whole``
    sees the bytes the segment contributes, in order (call in shard order)."""
    path = _inside(root, record.file, record, "file")
    want = record.data_checksum() if verify else None
    itemsize = job.token_width
    if not record.table:
        if exclusion is not None:
            raise CombineError(f"shard {record.shard} has no document table (written before tables existed), so "
                               "documents cannot be left out of it", root.done(record.shard), _redo(record))
        scan = _EosScan(job.dtype, job.eos_token_id)
        _read_checked(path, record, record.bytes, want, (lambda b: (whole.update(b), scan.add(b))) if whole
                      else scan.add)
        return Segment(record, [Span(path, 0, record.bytes)], scan.counts(record, path))
    table = _table(root, record, verify)
    if exclusion is None or not len(exclusion.indices):
        _read_checked(path, record, record.bytes, want, whole.update if whole else None)
        return Segment(record, [Span(path, 0, record.bytes)], np.asarray(table["tokens"], dtype=np.int64))
    _read_checked(path, record, record.bytes, want, None)
    keep = keep_mask(len(table), drop=exclusion.indices)
    segment = Segment(record, document_spans(path, table, keep, itemsize),
                      np.asarray(table["tokens"][keep], dtype=np.int64), _removed(table, record, exclusion))
    if whole is not None:
        with open(path, "rb") as f:
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
    out_fd = os.open(pending.tmp(dest), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with open(pending.tmp(index_dest), "xb") as index_file:
            ends = DocEnds(index_file)
            for segment in _checked(root, plan.done, job, verify, exclude, whole):
                concatenate(segment.spans, out_fd)
                ends.add(segment.counts)
                written.append(Written(segment.record, len(segment.counts), int(segment.counts.sum()),
                                       sum(span.length for span in segment.spans), segment.removed))
                if advance is not None:
                    advance(segment.record)
            index_file.flush()
            os.fsync(index_file.fileno())
        os.fsync(out_fd)
    finally:
        os.close(out_fd)
    return summarize(plan, written, dest, index_dest, whole, legacy, exclude is not None)


def _checked(root: OutputRoot, records: Sequence[DoneRecord], job: JobSettings, verify: bool,
             exclude: Exclude | None, whole: "hashlib._Hash | None", ahead: int = 2) -> Iterator[Segment]:
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


def summarize(plan: SplitPlan, segments: Sequence[Written], dest: Path, index_dest: Path,
              whole: "hashlib._Hash | None", legacy: Sequence[str], excluding: bool) -> dict:
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
    sources: dict[str, dict[str, int]] = {}
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


def read_meta(root: OutputRoot) -> Meta | None:
    """meta.json of an output root (after finishing a publish a killed combine left), or None
    before the first combine or when it cannot be parsed."""
    roll_forward(root.root)
    return read_record(root.meta_json, Meta)


def build_meta(root: OutputRoot, job: JobSettings, splits: dict[str, dict], log: Callable[[str], None]) -> Meta:
    """The new meta: entries of ``splits`` over those of splits not redone."""
    old = read_meta(root)
    if old is None and root.meta_json.exists():
        log(f"warning: {root.meta_json} cannot be parsed; writing it anew with the splits combined now")
    merged = dict(old.splits if old else {})
    merged.update(splits)
    return Meta(tokenizer=job.tokenizer, tokenizer_path=str(root.tokenizer_dir),
                tokenizer_sha256=tokenizer_fingerprint(root, job),
                vocab_size=job.vocab_size, eos_token_id=job.eos_token_id, eos_token=job.eos_token,
                bos_token_id=job.bos_token_id, bos_token=job.bos_token, special_text=job.special_text,
                policy_notes=list(job.policy_notes), dtype=job.dtype,
                text_key=job.text_key, manifest_sha256=job.manifest_sha256, backend=job.backend,
                backend_verification=job.backend_verification, splits=merged, slimtok_version=__version__,
                combined_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def write_meta(root: OutputRoot, meta: Meta, pending: PendingSet) -> None:
    """meta.json and meta.pkl (the same dict) into ``pending``'s temporary files."""
    content = meta.to_dict()
    for target, payload in ((root.meta_json, orjson.dumps(content, option=orjson.OPT_INDENT_2) + b"\n"),
                            (root.meta_pkl, pickle.dumps(content, protocol=4))):
        with open(pending.tmp(target), "xb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())


def combine(output_root: str | os.PathLike[str], splits: Sequence[str] | None = None,
            allow_partial: bool = False, verify: bool = True, log: Callable[[str], None] = print,
            exclude: Exclude | None = None, consume: bool = False,
            progress: Callable[[int, int, int], ProgressDisplay] | None = None) -> Meta:
    """Combine the given splits (default: every split in the manifest) and publish their files
    with meta.* as one set; ``exclude`` leaves documents out per shard; ``consume`` moves the
    shards into the split files instead of copying them (slimtok.consume). ``progress(shards,
    bytes, bytes done before)`` makes the display told of every shard checked and written (a
    resumed --consume's moved shards count as done before). Returns the new meta."""
    from .consume import consumed_entry, journal_file, moved_bytes

    root = OutputRoot(output_root)
    job, entries = load_job(root)
    present = [s for s in SPLIT_FILES if any(e.split == s for e in entries)]
    chosen = list(splits) if splits else present
    unknown = [s for s in chosen if s not in present]
    if unknown:
        raise CombineError(f"split(s) {', '.join(unknown)} have no shards in {root.manifest}")
    plans = [plan_split(root, entries, s) for s in chosen]
    incomplete = [p for p in plans if p.missing]
    if incomplete and not allow_partial:
        raise CombineError("; ".join(missing_message(root, p) for p in incomplete)
                           + ". Finish them (relaunch tokenize, --retry-failed for failed ones) or pass --allow-partial")
    if consume and (exclude is not None or incomplete):
        raise CombineError("--consume moves whole splits: it cannot leave documents out or combine a partial split",
                           root.root, "finish the splits first, or combine without --consume")
    unfinished = [journal_file(root, p.split) for p in plans if journal_file(root, p.split).exists()]
    if unfinished and not consume:
        raise CombineError("a combine --consume was interrupted (some shards are moved already)", unfinished[0],
                           f"finish it: `slimtok combine --output-root {root.root} --consume`")
    old, results = read_meta(root), {}
    for plan in list(plans):
        if (entry := consumed_entry(root, old, plan)) is not None:
            if exclude is not None and any(exclude(r) is not None for r in plan.done):
                raise CombineError("was combined whole and its shards are gone (--consume or clean), so the "
                                   "documents dedup drops from it cannot be left out", root.combined(plan.split),
                                   "combine --dedup before consuming or cleaning a split; for this root, tokenize "
                                   "the split again into a new output root")
            log(f"{root.combined(plan.split)}: combined earlier from consumed shards; kept")
            results[plan.split] = entry
            plans.remove(plan)
    todo = [r for p in plans for r in p.done]
    display = progress(len(todo), sum(r.bytes for r in todo),
                       sum(moved_bytes(root, p) for p in plans) if consume else 0) if progress else None
    done = [0, 0, 0, 0]  # shards, documents, tokens, bytes

    def advance(record: DoneRecord) -> None:
        done[:] = done[0] + 1, done[1] + record.documents, done[2] + record.tokens, done[3] + record.bytes
        if display is not None:
            display.update(*done)

    try:
        meta = _write_and_publish(root, plans, job, results, verify, exclude, consume, advance,
                                  display.above(log) if display is not None else log)
    finally:
        if display is not None:
            display.close()
    for plan in plans if consume else []:
        journal_file(root, plan.split).unlink(missing_ok=True)
    return meta


def _write_and_publish(root: OutputRoot, plans: list[SplitPlan], job: JobSettings, results: dict[str, dict],
                       verify: bool, exclude: Exclude | None, consume: bool, advance: Callable[[DoneRecord], None],
                       log: Callable[[str], None]) -> Meta:
    """Write ``plans``' splits and the new meta.* as one published set (``results``: entries kept)."""
    from .consume import consume_split

    targets = [f(root, p.split) for p in plans for f in (OutputRoot.combined, OutputRoot.doc_index)]
    with PendingSet(targets + [root.meta_json, root.meta_pkl],
                    partners=[t for t in targets if t.suffix == ".idx"] + [root.meta_json, root.meta_pkl]) as pending:
        index_bytes = sum(8 * r.documents for p in plans for r in p.done)
        require_free(root.root, index_bytes + (max((r.bytes for p in plans for r in p.done), default=0) if consume
                                               else sum(r.bytes for p in plans for r in p.done)), "combine")
        for plan in plans:
            if plan.missing:
                log(f"warning: {missing_message(root, plan)}; writing a partial {SPLIT_FILES[plan.split]}")
            results[plan.split] = r = (consume_split(root, plan, pending, job, verify, log, advance) if consume
                                       else write_split(root, plan, pending, verify, job, exclude, log, advance))
            log(f"{root.combined(plan.split)}: {r['shards']} shards, {r['documents']:,} documents, "
                f"{r['tokens']:,} tokens, {r['bytes']:,} bytes")
        meta = build_meta(root, job, results, log)
        write_meta(root, meta, pending)
        pending.publish()
    return meta


def missing_message(root: OutputRoot, plan: SplitPlan, show: int = 20) -> str:
    shown = ", ".join(describe_missing(root, s) for s in plan.missing[:show])
    more = f" and {len(plan.missing) - show} more" if len(plan.missing) > show else ""
    total = len(plan.missing) + len(plan.done)
    return f"split {plan.split} has {len(plan.missing)} of {total} shards not done: {shown}{more}"
