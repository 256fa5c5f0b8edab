"""Writing a planned mix into an output root, restartably.

Each split's documents are cut into chunks of ``spec.chunk_documents``; a chunk's byte range in
the split file is fixed by the plan, so any worker may write any chunk and the bytes do not
depend on who wrote what. A chunk is finished exactly when ``done/<split>/mix-<n>.json`` exists
(written after its bytes are synced); a relaunch writes only the chunks without one. The split
file is built under a hidden name and renamed when every chunk is done. ``mix.json`` pins the
resolved spec and the inputs' fingerprints: a relaunch with anything else is refused. A chunk's
done record counts only while the bytes it describes are there (``_unfinished``), so a split
file is never published from records alone. A mix writes only into an empty folder or its own
earlier output (``_own_folder``; job.json records ``kind`` "mix", created exclusively). It pins
as tokenize does (``slimtok.job.publish_pin``): manifest.jsonl and tokenizer/ are staged under
``.pin.<token>/`` and moved into place once mix.json and job.json are this mix's, so a kill in
between is finished by the next reader or run, and a concurrent mix of another spec is refused.

The output is a slimtok output root (job.json, manifest.jsonl listing the chunks, their done
records, tokenizer/, meta), so validate, slimtok.data and export read it unchanged.
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import functools
import itertools
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from ..errors import IntegrityError, MixError, RootKindError
from ..finished import build_meta, checksum_of, write_meta
from ..job import publish_pin
from ..job.pinned import discard_stage, pin_copies, tokenizer_config
from ..manifest import ShardEntry, manifest_digest
from ..progress import ProgressDisplay, ProgressFactory
from ..protocol import (
    MIX,
    SPLIT_FILES,
    Checksum,
    DoneRecord,
    JobSettings,
    MixRecord,
    OutputRoot,
    create_exclusive,
    hasher,
    hostname,
    json_lines,
    new_token,
    parse_record,
    read_record,
    require_kind,
    storage_for,
    temp_files,
    temp_glob,
    temp_path,
    write_record,
)
from ..protocol.docindex import DocEnds, read_checked_index
from ..publish import PendingSet
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
    each source's first shard. ``verify[k]`` checks shard k's bytes against its done record."""

    paths: list[Path]
    bases: list[int]
    first_shard: np.ndarray
    names: list[str]
    verify: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    @classmethod
    def join(cls, sources: list[SourceDocs], first_shard: np.ndarray) -> Layout:
        return cls([p for s in sources for p in s.paths], [b for s in sources for b in s.bases], first_shard,
                   [s.spec.name for s in sources],
                   [functools.partial(s.verify, k) for s in sources for k in range(len(s.shards))])

    def source_counts(self, picks: np.ndarray, step: int = 1 << 20) -> dict[str, dict[str, int]]:
        """Documents and tokens per source name, ``step`` records at a time (bounded temporaries)."""
        docs = np.zeros(len(self.names), dtype=np.int64)
        toks = np.zeros(len(self.names), dtype=np.int64)
        for lo in range(0, len(picks), step):
            piece = picks[lo:lo + step]
            which = np.searchsorted(self.first_shard, piece["id"] >> 32, side="right") - 1
            docs += np.bincount(which, minlength=len(self.names))
            toks += np.bincount(which, weights=piece["tokens"], minlength=len(self.names)).astype(np.int64)
        return {n: {"documents": int(d), "tokens": int(t)} for n, d, t in zip(self.names, docs, toks, strict=True) if d}


def mix_record(spec: MixSpec, sources: list[SourceDocs], plan: Plan) -> MixRecord:
    """The content of mix.json: the resolved spec and a fingerprint of every input."""
    inputs = {s.spec.name: {"root": s.spec.root, "source": s.spec.source, "fingerprint": s.fingerprint,
                            "available_tokens": r.available, "documents": r.candidates}
              for s, r in zip(sources, plan.sources, strict=True)}
    return MixRecord(spec.to_dict(), inputs)


def _chunk_starts(picks: np.ndarray, per_chunk: int, itemsize: int) -> np.ndarray:
    """Byte offset of every chunk's first document, and the split's size last (summed one chunk
    at a time, so nothing per selected document is allocated beside ``picks``)."""
    sizes = [int(picks["tokens"][lo:lo + per_chunk].sum(dtype=np.int64)) for lo in range(0, len(picks), per_chunk)]
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64) * itemsize


def prepare(out: OutputRoot, record: MixRecord, job_raw: dict, first: OutputRoot, plan: Plan, spec: MixSpec,
            itemsize: int) -> dict[str, np.ndarray]:
    """Pin mix.json (or check it, as data: a record another version wrote may order keys otherwise),
    then create job.json (exclusively: an existing one must be this mix's) and write manifest.jsonl
    and tokenizer/ (idempotent). The folder is checked first (:func:`_own_folder`): a refusal
    writes nothing."""
    starts = {split: _chunk_starts(picks, spec.chunk_documents, itemsize) for split, picks in plan.splits.items()}
    # a chunk is a byte range of the split file, not a file: its path names the range, so that one
    # file is never listed under several ids
    entries = [ShardEntry(out.mix_chunk(split, n), split, 0, n, f"{out.combined(split)}#{out.mix_chunk(split, n)}",
                          int(b - a))
               for split, s in starts.items() for n, (a, b) in enumerate(itertools.pairwise(s))]
    job = dataclasses.replace(JobSettings.from_dict(job_raw), manifest_sha256=manifest_digest(entries),
                              shards=len(entries), kind=MIX)
    _own_folder(out, record, job)
    out.storage.make_folders(out.root)

    def commit() -> bool:
        created = create_exclusive(out.mix_json, record.to_json())
        if not created:
            _same_mix(out, record)  # another launch of a mix created it since the check: it must be this one
        # job.json is created once, exclusively: a job another launch pinned here since the check (a
        # tokenize started at the same moment) is never replaced
        if not create_exclusive(out.job, job.to_json()):
            try:
                _same_job(out, job)
            except RootKindError:
                if created:  # this launch's own mix.json, moments old: the refusal leaves nothing behind
                    out.storage.delete(out.mix_json)
                raise
        return True  # job.json is this mix's: the staged copies (the same bytes whoever made them) go in

    # the copies are staged and published with job.json, as tokenize pins (a kill in between is
    # finished by the next reader or run); they are functions of the spec, so every run stages the same
    copies = dict(zip(pin_copies(out), (json_lines(entries), first.storage.read_whole(first.tokenizer_file),
                                        tokenizer_config(job)), strict=True))
    publish_pin(out, new_token(), copies, commit)
    for stage in out.pin_stages():  # a killed run's (or a concurrent same mix's): these same bytes, now in place
        discard_stage(out, stage)
    return starts


def _same_mix(out: OutputRoot, record: MixRecord) -> None:
    """Refuse unless mix.json holds ``record`` (as data)."""
    pinned, asked = read_record(out.mix_json, MixRecord), parse_record(record.to_json(), MixRecord)  # both as JSON
    if pinned != asked:
        raise MixError(f"mix.json holds another spec or other inputs than this mix ({_difference(pinned, asked)})",
                       out.mix_json, "use a new --output-root, or delete it to start over")


def _difference(pinned: MixRecord | None, asked: MixRecord | None) -> str:
    """The first setting in which two mix records differ, as ``section.key: pinned …, requested …``."""
    if pinned is None or asked is None:
        return "it cannot be read"
    for section in ("spec", "inputs"):
        old, new = getattr(pinned, section), getattr(asked, section)
        for key in sorted(old.keys() | new.keys()):
            if old.get(key) != new.get(key):
                return f"{section}.{key}: pinned {_short(old.get(key))}, requested {_short(new.get(key))}"
    return "the records differ"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _same_job(out: OutputRoot, job: JobSettings) -> None:
    """Refuse unless job.json is pinned to this mix's chunks (its manifest digest): a root of an
    older slimtok records no kind, so the chunks are what tell a mix's job from another."""
    pinned = read_record(out.job, JobSettings)
    if pinned is None or pinned.manifest_sha256 != job.manifest_sha256:
        raise RootKindError("holds a job that is not this mix (its manifest is not this mix's chunks)", out.job,
                            "use a new, empty --output-root for the mix")


def _own_folder(out: OutputRoot, record: MixRecord, job: JobSettings) -> None:
    """A mix writes only into a folder that is absent, empty, or holds this very mix: its mix.json,
    and a job.json (if any) pinned to this mix's chunks. Anything else (another job, one of the
    mix's own sources, a root of an older slimtok with a stray mix.json, foreign files) is
    refused before anything is written. Temporary files of a mix.json whose creation a kill cut
    short are this mix's, as are the pin stages of a run killed before it created mix.json."""
    require_kind(out, "mix")
    if out.storage.exists(out.mix_json):
        _same_mix(out, record)
        if out.storage.exists(out.job):
            _same_job(out, job)
        return
    ours = temp_glob(out.mix_json.name)
    stages = {stage.name for stage in out.pin_stages()}
    foreign = sorted(n for n in out.storage.list_names(out.root) if not fnmatch.fnmatch(n, ours) and n not in stages)
    if foreign:
        raise RootKindError(f"holds {len(foreign)} name(s) that are not this mix's, e.g. {foreign[0]!r}", out.root,
                            "a mix writes only into an empty folder or its own earlier output: use a new, empty "
                            "--output-root")


def _spans(picks: np.ndarray, itemsize: int) -> list[tuple[int, int, int]]:
    """(file, start, length) runs for ``picks`` in order, documents adjacent in one file merged."""
    f, s = picks["id"] >> 32, picks["start"].astype(np.int64) * itemsize
    n = picks["tokens"].astype(np.int64) * itemsize
    brk = np.flatnonzero((f[1:] != f[:-1]) | (s[1:] != s[:-1] + n[:-1])) + 1
    heads = np.concatenate([[0], brk])
    return list(zip(f[heads].tolist(), s[heads].tolist(), np.add.reduceat(n, heads).tolist(), strict=True))


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


def _unfinished(out: OutputRoot, split: str, starts: np.ndarray) -> tuple[list[int], bool]:
    """(chunks of a split still to write, whether the split file is published whole).

    A chunk counts as written only when the file that holds it (the published split file, else
    the partial one) has its byte range at the size and checksum of its done record: records are
    never trusted over bytes. So a published file that was removed, cut or changed is rebuilt
    (its chunks are written again into a new partial file, then published), and a partial file
    that is missing or of another size is started over: a fresh partial file holds zeros, which
    must never be published under the chunk records of bytes that are gone."""
    dest, partial = out.combined(split), out.mix_partial(split)
    total, count = int(starts[-1]), len(starts) - 1
    records = [read_record(out.done(out.mix_chunk(split, n)), DoneRecord) for n in range(count)]
    if _size(out, dest) == total and not _mismatched(out, dest, starts, records):
        return [], True
    if _size(out, partial) != total:
        return list(range(count)), False
    return _mismatched(out, partial, starts, records), False


def _size(out: OutputRoot, path: Path) -> int:
    """``path``'s size, -1 when it is missing."""
    try:
        return out.storage.stat(path).size
    except FileNotFoundError:
        return -1


def _mismatched(out: OutputRoot, path: Path, starts: np.ndarray, records: list[DoneRecord | None]) -> list[int]:
    """Chunks whose byte range in ``path`` (``starts[n]:starts[n + 1]``) is not what their done
    record says (no record, another size, another checksum); one read of the recorded ranges."""
    bad = []
    with out.storage.open_read(path) as f:
        for n, record in enumerate(records):
            size = int(starts[n + 1] - starts[n])
            if record is None or record.bytes != size:
                bad.append(n)
                continue
            want = record.data_checksum()
            f.seek(int(starts[n]))
            if checksum_of(f, size, want.algorithm) != want.hexdigest:
                bad.append(n)
    return bad


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
                published: bool, docs: Layout, job: JobSettings, per_chunk: int, workers: int, tally: _Tally) -> dict:
    """Write the chunks ``todo`` of a split, then publish the file and its index (unless it is
    ``published`` whole already); returns the split's meta entry."""
    dest, partial = out.combined(split), out.mix_partial(split)
    total = int(starts[-1])
    if not published:
        _verify_sources(picks, todo, per_chunk, docs, workers)
        with out.storage.open_write(partial, "append") as f:
            f.truncate(total)
        # ``workers`` threads copy; one more syncs and commits finished copies meanwhile, so the
        # disk's writeback and the next chunk's copy overlap even with one worker
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, ThreadPoolExecutor(max_workers=1) as commits:
            # each chunk's copy (its _Copied), then its commit (None): (chunk, committed)
            running: dict[Future[Any], tuple[int, bool]] = {
                pool.submit(copy_chunk, out, split, picks[n * per_chunk:(n + 1) * per_chunk], int(starts[n]), docs,
                            job): (n, False) for n in todo}
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
        index_checksum = _write_index(out.doc_index(split), picks, per_chunk)
        out.storage.replace(partial, dest)
        out.storage.sync_folder(dest.parent)
    else:
        index_checksum = _index(out.doc_index(split), picks, per_chunk, total // job.token_width)
    itemsize = job.token_width
    return {"file": dest.name, "shards": len(starts) - 1, "documents": len(picks), "tokens": total // itemsize,
            "bytes": total, "partial": False, "missing_shards": 0, "skipped_lines": {},
            "index": out.doc_index(split).name, "sources": docs.source_counts(picks), "index_checksum": index_checksum}


def _verify_sources(picks: np.ndarray, todo: list[int], per_chunk: int, docs: Layout, workers: int) -> None:
    """Check every source shard the chunks ``todo`` copy from against its done record, before the
    first byte is copied (``workers`` threads: hashing releases the GIL). Shards only finished
    chunks drew from are not read again; a damaged shard is refused, never re-checksummed."""
    used = np.zeros(len(docs.paths), dtype=bool)
    for n in todo:
        used[np.unique(picks["id"][n * per_chunk:(n + 1) * per_chunk] >> 32)] = True
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(lambda k: docs.verify[k](), np.flatnonzero(used).tolist()):
            pass  # map re-raises the first shard's IntegrityError


def _ends(picks: np.ndarray, per_chunk: int, ends: DocEnds) -> DocEnds:
    for lo in range(0, len(picks), per_chunk):
        ends.add(picks["tokens"][lo:lo + per_chunk])
    return ends


def _write_index(path: Path, picks: np.ndarray, per_chunk: int) -> str:
    """Write the split's index from the plan; returns its checksum (meta's ``index_checksum``)."""
    storage, tmp = storage_for(path), temp_path(path)
    with storage.open_write(tmp, "create") as f:
        checksum = _ends(picks, per_chunk, DocEnds(f)).checksum
        storage.sync(f)
    storage.replace(tmp, path)
    return checksum


def _index(path: Path, picks: np.ndarray, per_chunk: int, tokens: int) -> str:
    """The checksum of a published split's index, which is rewritten from the plan when it is
    missing or differs from it (a published file is never described by records alone)."""
    checksum = _ends(picks, per_chunk, DocEnds(None)).checksum
    try:
        read_checked_index(path, len(picks), tokens, checksum, "")
    except IntegrityError:
        return _write_index(path, picks, per_chunk)
    return checksum


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
    state = {split: _unfinished(out, split, s) for split, s in starts.items()}
    todo = {split: chunks for split, (chunks, _) in state.items()}
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
        entries = {split: write_split(out, split, picks, starts[split], *state[split], docs, job, per, workers,
                                      tally)
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
