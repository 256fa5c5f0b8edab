"""Reading a finished output root: what it holds and how it is checked.

A root is finished, split by split, when every shard of the split in ``manifest.jsonl`` has a
done record (``done/<id>.json``); its combined form is ``<split>.bin`` / ``<split>.idx`` and
``meta.json`` / ``meta.pkl`` (:class:`~slimtok.protocol.Meta`). combine, clean, validate,
export and mix all read a root through this module, so none of them imports another stage
for it.

Reads ``done/``, ``failed/``, ``locks/`` (only to say why a shard is not done), the shard and
table files a done record names, the combined split files and ``meta.json``. Writes only
``meta.json`` / ``meta.pkl``, and only into the temporary files of a
:class:`~slimtok.publish.PendingSet` its caller publishes.

Invariants:

* a file a done record names resolves inside the root (:func:`inside`), or is refused;
* a shard's file is trusted only at the size its done record gives and, when checked, the
  checksum (:func:`read_checked`); a mismatch is a :class:`~slimtok.errors.CombineError` saying
  how to redo the shard; its document table only after :func:`checked_table` (size, sha256, token
  sum, and the record's per-source counts, so an edited count never reaches meta.json);
* a split's combined file is its done shards' bytes one after another in manifest order, which
  :func:`combined_mismatch` checks without the shard files (they may be consumed or cleaned);
* meta.json is read after finishing any publish a killed writer left (:func:`read_meta`), and
  written with meta.pkl as one set by every stage that writes token files (combine, clean, mix):
  that is why building and writing it lives here rather than in the combine stage.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from . import __version__
from .errors import CombineError, IntegrityError
from .job import tokenizer_fingerprint
from .manifest import ShardEntry
from .protocol import (
    Checksum,
    DoneRecord,
    FailedRecord,
    JobSettings,
    Meta,
    OutputRoot,
    hasher,
    read_record,
    splits_command,
    storage_for,
)
from .protocol.doctable import read_checked_table, redo_shard
from .publish import PendingSet, roll_forward

if TYPE_CHECKING:
    import numpy as np

#: Bytes read at once when a finished file is checked, hashed or copied by hand.
READ_BLOCK = 16 << 20


@dataclass
class SplitPlan:
    """The done records of one split in manifest order, and the shards that are not done."""

    split: str
    done: list[DoneRecord] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def plan_split(root: OutputRoot, entries: Sequence[ShardEntry], split: str,
               known: Mapping[str, DoneRecord] | None = None) -> SplitPlan:
    """The done records of ``split``'s shards in manifest order; shards without one are missing.
    ``known``: records the caller already read (by shard id), taken instead of reading them again."""
    plan = SplitPlan(split)
    for e in entries:
        if e.split != split:
            continue
        record = known.get(e.id) if known is not None else None
        if record is None:
            record = read_record(root.done(e.id), DoneRecord)
        if record is None:
            plan.missing.append(e.id)
        else:
            plan.done.append(record)
    return plan


def describe_missing(root: OutputRoot, shard: str) -> str:
    """``id (failed: reason)``, ``id (running)`` or ``id (pending)``."""
    failed = read_record(root.failed(shard), FailedRecord)
    if failed is not None:
        return f"{shard} (failed: {failed.reason})"
    if root.storage.exists(root.done(shard)):
        return f"{shard} (done record unreadable: relaunch tokenize, which sets it aside and redoes the shard)"
    if root.storage.exists(root.lock(shard)):
        return f"{shard} (running)"
    return f"{shard} (pending)"


def missing_message(root: OutputRoot, plan: SplitPlan, show: int = 20) -> str:
    """``split S has N of M shards not done: …``, the first ``show`` of them described."""
    shown = ", ".join(describe_missing(root, s) for s in plan.missing[:show])
    more = f" and {len(plan.missing) - show} more" if len(plan.missing) > show else ""
    total = len(plan.missing) + len(plan.done)
    return f"split {plan.split} has {len(plan.missing)} of {total} shards not done: {shown}{more}"


def inside(root: OutputRoot, relative: str, record: DoneRecord, what: str,
           folders: dict[Path, str] | None = None) -> Path:
    """``relative`` resolved in the root; a done record naming a file outside it is refused.
    ``folders``: real paths of folders resolved earlier in the caller's pass over many records, by
    folder (a file's real path is its folder's joined with its name, unless the name is a link
    or ``..``): one ``lstat`` per file instead of one per component of its path and the root's."""
    path = root.resolve(relative)
    if folders is None:
        real, base = os.path.realpath(path), os.path.realpath(root.root)
    else:
        base = _real_folder(root.root, folders)
        if path.name == ".." or root.storage.is_link(path):
            real = os.path.realpath(path)
        else:
            real = os.path.join(_real_folder(path.parent, folders), path.name)
    if not relative or os.path.isabs(relative) or os.path.commonpath([real, base]) != base:
        raise CombineError(f"its {what} {relative!r} is outside the output root", root.done(record.shard),
                           "the record was not written by slimtok; delete it and relaunch tokenize")
    return path


def _real_folder(folder: Path, folders: dict[Path, str]) -> str:
    if folder not in folders:
        folders[folder] = os.path.realpath(folder)
    return folders[folder]


def intermediate(root: OutputRoot, record: DoneRecord) -> Path:
    """The data file a done record names, when it is the shard's own intermediate file
    (``OutputRoot.data``: ``shards/<id>.bin``), the only file clean and ``combine --consume`` ever
    delete. A record naming anything else (a split file, as a mix's chunk records do, or another
    shard's file) is refused, so callers check every record before they delete the first file."""
    path = inside(root, record.file, record, "file")
    own = root.data(record.shard)
    if path != own:
        raise CombineError(f"names {record.file!r} as its data, not the shard's own {root.relative(own)}, so that "
                           "file is not intermediate data and is never deleted", root.done(record.shard),
                           "nothing was removed; the record was not written by slimtok tokenize: restore it or "
                           "delete it and relaunch tokenize to redo the shard")
    return path


#: The fix for a shard whose files disagree with its done record (the table's reader gives the same).
redo_fix = redo_shard


def checked_table(root: OutputRoot, record: DoneRecord, verify: bool = True) -> np.ndarray:
    """The shard's document table, inside the root and checked against its done record (size,
    sha256 with ``verify``, token sum, per-source counts: :func:`~slimtok.protocol.read_checked_table`)."""
    return read_checked_table(inside(root, record.table, record, "table"), record, root.done(record.shard), verify)


def read_checked(path: Path, record: DoneRecord, size: int, expected: Checksum | None,
                 on_block: Callable[[bytes], None] | None) -> None:
    """Size of ``path`` (always) and its checksum (when ``expected`` is given) against the done
    record's; ``on_block`` sees every block in order when given (the read is shared)."""
    try:
        found = storage_for(path).stat(path).size
    except FileNotFoundError as exc:
        raise CombineError(f"missing, but done/{record.shard}.json says it is finished", path,
                           redo_fix(record)) from exc
    if found != size:
        raise CombineError(f"{found} bytes, but its done record says {size}: the file was changed after it "
                           "was written", path, redo_fix(record))
    if expected is None and on_block is None:
        return
    with storage_for(path).open_read(path) as f:
        found_digest = checksum_of(f, size, expected.algorithm if expected else "sha256", on_block)
    if expected is not None and found_digest != expected.hexdigest:
        raise CombineError(f"{expected.algorithm} does not match its done record (corrupted after it was written)",
                           path, redo_fix(record))


def check_range(path: Path, start: int, size: int, expected: Checksum, done: Path) -> None:
    """``size`` bytes of ``path`` from ``start`` (a shard's own file, or its range of a consumed
    split file) against the checksum of the done record at ``done``; IntegrityError naming the file
    when they are short or differ (one streamed read; nothing is trusted over bytes)."""
    try:
        with storage_for(path).open_read(path) as f:
            f.seek(start)
            found = checksum_of(f, size, expected.algorithm)
            short = f.tell() < start + size
    except FileNotFoundError as exc:
        raise IntegrityError(f"missing, but {done.name} says its shard is finished", path,
                             f"restore it, or delete {done} and relaunch tokenize to redo the shard") from exc
    if short or found != expected.hexdigest:
        where = f"bytes {start:,}..{start + size:,}" if start else f"its {size:,} bytes"
        raise IntegrityError(f"{where} do not match the {expected.algorithm} of {done} (changed after it was "
                             "written)", path, f"restore it, or delete {done} and relaunch tokenize to redo the shard")


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


def combined_mismatch(root: OutputRoot, plan: SplitPlan, entry: dict, checksums: bool,
                      advance: Callable[[DoneRecord], None] | None = None) -> str | None:
    """Why the split's combined file is not ``plan.done``'s shards one after another as its meta
    ``entry`` says (None when it is): the shard count, the size and, with ``checksums``, each
    shard's byte range against its done record's checksum (one read of the file; ``advance`` is
    told of each shard checked)."""
    dest = root.combined(plan.split)
    expected = sum(r.bytes for r in plan.done)
    if entry.get("shards") != len(plan.done):
        return f"meta.json says it holds {entry.get('shards')} shards and split {plan.split} has {len(plan.done)} done"
    if not root.storage.exists(dest) or root.storage.stat(dest).size != expected:
        found = f"{root.storage.stat(dest).size:,} bytes" if root.storage.exists(dest) else "it is missing"
        return f"{found} where the done records of split {plan.split} add up to {expected:,}"
    if checksums:
        with root.storage.open_read(dest) as f:
            offset = 0
            for r in plan.done:
                want = r.data_checksum()
                if checksum_of(f, r.bytes, want.algorithm) != want.hexdigest:
                    return (f"bytes {offset:,}..{offset + r.bytes:,} do not hash to the {want.algorithm} of shard "
                            f"{r.shard}'s done record")
                offset += r.bytes
                if advance is not None:
                    advance(r)
    return None


#: Byte ranges (a shard's or a mix chunk's, each against its done record) a sampled check hashes.
SAMPLE_RANGES = 4


def verify_split(root: OutputRoot, entries: Sequence[ShardEntry], split: str, entry: dict, mode: str) -> None:
    """Check a combined split file before a reader serves it: its size is its done records' bytes
    (or meta's when documents were left out), and with ``mode`` "all" every shard's byte range
    hashes to its done record's checksum (or the whole file to meta's sha256 when documents were
    left out); "sample" hashes ``SAMPLE_RANGES`` ranges drawn afresh on each call, so repeated reads
    cover different ranges (none when the whole file is the only range: that is "all"'s cost). The
    sample decides only whether damage is found, never what is served. IntegrityError naming the
    file otherwise."""
    import numpy as np

    path, fix = root.combined(split), splits_command(root)
    records = plan_split(root, entries, split).done
    ranges: list[tuple[int, int, Checksum | None, str]]
    if entry.get("removed"):
        whole = Checksum("sha256", entry["sha256"]) if entry.get("sha256") else None
        ranges = [(0, entry["bytes"], whole, "meta.json")]
    else:
        starts = np.cumsum([0] + [r.bytes for r in records]).tolist()
        ranges = [(a, r.bytes, r.data_checksum(), f"done/{r.shard}.json")
                  for a, r in zip(starts, records, strict=False)]  # starts is one longer: the end
    expected = sum(n for _, n, _, _ in ranges)
    if not storage_for(path).exists(path):
        raise IntegrityError("is missing, but meta.json lists it", path, fix)
    if (size := storage_for(path).stat(path).size) != expected:
        raise IntegrityError(f"{size:,} bytes, but its records add up to {expected:,}", path, fix)
    if mode == "sample":
        picked = np.random.default_rng().permutation(len(ranges))[:SAMPLE_RANGES]
        ranges = [ranges[i] for i in sorted(int(i) for i in picked)] if len(ranges) > 1 else []
    with storage_for(path).open_read(path) as f:
        for start, length, want, record in ranges:
            if want is None:
                continue
            f.seek(start)
            if checksum_of(f, length, want.algorithm) != want.hexdigest:
                raise IntegrityError(f"bytes {start:,}..{start + length:,} do not match the {want.algorithm} of "
                                     f"{record} (changed after it was written)", path, fix)


def read_meta(root: OutputRoot) -> Meta | None:
    """meta.json of an output root (after finishing a publish a killed combine left), or None
    before the first combine or when it cannot be parsed."""
    roll_forward(root.root)
    return read_record(root.meta_json, Meta)


def build_meta(root: OutputRoot, job: JobSettings, splits: dict[str, dict], log: Callable[[str], None]) -> Meta:
    """The new meta: entries of ``splits`` over those of splits not redone."""
    old = read_meta(root)
    if old is None and root.storage.exists(root.meta_json):
        log(f"warning: {root.meta_json} cannot be parsed; writing it anew with the splits combined now")
    merged = dict(old.splits if old else {})
    merged.update(splits)
    return Meta(tokenizer=job.tokenizer, tokenizer_path=str(root.tokenizer_dir),
                tokenizer_sha256=tokenizer_fingerprint(root, job),
                vocab_size=job.vocab_size, eos_token_id=job.eos_token_id, eos_token=job.eos_token,
                bos_token_id=job.bos_token_id, bos_token=job.bos_token, special_text=job.special_text,
                policy_notes=list(job.policy_notes), min_chars=job.min_chars, min_tokens=job.min_tokens,
                dtype=job.dtype,
                text_key=job.text_key, manifest_sha256=job.manifest_sha256, backend=job.backend,
                backend_verification=job.backend_verification, splits=merged, slimtok_version=__version__,
                combined_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def write_meta(root: OutputRoot, meta: Meta, pending: PendingSet) -> None:
    """meta.json and meta.pkl (the same dict) into ``pending``'s temporary files."""
    for target, payload in ((root.meta_json, meta.to_json()),
                            (root.meta_pkl, pickle.dumps(meta.to_dict(), protocol=4))):
        with root.storage.open_write(pending.tmp(target), "create") as f:
            f.write(payload)
            root.storage.sync(f)
