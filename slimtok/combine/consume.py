"""``combine --consume``: build a split's file by moving shard data instead of copying it.

Peak extra disk is about one shard, not the whole split: shards are appended one after another
to a working file ``.<split file>.consume`` beside the output, and each shard file is deleted
once the working file up to its end is durable and the journal ``.<split file>.consume.json``
(:class:`ConsumeJournal`) says so. A kill at any moment resumes: the working file is cut back to
the journal's byte count and the next shard appended again, so the result is byte-identical to a
copying combine. The document index comes from the tables (kept), and the working file is then
published with it and meta.* as one set (:mod:`slimtok.publish`). validate, status and export
use only the combined files, done records and tables, so they keep working on a consumed root;
a later combine keeps a consumed split whose file still matches its done records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from ..errors import CombineError
from ..finished import READ_BLOCK, SplitPlan, checked_table, combined_mismatch, intermediate, read_checked
from ..protocol import (
    ConsumeJournal,
    DoneRecord,
    JobSettings,
    Meta,
    OutputRoot,
    read_record,
    write_record,
)
from ..protocol.docindex import DocEnds
from ..publish import PendingSet, remove_stale
from ..spans import Span, concatenate
from .copy import Written, meta_entry


def consumed_entry(root: OutputRoot, meta: Meta | None, plan: SplitPlan, verify: bool = True) -> dict | None:
    """The meta entry of a split already combined by consuming its shards, when its file still
    matches its done records (then there is nothing to redo); removes its finished journal. With
    ``verify`` the match includes each shard's checksum (one read of the file): meta.json is
    published again over the kept file, so a file changed since must be refused, not re-described."""
    entry = meta.splits.get(plan.split) if meta is not None else None
    if not entry or not entry.get("consumed") or root.storage.exists(root.consume_work(plan.split)):
        return None
    root.storage.delete(root.consume_journal(plan.split))  # a kill after the publish left it
    if (why := combined_mismatch(root, plan, entry, checksums=verify)) is not None:
        raise CombineError(f"was combined with --consume or cleaned (its shards are gone) but {why}",
                           root.combined(plan.split), "restore it from a copy, or re-tokenize the split")
    return entry


def moved_bytes(root: OutputRoot, plan: SplitPlan) -> int:
    """Bytes of ``plan.done`` an interrupted consuming combine of the same shards already moved."""
    journal = read_record(root.consume_journal(plan.split), ConsumeJournal)
    return journal.bytes if journal is not None and journal.shards == [r.shard for r in plan.done] else 0


def consume_split(root: OutputRoot, plan: SplitPlan, pending: PendingSet, job: JobSettings, verify: bool,
                  log: Callable[[str], None], advance: Callable[[DoneRecord], None] | None = None) -> dict:
    """Move ``plan.done`` into the split's working file (resuming a killed run), write the index
    from the tables into ``pending`` and adopt the working file as the split's new data.
    ``advance`` is told of each shard once it is in the working file (moved earlier or now)."""
    if any(not r.table for r in plan.done):
        raise CombineError(f"split {plan.split} has shards without document tables (an older root)", root.root,
                           "run `slimtok combine` without --consume")
    paths = [intermediate(root, r) for r in plan.done]  # every record checked before the first deletion
    working, journal_path = root.consume_work(plan.split), root.consume_journal(plan.split)
    remove_stale(journal_path.parent, [journal_path.name])  # a journal write a kill interrupted
    ids = [r.shard for r in plan.done]
    journal = read_record(journal_path, ConsumeJournal)
    if journal is None or journal.shards != ids or not root.storage.exists(working):
        if journal is not None and journal.appended:
            raise CombineError(f"an unfinished consuming combine moved {journal.appended} shard(s) of another list",
                               journal_path, "finish it with the manifest and done records it started with")
        journal = ConsumeJournal(plan.split, ids)
        root.storage.delete(working)
        write_record(journal_path, journal)
    elif journal.appended:
        log(f"resuming a consuming combine of {plan.split}: {journal.appended} of {len(ids)} shards already moved")
    with root.storage.open_write(working, "keep") as out:
        out.truncate(journal.bytes)  # drop what a killed append wrote past the journal
        out.seek(journal.bytes)
        for i, (record, path) in enumerate(zip(plan.done, paths, strict=True)):
            if i < journal.appended:
                root.storage.delete(path)  # moved; a kill came before its deletion
            else:
                read_checked(path, record, record.bytes, record.data_checksum() if verify else None, None)
                concatenate([Span(path, 0, record.bytes)], out.fileno())
                root.storage.sync(out)
                journal.appended, journal.bytes = i + 1, journal.bytes + record.bytes
                write_record(journal_path, journal)
                root.storage.delete(path)
            if advance is not None:
                advance(record)
    root.prune_empty(root.resolve(r.file) for r in plan.done)
    dest, index = root.combined(plan.split), root.doc_index(plan.split)
    with root.storage.open_write(pending.tmp(index), "create") as f:
        ends = DocEnds(f)
        for record in plan.done:
            ends.add(np.asarray(checked_table(root, record, verify)["tokens"]))
        root.storage.sync(f)
    whole = None
    if verify:  # the hash of a resumed run cannot be carried over: one read of the result
        whole = hashlib.sha256()
        with root.storage.open_read(working) as f:
            while block := f.read(READ_BLOCK):
                whole.update(block)
    pending.adopt(dest, working)
    written = [Written(r, r.documents, r.tokens, r.bytes, {}) for r in plan.done]
    entry = meta_entry(plan, written, dest, index, whole, [], False)
    entry["consumed"] = True
    entry["index_checksum"] = ends.checksum
    return entry
