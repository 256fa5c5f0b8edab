"""After combine: remove what a finished, combined job no longer needs (``slimtok clean``).

Reads ``job.json``, ``manifest.jsonl``, ``done/``, ``locks/``, ``meta.json`` and the combined
split files. Removes:

* ``shards/<id>.bin`` of every combined split, once the split's file is checked against its done
  records (shard count, size, and each shard's byte range against the record's checksum: the check
  a ``combine --consume``'d split gets, :func:`slimtok.finished.combined_mismatch`), and only where
  the done record names the shard's own data file (:func:`slimtok.finished.intermediate`); a root
  of another kind than tokenize (a mix) is refused before anything is read
  (:mod:`slimtok.protocol.kinds`);
* part files, checkpoints, temporary files and takeover markers that killed workers left;
* locks that hold no live claim (:meth:`slimtok.claims.Claimer.is_leftover`).

Keeps the document tables, done and failed records, ``job.json``, ``manifest.jsonl``, the
tokenizer, ``meta.*``, ``dedup/``, exports and logs, so validate, status, export and a repeated
combine work afterwards as on a root combined with ``--consume``. A split combined with documents
left out (``--dedup``) keeps its shards: its file is not their concatenation, and another
combine of it needs them.

Refuses (:class:`~slimtok.errors.CleanError`, nothing removed) when a split has shards not done,
has not been combined, is stale (shards finished since its combine), does not match its done
records, when a worker holds a live claim, or a combine is running or was interrupted.

Safe to interrupt: the splits are marked consumed in ``meta.json`` (published like combine's
meta) *before* any shard is deleted, so a later combine keeps their files instead of looking for
the shards, and a rerun of clean checks again and removes the rest.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from .claims import Claimer, current_holder
from .errors import CleanError
from .finished import SplitPlan, combined_mismatch, intermediate, missing_message, plan_split, read_meta, write_meta
from .job import STALE_AFTER, load_job
from .progress import ProgressFactory
from .protocol import (
    SPLITS,
    DoneRecord,
    LockRecord,
    Meta,
    OutputRoot,
    read_record,
    require_kind,
    storage_for,
    temp_files,
)
from .publish import PendingSet


@dataclass(frozen=True)
class Removal:
    """One file clean removes (or, in a dry run, would remove): what it is, where, its size."""

    what: str
    path: Path
    bytes: int


@dataclass
class CleanReport:
    """What one clean removed (``dry_run``: would remove) and what it kept on purpose, and why."""

    dry_run: bool
    removals: list[Removal] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(r.bytes for r in self.removals)

    def summary(self) -> list[str]:
        """One line per kind of file (count, bytes), the notes on what was kept, then the total."""
        verb = "would remove" if self.dry_run else "removed"
        kinds: dict[str, list[Removal]] = {}
        for r in self.removals:
            kinds.setdefault(r.what, []).append(r)
        lines = [f"{verb} {len(rs):,} {what} ({sum(r.bytes for r in rs):,} bytes)" for what, rs in kinds.items()]
        lines += [f"kept {note}" for note in self.kept]
        lines.append(f"{'would free' if self.dry_run else 'freed'} {self.freed:,} bytes"
                     + ("" if self.removals else ": nothing to remove"))
        return lines


def clean(output_root: str | os.PathLike[str], dry_run: bool = False,
          progress: ProgressFactory | None = None) -> CleanReport:
    """Check every split's combined file, mark the splits consumed, then remove what combine no
    longer needs (``dry_run``: only list it). ``progress(shards, bytes, 0)`` makes the display of
    the check (it reads every combined file once)."""
    root = OutputRoot(output_root)
    require_kind(root, "clean")
    entries = load_job(root)[1]
    _refuse_running_combine(root)
    live = _live_claims(root)
    if live:
        raise CleanError(f"{len(live)} worker claim(s) are live: {', '.join(live[:5])}", root.locks_dir,
                         "wait for those workers to finish (or stop them), then run clean again")
    meta = read_meta(root)
    if meta is None:
        raise CleanError("combine has not run (no meta.json)", root.meta_json,
                         f"run `slimtok combine --output-root {root.root}` first")
    plans = [plan_split(root, entries, s) for s in dict.fromkeys(e.split for e in entries)]
    report = CleanReport(dry_run)
    consumable = _check_splits(root, meta, plans, report, progress)
    data_files = [intermediate(root, record) for plan in consumable for record in plan.done]  # all before any change
    if not dry_run:
        _mark_consumed(root, meta, consumable)
    for path in data_files:
        _add(report, "shard data files", path)
    for path in root.part_files():
        _add(report, "part files", path)
    for shard in sorted(root.checkpointed_ids()):
        _add(report, "checkpoints", root.checkpoint(shard))
    for folder in root.worker_folders():
        for path in temp_files(folder):
            _add(report, "temporary files", path)
    for path in root.stolen_markers():
        _add(report, "takeover markers", path)
    for shard in sorted(root.locked_ids()):  # all leftovers: live claims were refused above
        _add(report, "leftover locks", root.lock(shard))
    if not dry_run:
        for removal in report.removals:
            try:
                root.storage.delete(removal.path)
            except OSError as exc:
                raise CleanError(f"cannot be removed: {exc.strerror or exc}", removal.path,
                                 "fix its permissions and run clean again (the root stays usable meanwhile)") from exc
        root.prune_empty(r.path for r in report.removals)
    return report


def _refuse_running_combine(root: OutputRoot) -> None:
    """A combine writing (or killed while writing) the splits leaves working or temporary files
    beside them for as long as it runs (meta.* temporary files are not a sign: clean writes those
    too, and its next run removes what a killed one left)."""
    for split in SPLITS:
        for path in (root.consume_journal(split), root.consume_work(split)):
            if root.storage.exists(path):
                raise CleanError("a `combine --consume` is running or was interrupted", path,
                                 f"let it finish, or finish it: `slimtok combine --output-root {root.root} --consume`")
    targets = [t for s in SPLITS for t in (root.combined(s), root.doc_index(s))]
    for target in targets:
        found = root.temps_of(target)
        if found:
            raise CleanError("a combine is running, or was killed while writing its files", found[0],
                             f"let it finish, or run `slimtok combine --output-root {root.root}` again")


def _live_claims(root: OutputRoot) -> list[str]:
    """``<id> (host pid N)`` of every lock that holds a live claim. This observer has watched no
    lock before, so only a holder provably dead (same host and boot, pid gone) counts as stale."""
    claimer = Claimer(root, current_holder(0, 0), STALE_AFTER)
    live = []
    for shard in sorted(root.locked_ids()):
        if not claimer.is_leftover(shard):
            held = read_record(root.lock(shard), LockRecord)
            live.append(f"{shard} ({held.host} pid {held.pid})" if held else shard)
    return live


def _check_splits(root: OutputRoot, meta: Meta, plans: list[SplitPlan], report: CleanReport,
                  progress: ProgressFactory | None) -> list[SplitPlan]:
    """Refuse unless every split is done, combined and current; return the splits whose shards
    can go, each checked against its done records (the others noted in ``report.kept``). A split
    of which nothing was tokenized (``tokenize --splits``) has nothing to remove and is passed by."""
    untouched = [p for p in plans if not p.done and p.split not in meta.splits]
    plans = [p for p in plans if p not in untouched]
    for plan in plans:
        entry = meta.splits.get(plan.split)
        if plan.missing:
            raise CleanError(missing_message(root, plan), root.root,
                             "clean runs after a finished job: finish those shards and combine the split first")
        if entry is None:
            raise CleanError(f"split {plan.split} has not been combined", root.combined(plan.split),
                             f"run `slimtok combine --output-root {root.root}` first")
        if entry.get("partial") or entry.get("shards") != len(plan.done):
            raise CleanError(f"split {plan.split} is stale: combined from {entry.get('shards')} shards, and "
                             f"{len(plan.done)} are done now", root.combined(plan.split),
                             f"run `slimtok combine --output-root {root.root}` again, then clean")
    consumable = [p for p in plans if not meta.splits[p.split].get("removed")]
    for plan in plans:
        if plan not in consumable:
            report.kept.append(f"the shards of split {plan.split}: it was combined with documents left out, so its "
                               "file is not their concatenation and another combine of it reads them")
    records = [r for p in consumable for r in p.done]
    display = progress(len(records), sum(r.bytes for r in records), 0) if progress else None
    checked = [0, 0]

    def advance(record: DoneRecord) -> None:
        checked[:] = checked[0] + 1, checked[1] + record.bytes
        if display is not None:
            display.update(checked[0], None, None, checked[1])

    try:
        for plan in consumable:
            why = combined_mismatch(root, plan, meta.splits[plan.split], checksums=True, advance=advance)
            if why is not None:
                raise CleanError(f"does not match the done records of split {plan.split}: {why}",
                                 root.combined(plan.split),
                                 "nothing was removed; run `slimtok combine` again (while the shards are there) "
                                 "or restore the file, then clean")
    finally:
        if display is not None:
            display.close()
    return consumable


def _mark_consumed(root: OutputRoot, meta: Meta, plans: list[SplitPlan]) -> None:
    """Say in meta.json that these splits' shards are gone (or about to be), so a later combine
    keeps their files; published before anything is removed."""
    if all(meta.splits[p.split].get("consumed") for p in plans):
        return
    splits = dict(meta.splits)
    for plan in plans:
        splits[plan.split] = {**splits[plan.split], "consumed": True}
    with PendingSet([root.meta_json, root.meta_pkl]) as pending:
        write_meta(root, dataclasses.replace(meta, splits=splits), pending)
        pending.publish()


def _add(report: CleanReport, what: str, path: Path) -> None:
    try:
        size = storage_for(path).stat(path).size
    except FileNotFoundError:
        return  # gone already (a clean that was interrupted, or a consuming combine)
    report.removals.append(Removal(what, path, size))
