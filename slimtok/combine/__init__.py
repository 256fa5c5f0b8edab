"""Step 6: concatenate each split's finished shards into one flat token file.

Reads ``job.json``, ``manifest.jsonl``, ``done/``, ``shards/`` and ``documents/`` of an output
root; writes ``train.bin`` / ``val.bin`` / ``test.bin`` (shards in manifest order, so the bytes
never depend on which worker finished first), their document indexes ``train.idx`` … and
``meta.pkl`` / ``meta.json`` (:class:`~slimtok.protocol.Meta`), all published as one set
(:mod:`slimtok.publish`).

All splits: **plan** (:func:`plan_combine`: every refusal, and each done record read once, with
``dedup`` the very records the dedup's fingerprint was checked against). Per split: **plan**
(done records in manifest order, :mod:`slimtok.finished`) → **copy**
(:mod:`.copy`: each shard checked against its done record and appended, less what an ``exclude``
callable leaves out) or **consume** (:mod:`.consume`: shards moved, not copied) → **meta entry**.
A split with missing or failed shards is refused unless ``allow_partial``. Imports go one way:
this face → consume → copy → :mod:`slimtok.finished`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..dedup.drops import DropReader, Exclusion
from ..errors import CombineError
from ..finished import SplitPlan, build_meta, missing_message, plan_split, read_meta, write_meta
from ..job import load_job
from ..progress import ProgressFactory
from ..protocol import SPLIT_FILES, DoneRecord, JobSettings, Meta, OutputRoot, require_kind
from ..publish import PendingSet, require_free
from .consume import consume_split, consumed_entry, moved_bytes
from .copy import Exclude, write_split

__all__ = ["CombinePlan", "combine", "Exclude", "Exclusion", "plan_combine", "write_split"]


@dataclass
class CombinePlan:
    """What a combine writes, known before its first byte is copied: the job, the plans of the
    splits to write (done records in manifest order), the meta entries of splits kept as they are
    (combined earlier from consumed shards), and the documents to leave out per shard."""

    root: OutputRoot
    job: JobSettings
    plans: list[SplitPlan]
    kept: dict[str, dict]
    exclude: Exclude | None


def plan_combine(output_root: str | os.PathLike[str], splits: Sequence[str] | None = None,
                 allow_partial: bool = False, verify: bool = True, log: Callable[[str], None] = print,
                 exclude: Exclude | None = None, consume: bool = False, dedup: bool = False) -> CombinePlan:
    """combine's planning (its arguments as :func:`combine`'s), every refusal included; reads the
    job, the manifest, each done record once (with ``dedup``: the ones the dedup's fingerprint was
    checked against) and meta.json, and writes nothing but a finished --consume's leftover journal."""
    root = OutputRoot(output_root)
    require_kind(root, "combine")
    if dedup and exclude is not None:
        raise ValueError("give combine dedup or exclude, not both")
    reader = DropReader(root) if dedup else None
    if reader is not None:
        exclude = reader.exclusion
    job, entries = load_job(root)
    present = [s for s in SPLIT_FILES if any(e.split == s for e in entries)]
    chosen = list(splits) if splits else present
    unknown = [s for s in chosen if s not in present]
    if unknown:
        raise CombineError(f"split(s) {', '.join(unknown)} have no shards in {root.manifest}")
    plans = [plan_split(root, entries, s, reader.records if reader is not None else None) for s in chosen]
    incomplete = [p for p in plans if p.missing]
    if incomplete and not allow_partial:
        raise CombineError("; ".join(missing_message(root, p) for p in incomplete)
                           + ". Finish them (relaunch tokenize, --retry-failed for failed ones) or pass "
                           "--allow-partial")
    if consume and (exclude is not None or incomplete):
        raise CombineError("--consume moves whole splits: it cannot leave documents out or combine a partial split",
                           root.root, "finish the splits first, or combine without --consume")
    unfinished = [root.consume_journal(p.split) for p in plans if root.storage.exists(root.consume_journal(p.split))]
    if unfinished and not consume:
        raise CombineError("a combine --consume was interrupted (some shards are moved already)", unfinished[0],
                           f"finish it: `slimtok combine --output-root {root.root} --consume`")
    old, kept = read_meta(root), {}
    for plan in list(plans):
        if (entry := consumed_entry(root, old, plan, verify)) is not None:
            if exclude is not None and any(exclude(r) is not None for r in plan.done):
                raise CombineError("was combined whole and its shards are gone (--consume or clean), so the "
                                   "documents dedup drops from it cannot be left out", root.combined(plan.split),
                                   "combine --dedup before consuming or cleaning a split; for this root, tokenize "
                                   "the split again into a new output root")
            log(f"{root.combined(plan.split)}: combined earlier from consumed shards; kept")
            kept[plan.split] = entry
            plans.remove(plan)
    return CombinePlan(root, job, plans, kept, exclude)


def combine(output_root: str | os.PathLike[str], splits: Sequence[str] | None = None,
            allow_partial: bool = False, verify: bool = True, log: Callable[[str], None] = print,
            exclude: Exclude | None = None, consume: bool = False,
            progress: ProgressFactory | None = None, dedup: bool = False) -> Meta:
    """Combine the given splits (default: every split in the manifest) and publish their files
    with meta.* as one set; ``exclude`` leaves documents out per shard, ``dedup`` (instead) the
    documents the root's finished dedup drops; ``consume`` moves the
    shards into the split files instead of copying them (:mod:`.consume`). ``progress(shards,
    bytes, bytes done before)`` makes the display told of every shard checked and written (a
    resumed --consume's moved shards count as done before). Returns the new meta."""
    planned = plan_combine(output_root, splits, allow_partial, verify, log, exclude, consume, dedup)
    root, plans = planned.root, planned.plans
    todo = [r for p in plans for r in p.done]
    display = progress(len(todo), sum(r.bytes for r in todo),
                       sum(moved_bytes(root, p) for p in plans) if consume else 0) if progress else None
    done = [0, 0, 0, 0]  # shards, documents, tokens, bytes

    def advance(record: DoneRecord) -> None:
        done[:] = done[0] + 1, done[1] + record.documents, done[2] + record.tokens, done[3] + record.bytes
        if display is not None:
            display.update(*done)

    try:
        meta = _write_and_publish(root, plans, planned.job, dict(planned.kept), verify, planned.exclude, consume,
                                  advance, display.above(log) if display is not None else log)
    finally:
        if display is not None:
            display.close()
    for plan in plans if consume else []:
        root.storage.delete(root.consume_journal(plan.split))
    return meta


def _write_and_publish(root: OutputRoot, plans: list[SplitPlan], job: JobSettings, results: dict[str, dict],
                       verify: bool, exclude: Exclude | None, consume: bool, advance: Callable[[DoneRecord], None],
                       log: Callable[[str], None]) -> Meta:
    """Write ``plans``' splits and the new meta.* as one published set (``results``: entries kept)."""
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
