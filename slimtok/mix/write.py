"""Writing a planned mix into an output root, restartably.

Each split's documents are cut into chunks of ``spec.chunk_documents``; a chunk's byte range in
the split file is fixed by the plan, so any worker may write any chunk and the bytes do not
depend on who wrote what. A chunk is finished exactly when ``done/<split>/mix-<n>.json`` exists
(written after its bytes are synced); a relaunch writes only the chunks without one. The split
file is built under a hidden name and renamed when every chunk is done. ``mix.json`` pins the
resolved spec and the inputs' fingerprints: a relaunch with anything else is refused.

The output is a slimtok output root (job.json, manifest.jsonl listing the chunks, their done
records, tokenizer/, meta), so validate, slimtok.data and export read it unchanged.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from ..finished import build_meta, write_meta
from ..publish import PendingSet
from ..errors import MixError
from ..manifest import ShardEntry, manifest_digest
from ..protocol import (SPLIT_FILES, Checksum, DoneRecord, JobSettings, MixRecord, OutputRoot, create_exclusive,
                        hasher, hostname, new_token, parse_record, read_record, storage_for, temp_files,
                        temp_path, write_json_lines, write_record)
from ..protocol.docindex import DocEnds
from ..progress import ProgressDisplay, ProgressFactory
from ..spans import ShortSource
from .inputs import SourceDocs
from .plan import Plan
from .report import mix_section
from .spec import MixSpec

#: The checksum of a chunk's done record: xxh3-128 hashes at memory speed, so hashing the bytes on
#: their way costs nothing next to the copy (sha256 ran slower than `cat`; docs/MIX.md).
CHUNK_CHECKSUM = "xxh3-128"

#: Bytes a chunk writer moves per write, through one buffer per chunk: preads and pwrites of 1-4 MB
#: measured faster here than copy_file_range (which ext4 without reflinks does page by page) and
#: let the hash see every byte once, with no read-back.
COPY_BLOCK = 4 << 20


@dataclass
class Layout:
    """Where the plan's records point: every source's shards end to end (a record's shard is
    ``id >> 32``; shard k's tokens are ``paths[k]`` from byte ``bases[k]``), and the number of
    each source's first shard."""

    paths: list[Path]
    bases: list[int]
    first_shard: np.ndarray
    names: list[str]

    @classmethod
    def join(cls, sources: list[SourceDocs], first_shard: np.ndarray) -> "Layout":
        return cls([p for s in sources for p in s.paths], [b for s in sources for b in s.bases], first_shard,
                   [s.spec.name for s in sources])

    def source_counts(self, picks: np.ndarray, step: int = 1 << 20) -> dict[str, dict[str, int]]:
        """Documents and tokens per source name, ``step`` records at a time (bounded temporaries)."""
        docs = np.zeros(len(self.names), dtype=np.int64)
        toks = np.zeros(len(self.names), dtype=np.int64)
        for lo in range(0, len(picks), step):
            piece = picks[lo:lo + step]
            which = np.searchsorted(self.first_shard, piece["id"] >> 32, side="right") - 1
            docs += np.bincount(which, minlength=len(self.names))
            toks += np.bincount(which, weights=piece["tokens"], minlength=len(self.names)).astype(np.int64)
        return {n: {"documents": int(d), "tokens": int(t)} for n, d, t in zip(self.names, docs, toks) if d}


def mix_record(spec: MixSpec, sources: list[SourceDocs], plan: Plan) -> MixRecord:
    """The content of mix.json: the resolved spec and a fingerprint of every input."""
    inputs = {s.spec.name: {"root": s.spec.root, "source": s.spec.source, "fingerprint": s.fingerprint,
                            "available_tokens": r.available, "documents": r.candidates}
              for s, r in zip(sources, plan.sources)}
    return MixRecord(spec.to_dict(), inputs)


def _chunk_starts(picks: np.ndarray, per_chunk: int, itemsize: int) -> np.ndarray:
    """Byte offset of every chunk's first document, and the split's size last (summed one chunk
    at a time, so nothing per selected document is allocated beside ``picks``)."""
    sizes = [int(picks["tokens"][lo:lo + per_chunk].sum(dtype=np.int64)) for lo in range(0, len(picks), per_chunk)]
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64) * itemsize


def prepare(out: OutputRoot, record: MixRecord, job_raw: dict, first: OutputRoot, plan: Plan, spec: MixSpec,
            itemsize: int) -> dict[str, np.ndarray]:
    """Pin mix.json (or check it, as data: a record another version wrote may order keys otherwise),
    then write job.json, manifest.jsonl and tokenizer/ (idempotent)."""
    out.storage.make_folders(out.root)
    mix_json = out.mix_json
    if not create_exclusive(mix_json, record.to_json()):
        if read_record(mix_json, MixRecord) != parse_record(record.to_json(), MixRecord):  # both as JSON gives them
            raise MixError("mix.json holds another spec or other inputs than this mix", mix_json,
                           "use a new --output-root, or delete it to start over")
    elif out.job.exists():
        raise MixError("already holds a slimtok job that is not this mix", out.root, "use a new --output-root")
    starts = {split: _chunk_starts(picks, spec.chunk_documents, itemsize) for split, picks in plan.splits.items()}
    # a chunk is a byte range of the split file, not a file: its path names the range, so that one
    # file is never listed under several ids
    entries = [ShardEntry(out.mix_chunk(split, n), split, 0, n, f"{out.combined(split)}#{out.mix_chunk(split, n)}",
                          int(b - a))
               for split, s in starts.items() for n, (a, b) in enumerate(zip(s[:-1], s[1:]))]
    shutil.copytree(first.tokenizer_dir, out.tokenizer_dir, dirs_exist_ok=True)
    write_json_lines(out.manifest, entries)
    job = dataclasses.replace(JobSettings.from_dict(job_raw), manifest_sha256=manifest_digest(entries),
                              shards=len(entries))
    write_record(out.job, job)
    return starts


def _spans(picks: np.ndarray, itemsize: int) -> list[tuple[int, int, int]]:
    """(file, start, length) runs for ``picks`` in order, documents adjacent in one file merged."""
    f, s = picks["id"] >> 32, picks["start"].astype(np.int64) * itemsize
    n = picks["tokens"].astype(np.int64) * itemsize
    brk = np.flatnonzero((f[1:] != f[:-1]) | (s[1:] != s[:-1] + n[:-1])) + 1
    heads = np.concatenate([[0], brk])
    return list(zip(f[heads].tolist(), s[heads].tolist(), np.add.reduceat(n, heads).tolist()))


def _copy_hashed(spans: list[tuple[int, int, int]], docs: Layout, opened: dict[int, BinaryIO], dst: int,
                 offset: int, digest: Any) -> int:
    """Copy ``spans`` (file, start, length) one after another to ``dst`` from ``offset``; returns
    the bytes written. Spans are read into one buffer end to end (a shuffled chunk's documents are
    small: one pread each, one write per ``COPY_BLOCK``); ``digest`` is updated with every buffer
    before it is written, so it covers exactly the chunk's bytes in order. ``opened`` keeps the
    source files (file number -> open file; a shuffled chunk returns to the same shards often),
    for the caller to close."""
    view = memoryview(bytearray(min(COPY_BLOCK, sum(n for _, _, n in spans)) or 1))
    fill = written = 0

    def flush() -> None:
        nonlocal fill, written
        digest.update(view[:fill])
        done = 0
        while done < fill:
            done += os.pwrite(dst, view[done:fill], offset + written + done)
        written, fill = written + fill, 0

    # once per document of a shuffled chunk: names bound locally and no min(), which took a 2 KB
    # document from 2.5 to 2.0 us (medians of 3; a bare pread loop: 1.5 us)
    preadv, bases, room = os.preadv, docs.bases, len(view)
    for file, start, length in spans:
        src = opened.get(file)
        if src is None:
            path = docs.paths[file]
            src = opened[file] = storage_for(path).open_read(path)
        at = bases[file] + start
        while length:
            end = fill + length if length < room - fill else room
            n = preadv(src.fileno(), [view[fill:end]], at)
            if n == 0:
                raise ShortSource(errno.EIO, f"{docs.paths[file]} ends {length} bytes before the end of a document "
                                             "the plan takes from it")
            fill, at, length = fill + n, at + n, length - n
            if fill == room:
                flush()
    if fill:
        flush()
    return written


@dataclass
class _Copied:
    """A chunk whose bytes are written but not yet synced, and what its done record needs."""

    size: int
    checksum: str
    began: float


def copy_chunk(out: OutputRoot, split: str, picks: np.ndarray, offset: int, docs: Layout,
               job: JobSettings) -> _Copied:
    """Copy one chunk's documents to its byte range, hashing them on the way (not synced)."""
    began = time.time()
    opened: dict[int, BinaryIO] = {}
    digest = hasher(CHUNK_CHECKSUM)
    with out.storage.open_write(out.mix_partial(split), "update") as dst:  # written only through pwrite
        try:
            size = _copy_hashed(_spans(picks, job.token_width), docs, opened, dst.fileno(), offset, digest)
        finally:
            for src in opened.values():
                src.close()
    return _Copied(size, str(Checksum(CHUNK_CHECKSUM, digest.hexdigest())), began)


def commit_chunk(out: OutputRoot, split: str, n: int, picks: np.ndarray, docs: Layout, job: JobSettings,
                 copied: _Copied) -> None:
    """Sync the split file (so the chunk's bytes are durable), then create the chunk's done record."""
    with out.storage.open_read(out.mix_partial(split)) as partial:
        out.storage.sync(partial)
    write_record(out.done(out.mix_chunk(split, n)), DoneRecord(
        shard=out.mix_chunk(split, n), split=split, file=SPLIT_FILES[split], lines=0, documents=len(picks),
        tokens=copied.size // job.token_width, bytes=copied.size, sha256="", dtype=job.dtype,
        skipped={}, source_size=0, token=new_token(), host=hostname(), finished_at=time.time(),
        seconds=time.time() - copied.began, sources=docs.source_counts(picks), checksum=copied.checksum))


def _unfinished(out: OutputRoot, split: str, starts: np.ndarray) -> list[int]:
    """Chunks of a split without a done record (none once the split file is published)."""
    if out.combined(split).exists():
        return []
    return [n for n in range(len(starts) - 1) if read_record(out.done(out.mix_chunk(split, n)), DoneRecord) is None]


@dataclass
class _Tally:
    """The whole mix's finished chunks, documents and bytes, shown by ``display`` (None: not shown)."""

    display: ProgressDisplay | None
    itemsize: int
    chunks: int
    documents: int
    nbytes: int

    def add(self, documents: int, nbytes: int) -> None:
        self.chunks, self.documents, self.nbytes = self.chunks + 1, self.documents + documents, self.nbytes + nbytes
        self.show()

    def show(self) -> None:
        if self.display is not None:
            self.display.update(self.chunks, self.documents, self.nbytes // self.itemsize, self.nbytes)


def write_split(out: OutputRoot, split: str, picks: np.ndarray, starts: np.ndarray, todo: list[int],
                docs: Layout, job: JobSettings, per_chunk: int, workers: int, tally: _Tally) -> dict:
    """Write the chunks ``todo`` of a split, then publish the file and its index (unless it is
    published already); returns the split's meta entry."""
    dest, partial = out.combined(split), out.mix_partial(split)
    total = int(starts[-1])
    if not dest.exists():
        with out.storage.open_write(partial, "append") as f:
            f.truncate(total)
        # ``workers`` threads copy; one more syncs and commits finished copies meanwhile, so the
        # disk's writeback and the next chunk's copy overlap even with one worker
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, ThreadPoolExecutor(max_workers=1) as commits:
            running = {pool.submit(copy_chunk, out, split, picks[n * per_chunk:(n + 1) * per_chunk], int(starts[n]),
                                   docs, job): (n, False) for n in todo}
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for result in finished:
                    n, committed = running.pop(result)
                    chunk = picks[n * per_chunk:(n + 1) * per_chunk]
                    if committed:
                        result.result()
                        tally.add(len(chunk), int(starts[n + 1] - starts[n]))
                    else:
                        running[commits.submit(commit_chunk, out, split, n, chunk, docs, job, result.result())] = \
                            (n, True)
        _write_index(out.doc_index(split), picks, per_chunk)
        out.storage.replace(partial, dest)
        out.storage.sync_folder(dest.parent)
    itemsize = job.token_width
    return {"file": dest.name, "shards": len(starts) - 1, "documents": len(picks), "tokens": total // itemsize,
            "bytes": total, "partial": False, "missing_shards": 0, "skipped_lines": {},
            "index": out.doc_index(split).name, "sources": docs.source_counts(picks)}


def _write_index(path: Path, picks: np.ndarray, per_chunk: int) -> None:
    storage, tmp = storage_for(path), temp_path(path)
    with storage.open_write(tmp, "create") as f:
        ends = DocEnds(f)
        for lo in range(0, len(picks), per_chunk):
            ends.add(picks["tokens"][lo:lo + per_chunk])
        storage.sync(f)
    storage.replace(tmp, path)


def _remove_temp_files(out: OutputRoot) -> None:
    """Remove the temporary files a killed run of this mix left (a record, an index or meta
    written but never renamed into place): called once ``prepare`` found the folder to be this
    mix's own, before anything of this run is written; what they were meant to hold is written
    again, since a chunk without its done record is copied again."""
    for path in temp_files(out.root):
        out.storage.delete(path)


def write_mix(out: OutputRoot, spec: MixSpec, sources: list[SourceDocs], plan: Plan, job_raw: dict,
              first: OutputRoot, workers: int, progress: ProgressFactory | None = None) -> dict:
    """Write (or finish) the whole mix, its chunks shown on the display ``progress`` makes (None:
    nothing shown); returns the meta written."""
    docs = Layout.join(sources, plan.first_shard)
    job = JobSettings.from_dict(job_raw)
    itemsize = job.token_width
    starts = prepare(out, mix_record(spec, sources, plan), job_raw, first, plan, spec, itemsize)
    _remove_temp_files(out)
    todo = {split: _unfinished(out, split, s) for split, s in starts.items()}
    per = spec.chunk_documents
    total_bytes = sum(int(s[-1]) for s in starts.values())
    chunks = sum(len(s) - 1 for s in starts.values())
    left_bytes = sum(int(starts[split][n + 1] - starts[split][n]) for split, ns in todo.items() for n in ns)
    left_docs = sum(len(plan.splits[split][n * per:(n + 1) * per]) for split, ns in todo.items() for n in ns)
    before = total_bytes - left_bytes
    display = progress(chunks, total_bytes, before, before // itemsize) if progress else None
    tally = _Tally(display, itemsize, chunks - sum(len(ns) for ns in todo.values()),
                   sum(len(p) for p in plan.splits.values()) - left_docs, before)
    tally.show()  # what a relaunch finds
    try:
        entries = {split: write_split(out, split, picks, starts[split], todo[split], docs, job, per, workers, tally)
                   for split, picks in plan.splits.items()}
    finally:
        if display is not None:
            display.close()
    entries[spec.split]["mix"] = mix_section(plan)
    meta = build_meta(out, JobSettings.from_dict(orjson.loads(out.storage.read_whole(out.job))), entries,
                      log=lambda _line: None)
    with PendingSet([out.meta_json, out.meta_pkl]) as pending:
        write_meta(out, meta, pending)
        pending.publish()
    return meta.to_dict()
