"""Step 6: concatenate each split's finished shards into one flat token file.

Reads ``job.json``, ``manifest.jsonl``, ``done/`` and ``shards/`` of an output root; writes
``train.bin`` / ``val.bin`` / ``test.bin`` (shards in manifest order, so the bytes never depend on
which worker finished first) and ``meta.pkl`` / ``meta.json`` (what a trainer needs to read them).

Each shard is checked against its done record (size, and sha256 unless ``verify=False``) before it
is copied, and the copy is done by the kernel (copy_file_range), never by a Python loop over tokens.
A split with missing or failed shards is refused unless ``allow_partial``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import numpy as np
import orjson

from .errors import CombineError
from . import __version__
from .manifest import ShardEntry, read_manifest
from .protocol import (SPLIT_FILES, DoneRecord, FailedRecord, JobSettings, OutputRoot, fsync_dir, new_token,
                       read_record, write_atomic)

READ_BLOCK = 16 << 20


@dataclass
class SplitPlan:
    """The done records of one split in manifest order, and the shards that are not done."""

    split: str
    done: list[DoneRecord] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def load_job(root: OutputRoot) -> tuple[JobSettings, list[ShardEntry]]:
    """The pinned settings and manifest of an output root."""
    job = read_record(root.job, JobSettings)
    if job is None:
        raise CombineError(f"{root.job} is missing or unreadable: is {root.root} a slimtok output root?")
    return job, read_manifest(root.manifest)


def describe_missing(root: OutputRoot, shard: str) -> str:
    """``id (failed: reason)``, ``id (running)`` or ``id (pending)``."""
    failed = read_record(root.failed(shard), FailedRecord)
    if failed is not None:
        return f"{shard} (failed: {failed.reason})"
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


def _copy_range(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy ``size`` bytes in the kernel; falls back to sendfile where copy_file_range is missing."""
    copied = 0
    while copied < size:
        try:
            n = os.copy_file_range(src_fd, dst_fd, size - copied)
        except OSError:
            n = os.sendfile(dst_fd, src_fd, None, size - copied)
        if n == 0:
            raise CombineError(f"source ended after {copied} of {size} bytes")
        copied += n


def _check_shard(root: OutputRoot, record: DoneRecord, whole: "hashlib._Hash | None",
                 on_block: "Callable[[bytes], None] | None" = None) -> Path:
    """Size (always) and sha256 (when ``whole`` is given) of a shard against its done record.

    ``on_block`` sees every block of the shard in order when given (the read is shared).
    """
    path = root.resolve(record.file)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError as exc:
        raise CombineError(f"{path}: missing, but done/{record.shard}.json says it is finished; delete that "
                           "done record and relaunch tokenize to redo the shard") from exc
    if size != record.bytes:
        raise CombineError(f"{path}: {size} bytes, but its done record says {record.bytes}; the file was "
                           f"changed after it was written. Delete done/{record.shard}.json and relaunch tokenize")
    if whole is not None or on_block is not None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(READ_BLOCK):
                if whole is not None:
                    h.update(block)
                    whole.update(block)
                if on_block is not None:
                    on_block(block)
        if whole is not None and h.hexdigest() != record.sha256:
            raise CombineError(f"{path}: sha256 does not match its done record (corrupted after it was "
                               f"written). Delete done/{record.shard}.json and relaunch tokenize")
    return path


class _DocIndex:
    """Writes the split's document index while its shards are read: the end offset (in tokens) of
    every eos. The eos id only ever appears as the document separator (special-token strings in
    text are encoded as text), so its positions are exactly the document ends; each shard's eos
    count must equal its done record's documents and its last token must be eos."""

    def __init__(self, out: BinaryIO, dtype: str, eos: int):
        self.out, self.dtype, self.eos = out, np.dtype(dtype), eos
        self.tokens = 0
        self.shard_eos = 0
        self.last_is_eos = False

    def add(self, block: bytes) -> None:
        ids = np.frombuffer(block, dtype=self.dtype)
        ends = np.flatnonzero(ids == self.eos).astype(np.uint64) + np.uint64(self.tokens + 1)
        self.out.write(ends.astype("<u8", copy=False).tobytes())
        self.shard_eos += ends.size
        self.last_is_eos = bool(ids.size) and int(ids[-1]) == self.eos
        self.tokens += ids.size

    def end_shard(self, record: DoneRecord, path: Path) -> None:
        found, self.shard_eos = self.shard_eos, 0
        if found != record.documents or (record.tokens and not self.last_is_eos):
            raise CombineError(f"{path}: {found} eos ids ({self.eos}) for {record.documents} documents in its "
                               "done record, or it does not end with eos; the file is not what tokenize wrote. "
                               f"Delete done/{record.shard}.json and relaunch tokenize")


def write_split(root: OutputRoot, plan: SplitPlan, verify: bool = True, job: JobSettings | None = None) -> dict:
    """Concatenate ``plan.done`` into the split's file and write its document index (both
    atomically); returns its meta entry. The index is built from the same read that verifies."""
    job = job or load_job(root)[0]
    dest, index_dest = root.combined(plan.split), root.doc_index(plan.split)
    tmp = dest.with_name(f".{dest.name}.{new_token()}.tmp")
    index_tmp = index_dest.with_name(f".{index_dest.name}.{new_token()}.tmp")
    whole = hashlib.sha256() if verify else None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    index_file = open(index_tmp, "xb")
    index = _DocIndex(index_file, job.dtype, job.eos_token_id)
    def check(record: DoneRecord) -> Path:
        path = _check_shard(root, record, whole, index.add)
        index.end_shard(record, path)
        return path

    # Checks run in order on one thread while the kernel copies the shard checked before: hashing
    # and the eos scan release the GIL, so on two cores combine runs at about the copy's speed.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="combine-check")
    try:
        checks = [pool.submit(check, record) for record in plan.done]
        for record, checked in zip(plan.done, checks):
            with open(checked.result(), "rb") as src:
                _copy_range(src.fileno(), fd, record.bytes)
        os.fsync(fd)
        index_file.flush()
        os.fsync(index_file.fileno())
    except BaseException:
        pool.shutdown(cancel_futures=True)
        os.close(fd)
        index_file.close()
        tmp.unlink(missing_ok=True)
        index_tmp.unlink(missing_ok=True)
        raise
    pool.shutdown()
    os.close(fd)
    index_file.close()
    os.replace(index_tmp, index_dest)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    entry = {"file": dest.name, "shards": len(plan.done), "documents": sum(r.documents for r in plan.done),
             "tokens": sum(r.tokens for r in plan.done), "bytes": sum(r.bytes for r in plan.done),
             "partial": bool(plan.missing), "missing_shards": len(plan.missing)}
    if whole is not None:
        entry["sha256"] = whole.hexdigest()
    skipped: dict[str, int] = {}
    for r in plan.done:
        for reason, n in r.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    entry["skipped_lines"] = skipped
    entry["index"] = index_dest.name
    sources: dict[str, dict[str, int]] = {}
    for r in plan.done:
        for name, counts in r.sources.items():
            total = sources.setdefault(name, {"documents": 0, "tokens": 0})
            for key in total:
                total[key] += counts.get(key, 0)
    entry["sources"] = dict(sorted(sources.items()))
    return entry


def read_meta(root: OutputRoot) -> dict:
    """meta.json of an output root, or {} before the first combine."""
    try:
        return orjson.loads(root.meta_json.read_bytes())
    except FileNotFoundError:
        return {}


def write_meta(root: OutputRoot, job: JobSettings, splits: dict[str, dict]) -> dict:
    """Write meta.pkl and meta.json with the same content; keeps entries of splits not redone."""
    meta = read_meta(root)
    merged = dict(meta.get("splits", {}))
    merged.update(splits)
    meta = {
        "tokenizer": job.tokenizer,
        "tokenizer_path": str(root.tokenizer_dir),
        "tokenizer_sha256": job.tokenizer_sha256,
        "vocab_size": job.vocab_size,
        "eos_token_id": job.eos_token_id,
        "eos_token": job.eos_token,
        "dtype": job.dtype,
        "text_key": job.text_key,
        "manifest_sha256": job.manifest_sha256,
        "backend": job.backend,
        "backend_verification": job.backend_verification,
        "splits": merged,
        "slimtok_version": __version__,
        "combined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomic(root.meta_json, orjson.dumps(meta, option=orjson.OPT_INDENT_2) + b"\n")
    write_atomic(root.meta_pkl, pickle.dumps(meta, protocol=4))
    return meta


def combine(output_root: str | os.PathLike[str], splits: Sequence[str] | None = None,
            allow_partial: bool = False, verify: bool = True,
            log: Callable[[str], None] = print) -> dict:
    """Combine the given splits (default: every split in the manifest); returns the new meta."""
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
        raise CombineError("; ".join(_missing_message(root, p) for p in incomplete)
                           + ". Finish them (relaunch tokenize, --retry-failed for failed ones) or pass --allow-partial")
    results = {}
    for plan in plans:
        if plan.missing:
            log(f"warning: {_missing_message(root, plan)}; writing a partial {SPLIT_FILES[plan.split]}")
        results[plan.split] = write_split(root, plan, verify, job)
        r = results[plan.split]
        log(f"{root.combined(plan.split)}: {r['shards']} shards, {r['documents']:,} documents, "
            f"{r['tokens']:,} tokens, {r['bytes']:,} bytes")
    return write_meta(root, job, results)


def _missing_message(root: OutputRoot, plan: SplitPlan, show: int = 20) -> str:
    shown = ", ".join(describe_missing(root, s) for s in plan.missing[:show])
    more = f" and {len(plan.missing) - show} more" if len(plan.missing) > show else ""
    total = len(plan.missing) + len(plan.done)
    return f"split {plan.split} has {len(plan.missing)} of {total} shards not done: {shown}{more}"
