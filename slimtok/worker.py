"""Step 5: tokenize claimed shards into per-shard token files, with checkpoints.

Reads the manifest, ``job.json`` and ``tokenizer/`` of an output root; for every shard it claims,
writes ``shards/<id>.<token>.part``, ``checkpoints/<id>.json``, then ``shards/<id>.bin`` and
``done/<id>.json`` (or ``failed/<id>.json``); keeps ``heartbeats/<worker>.json`` and
``logs/<worker>.log`` up to date.

Invariants a relaunch relies on:

* tokens reach the part file only in whole documents, and a checkpoint is written only after the
  data it covers is fdatasync'd, so (lines, bytes) of any checkpoint is a valid resume point;
* a resume copies the checkpointed prefix into the new claim's own part file, so a holder that
  lost its claim (stopped, then woken) can never corrupt the new holder's output;
* before every checkpoint and before finishing, the worker checks that the lock still names its
  claim, and the done record is created exclusively, so a shard is committed exactly once;
* a written shard is committed (synced, renamed, recorded, released) on the worker's commit thread
  while the next shard is encoded; at most one commit is in flight, its claim stays held and
  heartbeated until it ends, and the worker waits for it before exiting, also on a signal.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import logging
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import orjson
import psutil
from tokenizers import Tokenizer

from .claims import Claim, Claimer, current_holder, preference_order
from .manifest import ShardEntry, manifest_digest, read_manifest
from .protocol import (DEFAULT_SOURCE_KEY, SPLITS, Checkpoint, DoneRecord, FailedRecord, Heartbeat, JobSettings,
                       LockRecord, OutputRoot, create_exclusive, fsync_dir, new_token, read_record, worker_name,
                       write_atomic, write_record)
from .reader import ShardReader, ShardReadError, TextPieces
from .tokenizer import BackendReport, Encoder, LoadedTokenizer, TokenizerError, load_tokenizer, resolve_dtype

EXIT_OK = 0
EXIT_SHARDS_FAILED = 1
EXIT_FATAL = 3
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped on request; relaunching resumes

#: Characters of text collected before one call to the encoder (larger batches gain little more).
BATCH_CHARS = 1 << 19
BATCH_DOCS = 2048
COPY_BLOCK = 8 << 20
#: Seconds between looks at shards other workers hold: doubling from the first to the longest.
POLL_FIRST = 0.1
POLL_LONGEST = 5.0

log = logging.getLogger("slimtok.worker")


class JobMismatch(Exception):
    """A relaunch asked for settings other than those pinned in job.json."""


class LostClaim(Exception):
    """Another worker took this shard over; stop writing it."""


class EmptyShard(Exception):
    """Lines were read but none held a usable document: almost always the wrong file or key."""


class Interrupted(Exception):
    """SIGTERM or SIGINT: progress is checkpointed, the claim released."""


@dataclass
class TokenizeSettings:
    """What ``slimtok tokenize`` was asked to do; the pinned subset lives in job.json."""

    manifest: str
    output_root: str
    tokenizer: str
    tokens_per_write: int = 131072
    #: seconds of work between checkpoints (0: at every write); a crash redoes at most this much
    checkpoint_every: float = 5.0
    splits: tuple[str, ...] = SPLITS
    text_key: str = "text"
    eos_id: int | None = None
    dtype: str = "uint32"
    #: dotted path whose value names a document's source ("" for none); pinned in job.json
    source_key: str = DEFAULT_SOURCE_KEY
    #: encoder backend (auto|tokenizers|fastokens); not pinned: every backend gives the reference ids
    backend: str = "auto"
    retry_failed: bool = False
    stale_after: float = 300.0
    process_index: int = 0
    process_count: int = 1
    workers: int = 1
    launch: str = field(default_factory=new_token)

    @property
    def heartbeat_interval(self) -> float:
        return max(0.2, min(30.0, self.stale_after / 6))


# -- job pinning -----------------------------------------------------------------------------

def requested_job(settings: TokenizeSettings, entries: list[ShardEntry], tok: LoadedTokenizer) -> JobSettings:
    return JobSettings(manifest_sha256=manifest_digest(entries), shards=len(entries), tokenizer=tok.source,
                       tokenizer_sha256=tok.sha256, vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id,
                       eos_token=tok.eos_token, dtype=resolve_dtype(settings.dtype, tok.vocab_size),
                       text_key=settings.text_key, source_key=settings.source_key)


def pin_job(settings: TokenizeSettings) -> JobSettings:
    """Create job.json on first use, or check a relaunch against it; copy manifest and tokenizer.

    Raises JobMismatch naming each differing setting before anything else is written.
    """
    root = OutputRoot(settings.output_root)
    entries = read_manifest(settings.manifest)
    tok = load_tokenizer(settings.tokenizer, settings.eos_id)
    requested = requested_job(settings, entries, tok)
    tok_text: str | None = None
    if not root.job.exists():
        root.root.mkdir(parents=True, exist_ok=True)
        tok_text = tok.file_json()
        create_exclusive(root.job, replace(requested, tokenizer_file_sha256=_sha256(tok_text)).to_json())
    pinned = read_record(root.job, JobSettings)
    if pinned is None:
        raise JobMismatch(f"{root.job} exists but is not a slimtok job record; use a fresh --output-root")
    diffs = pinned.differences(requested)
    if diffs:
        raise JobMismatch(f"{root.root} was started with other settings; refusing to mix outputs. "
                          + "; ".join(diffs) + ". Use the original settings or a new --output-root.")
    if not root.manifest.exists():
        write_atomic(root.manifest, Path(settings.manifest).read_bytes())
    tok_file = root.tokenizer_dir / "tokenizer.json"
    if not tok_file.exists():
        write_atomic(root.tokenizer_dir / "tokenizer_config.json",
                     _tokenizer_config(pinned.eos_token))
        tok_text = tok_text or tok.file_json()
        if _sha256(tok_text) != pinned.tokenizer_file_sha256:  # another writer's form: the canonical one
            tok_text = tok.to_json()
        write_atomic(tok_file, tok_text.encode())
    return pinned


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _tokenizer_config(eos_token: str | None) -> bytes:
    return orjson.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos_token},
                        option=orjson.OPT_INDENT_2)


def pinned_tokenizer_path(root: OutputRoot, job: JobSettings) -> Path:
    """The job's own copy of ``tokenizer.json``, checked against the pinned fingerprint.

    The copy was written as the tokenizer's canonical JSON (sha256 = the fingerprint) or in the
    compact form that was proven to load back to it (sha256 recorded beside the fingerprint), so
    the file's own sha256 suffices: no re-serialization or vocabulary walk at every worker start.
    """
    path = root.tokenizer_dir / "tokenizer.json"
    if hashlib.sha256(path.read_bytes()).hexdigest() not in {job.tokenizer_sha256, job.tokenizer_file_sha256}:
        raise TokenizerError(f"{path} does not match job.json's tokenizer_sha256; the output root was modified")
    return path


def load_pinned_tokenizer(root: OutputRoot, job: JobSettings) -> Tokenizer:
    """The job's own copy of the tokenizer, checked as :func:`pinned_tokenizer_path` says."""
    return Tokenizer.from_file(str(pinned_tokenizer_path(root, job)))  # from_file peaks lower than from_str


# -- per-shard progress ----------------------------------------------------------------------

@dataclass
class Progress:
    """Counts for the data written so far to one part file."""

    lines: int = 0
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)


@dataclass
class _Mark:
    """Where the reader stood right after one document, and that document's source."""

    lines: int
    skipped: dict[str, int]
    source: str | None = None


class ShardTask:
    """Tokenizes one claimed shard from its last checkpoint to its done record."""

    def __init__(self, worker: Worker, entry: ShardEntry, claim: Claim):
        self.w = worker
        self.root = worker.root
        self.entry = entry
        self.claim = claim
        self.part = self.root.part(entry.id, claim.token)
        self.progress = Progress()
        self.fd = -1
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.pending_docs = 0
        self.pending_sources: dict[str, list[int]] = {}
        self.last_mark = _Mark(0, {})
        self.started = time.time()
        self.checkpointed = time.monotonic()
        self.source = _source_state(entry.path)

    def write(self) -> None:
        """Resume or start, and write every document of the shard into the part file.

        On return the part file is complete but not yet synced, and its descriptor stays open for
        :meth:`commit`; on an exception it is closed.
        """
        ckpt = read_record(self.root.checkpoint(self.entry.id), Checkpoint)
        self._drop_stale_parts(ckpt)
        self.part.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._resume(ckpt)
            reader = ShardReader(self.entry.path, self.w.job.text_key, self.progress.lines, self.progress.skipped,
                                 source_key=self.w.job.source_key)
            try:
                self._tokenize(reader)
            except Interrupted:
                if self.pending:  # keep what is encoded: checkpoint it before letting go
                    self._flush(self.last_mark, checkpoint=True)
                raise
            self._flush(_Mark(reader.lines, dict(reader.skipped)), checkpoint=False)
            self._check_not_empty()
        except BaseException:
            os.close(self.fd)
            raise

    def abandon(self) -> None:
        """Close the part file written by :meth:`write` without committing it."""
        os.close(self.fd)

    def commit(self) -> DoneRecord:
        """Sync and close the part file written by :meth:`write`, then publish the shard.

        Runs on the worker's commit thread while the next shard is being encoded; it touches
        only this task's files and the claim it still holds.
        """
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
        self._check_source_unchanged()
        return self._publish()

    # -- resume -----------------------------------------------------------------------------
    def _drop_stale_parts(self, ckpt: Checkpoint | None) -> None:
        """Delete part files of earlier claims on this shard, except the one the checkpoint names.

        Done before our own part file exists: only the lock names the claim we replaced, so if we
        were killed after creating our file, the next holder could no longer find that one. Only
        after a takeover or with a checkpoint does a shard have earlier part files; then one
        listing also finds a part file orphaned by a holder killed in the middle of its resume
        (after checkpointing its copy, before deleting the file it copied from).
        """
        if self.claim.previous is None and ckpt is None:
            return
        keep = self.root.resolve(ckpt.part) if ckpt is not None and ckpt.shard == self.entry.id else None
        for part in self.root.parts(self.entry.id):
            if part != keep:
                part.unlink(missing_ok=True)

    def _resume(self, ckpt: Checkpoint | None) -> None:
        """Continue from the shard's checkpoint if its data is intact and the shard file is the one
        it was counted in (same size and mtime), else from the start.

        The copied progress is checkpointed as ours before the old part file is deleted, so a kill
        at any point leaves a checkpoint naming a file that holds its bytes (a kill between the two
        leaves the old file to the next holder's :meth:`_drop_stale_parts`).
        """
        if ckpt is None or ckpt.shard != self.entry.id:
            return
        source = self.root.resolve(ckpt.part)
        if self._source_changed_since(ckpt):
            log.warning("%s: %s changed since its checkpoint (%s then, %s now); starting the shard over",
                        self.entry.id, self.entry.path, _describe_state((ckpt.source_size, ckpt.source_mtime_ns)),
                        _describe_state(self.source))
        elif self._copy_prefix(source, ckpt.bytes):
            p = self.progress
            p.lines, p.documents, p.tokens, p.bytes = ckpt.lines, ckpt.documents, ckpt.tokens, ckpt.bytes
            p.skipped = dict(ckpt.skipped)
            p.sources = _copy_sources(ckpt.sources)
            self._checkpoint()
            log.info("%s: resuming at line %d (%d tokens) from %s", self.entry.id, p.lines, p.tokens, ckpt.part)
        if source != self.part:
            source.unlink(missing_ok=True)

    def _source_changed_since(self, ckpt: Checkpoint) -> bool:
        """Whether the shard file differs from the one the checkpoint's lines were counted in."""
        if ckpt.source_mtime_ns == -1:  # written before slimtok recorded it: trust the lines
            return False
        return self.source != (ckpt.source_size, ckpt.source_mtime_ns)

    def _check_source_unchanged(self) -> None:
        """The lines just read must all come from the file as it was when the task began."""
        now = _source_state(self.entry.path)
        if now is not None and now != self.source:
            raise ShardReadError(self.entry.path, f"changed while it was being tokenized ({_describe_state(self.source)}"
                                 f" when opened, {_describe_state(now)} at the end); relaunch with "
                                 "--retry-failed to tokenize it again")

    def _copy_prefix(self, source: Path, size: int) -> bool:
        """Copy the first ``size`` bytes of ``source`` into our part file; False if it is short."""
        try:
            src = open(source, "rb")
        except FileNotFoundError:
            return False
        with src:
            if os.fstat(src.fileno()).st_size < size:
                return False
            remaining = size
            while remaining:
                block = src.read(min(COPY_BLOCK, remaining))
                if not block:
                    return False
                self.progress.hasher.update(block)
                _write_all(self.fd, block)
                remaining -= len(block)
        os.fdatasync(self.fd)
        return True

    # -- main loop --------------------------------------------------------------------------
    def _tokenize(self, reader: ShardReader) -> None:
        texts: list[str] = []
        marks: list[_Mark] = []
        chars = 0
        for text, source in reader.records():
            if isinstance(text, TextPieces):
                if texts:  # keep document order: the batch so far goes first
                    self._encode(texts, marks)
                    texts, marks, chars = [], [], 0
                self._encode_pieces(text, _Mark(reader.lines, reader.skipped, source))
                del text  # releases the huge raw line before the reader reads on
                self.w.check_running(self.claim)
                continue
            texts.append(text)
            marks.append(_Mark(reader.lines, reader.skipped, source))
            chars += len(text)
            if chars >= BATCH_CHARS or len(texts) >= BATCH_DOCS:
                self._encode(texts, marks)
                texts, marks, chars = [], [], 0
                self.w.check_running(self.claim)
        if texts:
            self._encode(texts, marks)

    def _encode(self, texts: list[str], marks: list[_Mark]) -> None:
        """Encode a batch and write at each document boundary where tokens_per_write is reached."""
        flat, lengths = self.w.encoder.encode(texts)
        start = end = 0
        for i, n in enumerate(lengths):
            end += n
            if self._count_document(n, marks[i].source):
                self.pending.append(flat[start:end])
                self._flush(marks[i], checkpoint=self._checkpoint_due())
                start = end
        if end > start:
            self.pending.append(flat[start:end])
        self.last_mark = marks[-1]
        self.w.stats.add(len(texts), int(flat.size), sum(len(t) for t in texts))

    def _encode_pieces(self, text: TextPieces, mark: _Mark) -> None:
        """Encode one lazily decoded document; its ids join ``pending`` as chunks (never concatenated)."""
        tokens = 0
        for chunk in self.w.encoder.encode_pieces(text):
            self.pending.append(chunk)
            tokens += chunk.size
        if self._count_document(tokens, mark.source):
            self._flush(mark, checkpoint=self._checkpoint_due())
        self.last_mark = mark
        self.w.stats.add(1, tokens, len(text))

    def _count_document(self, tokens: int, source: str | None) -> bool:
        """Count one encoded document as pending; True when tokens_per_write is reached."""
        self.pending_tokens += tokens
        self.pending_docs += 1
        if source is not None:
            counts = self.pending_sources.get(source)
            if counts is None:
                counts = self.pending_sources[source] = [0, 0]
            counts[0] += 1
            counts[1] += tokens
        return self.pending_tokens >= self.w.settings.tokens_per_write

    def _checkpoint_due(self) -> bool:
        return time.monotonic() - self.checkpointed >= self.w.settings.checkpoint_every

    def _flush(self, mark: _Mark, checkpoint: bool) -> None:
        """Write pending tokens, make them durable, then (optionally) record a checkpoint."""
        p = self.progress
        for arr in self.pending:
            _write_all(self.fd, memoryview(arr).cast("B"))
            p.hasher.update(memoryview(arr).cast("B"))
            p.bytes += arr.nbytes
        p.tokens += self.pending_tokens
        p.documents += self.pending_docs
        p.lines, p.skipped = mark.lines, mark.skipped
        for source, (docs, tokens) in self.pending_sources.items():
            counts = p.sources.setdefault(source, {"documents": 0, "tokens": 0})
            counts["documents"] += docs
            counts["tokens"] += tokens
        self.pending, self.pending_tokens, self.pending_docs, self.pending_sources = [], 0, 0, {}
        if not checkpoint:
            return
        os.fdatasync(self.fd)
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Record progress (whose data is already fdatasync'd) as ours, if the claim is still ours."""
        self._check_claim()
        self.checkpointed = time.monotonic()
        p = self.progress
        write_record(self.root.checkpoint(self.entry.id),
                     Checkpoint(shard=self.entry.id, token=self.claim.token, part=self.root.relative(self.part),
                                lines=p.lines, documents=p.documents, tokens=p.tokens, bytes=p.bytes,
                                skipped=dict(p.skipped), sources=_copy_sources(p.sources),
                                source_size=self.source[0] if self.source else -1,
                                source_mtime_ns=self.source[1] if self.source else -1), durable=False)

    def _check_claim(self) -> None:
        if self.claim.token in self.w.lost_tokens or not self.w.claimer.holds(self.claim):
            raise LostClaim(f"{self.entry.id}: lock taken over by another worker; stopping this copy")

    def _check_not_empty(self) -> None:
        p = self.progress
        if p.lines and not p.documents:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(p.skipped.items()))
            raise EmptyShard(f"no usable document in {p.lines} lines (skipped: {reasons}); check the file "
                             f"and --text-key {self.w.job.text_key!r}")

    # -- commit -----------------------------------------------------------------------------
    def _publish(self) -> DoneRecord:
        """Rename the synced part file to its final name, then create the done record."""
        self._check_claim()
        p = self.progress
        data = self.root.data(self.entry.id)
        try:
            os.replace(self.part, data)
        except FileNotFoundError as exc:  # a new holder removed our part file after taking over
            raise LostClaim(f"{self.entry.id}: part file removed by a new holder; stopping this copy") from exc
        fsync_dir(data.parent)
        record = DoneRecord(shard=self.entry.id, split=self.entry.split, file=self.root.relative(data),
                            lines=p.lines, documents=p.documents, tokens=p.tokens, bytes=p.bytes,
                            sha256=p.hasher.hexdigest(), dtype=self.w.job.dtype, skipped=dict(p.skipped),
                            source_size=self.entry.size, token=self.claim.token, host=self.w.me.host,
                            finished_at=time.time(), seconds=round(time.time() - self.started, 3),
                            sources=_copy_sources(p.sources), backend=self.w.encoder.backend)
        done = self.root.done(self.entry.id)
        done.parent.mkdir(parents=True, exist_ok=True)
        if create_exclusive(done, record.to_json()):
            self._journal(record)
        else:
            existing = read_record(done, DoneRecord)
            if existing is None or existing.sha256 != record.sha256:
                log.error("%s: a done record already exists with different content (%s vs %s); "
                          "the tokenizer is not deterministic or the output root was modified",
                          self.entry.id, existing and existing.sha256, record.sha256)
        self.root.checkpoint(self.entry.id).unlink(missing_ok=True)
        self.root.failed(self.entry.id).unlink(missing_ok=True)
        return record

    def _journal(self, record: DoneRecord) -> None:
        """Append the shard's status row to this worker's journal (a cache: failures only warn)."""
        path = self.root.done_journal(self.w.name)
        line = orjson.dumps([record.shard, *record.rollup_row()]) + b"\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                _write_all(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("%s: cannot append to %s: %s (status will open the done record instead)",
                        self.entry.id, path, exc)


def _source_state(path: str | Path) -> tuple[int, int] | None:
    """(size, mtime in ns) of an input shard, or None if it cannot be stat'ed (the reader says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _describe_state(state: tuple[int, int] | None) -> str:
    return "not readable" if state is None else f"{state[0]} bytes, mtime_ns {state[1]}"


def _copy_sources(sources: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {name: dict(counts) for name, counts in sources.items()}


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- the worker ------------------------------------------------------------------------------

class Stats:
    """Thread-safe running totals for heartbeats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.documents = self.tokens = self.text_chars = self.shards_done = 0
        self.started = time.time()

    def add(self, documents: int, tokens: int, chars: int) -> None:
        with self._lock:
            self.documents += documents
            self.tokens += tokens
            self.text_chars += chars


def _record_backend(root: OutputRoot, report: BackendReport) -> None:
    """Note the backend in job.json's unpinned fields (atomic replace; pinned fields are kept as read)."""
    job = read_record(root.job, JobSettings)
    noted = replace(job, backend_requested=report.requested, backend=report.backend,
                    backend_verification=report.verification) if job else None
    if noted is not None and noted != job:
        write_record(root.job, noted)


class Worker:
    """One worker process: claims shards in preference order until every selected shard is settled."""

    def __init__(self, settings: TokenizeSettings, worker_index: int):
        self.settings = settings
        self.index = worker_index
        self.root = OutputRoot(settings.output_root)
        job = read_record(self.root.job, JobSettings)
        if job is None:
            raise JobMismatch(f"{self.root.job} is missing; run `slimtok tokenize` to create the job")
        self.job = job
        self.entries = read_manifest(settings.manifest)
        # A path, not a loaded tokenizer: the encoder then loads fastokens first (the lower peak).
        self.encoder = Encoder(pinned_tokenizer_path(self.root, job), job.eos_token_id, job.dtype,
                               settings.backend)
        if settings.process_index == 0 and worker_index == 0:
            _record_backend(self.root, self.encoder.report)
        self.me = current_holder(settings.process_index, worker_index)
        self.name = worker_name(self.me.host, settings.process_index, worker_index)
        self.claimer = Claimer(self.root, self.me, settings.stale_after)
        self.stats = Stats()
        self.stop = threading.Event()
        self.lost_tokens: set[str] = set()  # claims the heartbeat found taken over
        self.current: Claim | None = None  # the claim being encoded
        # Every claim still held: the one being encoded and the one being committed. The heartbeat
        # refreshes all of them; only the worker thread and the commit thread change the dict.
        self._held: dict[str, Claim] = {}
        self._held_lock = threading.Lock()
        # One commit at a time runs on this thread, overlapped with encoding the next shard.
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._commit_pending: Future[None] | None = None
        self.failed = 0

    def check_running(self, claim: Claim | None = None) -> None:
        """Raise at a safe point if a signal asked us to stop or ``claim`` was taken over."""
        if claim is not None and claim.token in self.lost_tokens:
            raise LostClaim(f"{claim.shard}: lock taken over by another worker; stopping this copy")
        if self.stop.is_set():
            raise Interrupted()

    def run(self) -> int:
        """Process shards; returns an exit status (see EXIT_*)."""
        # What exists now (manifest entries, tokenizers) lives as long as the worker: frozen, the
        # collections that each document's parsed dict triggers do not walk it again and again.
        gc.freeze()
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        try:
            try:
                self._loop()
            finally:  # also on a signal: the shard already written is published, not redone
                self._drain_commits()
        except Interrupted:
            log.warning("%s: stopped on signal; progress is checkpointed, relaunch to resume", self.name)
            return EXIT_INTERRUPTED
        except OSError as exc:
            log.error("%s: cannot write under %s: %s; progress up to the last checkpoint is kept, "
                      "fix the cause and relaunch", self.name, self.root.root, exc)
            return EXIT_FATAL
        finally:
            self.stop.set()
            beat.join(timeout=5)
            self._write_heartbeat("exited")
        return EXIT_SHARDS_FAILED if self.failed else EXIT_OK

    def _loop(self) -> None:
        s = self.settings
        order = preference_order(len(self.entries), s.process_index, s.process_count, self.index, s.workers)
        # This worker's own slice of the manifest: each shard is in exactly one worker's slice.
        own = len(range(s.process_index, len(self.entries), s.process_count)[self.index::s.workers])
        waiting = []
        for k, pos in enumerate(order):
            entry = self.entries[pos]
            if entry.split not in s.splits:
                continue
            outcome = self._attempt(entry)
            if outcome == "busy":
                waiting.append(entry)
            elif outcome == "settled" and k < own:
                self.claimer.clear_leftover(entry.id)
        self._await_commit()  # before a possibly long wait: publish our last shard, surface its error
        if waiting:
            log.info("%s: %d shard(s) held by other workers; watching them for completion or staleness",
                     self.name, len(waiting))
        # Look again soon, then back off: the last shards of a launch usually finish within
        # seconds, while a long wait (a lost node) only needs checking a few times per stale_after.
        poll, longest = POLL_FIRST, max(POLL_FIRST, min(POLL_LONGEST, s.stale_after / 4))
        while waiting:
            self.stop.wait(poll)
            self.check_running()
            waiting = [e for e in waiting if self._attempt(e) == "busy"]
            poll = min(poll * 2, longest)

    def _settled(self, entry: ShardEntry) -> bool:
        if self.root.done(entry.id).exists():
            return True
        failed = read_record(self.root.failed(entry.id), FailedRecord)
        return failed is not None and (not self.settings.retry_failed or failed.launch == self.settings.launch)

    def _attempt(self, entry: ShardEntry) -> str:
        """'settled' when the shard needs nothing from us, 'busy' when another worker holds it,
        'processed' when we wrote it (its commit may still be in flight, under our lock)."""
        self.check_running()
        if self._settled(entry):
            return "settled"
        claim = self.claimer.try_claim(entry.id)
        if claim is None:
            return "busy"
        if self._settled(entry):  # finished between our look and our claim
            self.claimer.release(claim)
            return "settled"
        self._process(entry, claim)
        return "processed"

    def _process(self, entry: ShardEntry, claim: Claim) -> None:
        """Write the shard on this thread, then hand its commit to the commit thread."""
        self._hold(claim)
        self.current = claim
        task = ShardTask(self, entry, claim)
        log.info("%s: claimed %s (%s)%s", self.name, entry.id, claim.token,
                 f", taking over from {_describe(claim.previous)}" if claim.previous else "")
        try:
            task.write()
        except BaseException as exc:
            if not self._settle_after(task, exc):
                raise
            return
        finally:
            self.current = None
        try:
            self._await_commit()  # at most one commit in flight: its syncs overlap this shard's encoding
        except BaseException as exc:  # the previous commit failed: this shard is not committed either
            task.abandon()
            self._settle_after(task, exc)
            raise
        self._commit_pending = self._committer.submit(self._commit, task)

    def _commit(self, task: ShardTask) -> None:
        """On the commit thread: publish one written shard, then release its claim."""
        try:
            record = task.commit()
        except BaseException as exc:
            if not self._settle_after(task, exc):
                raise
            return
        try:
            self.claimer.release(task.claim)
        finally:
            self._unhold(task.claim)
        self.stats.shards_done += 1
        log.info("%s: done %s: %d documents, %d tokens, %d skipped lines in %.1fs", self.name, task.entry.id,
                 record.documents, record.tokens, sum(record.skipped.values()), record.seconds)

    def _settle_after(self, task: ShardTask, exc: BaseException) -> bool:
        """Leave the shard's files and claim as ``exc`` requires; False when it must propagate."""
        try:
            if isinstance(exc, ShardReadError):
                self._fail(task, exc.reason)
            elif isinstance(exc, TokenizerError):
                self._fail(task, f"tokenizer error: {exc}")
            elif isinstance(exc, EmptyShard):
                self._fail(task, str(exc))
            elif isinstance(exc, LostClaim):
                log.warning("%s", exc)
                task.part.unlink(missing_ok=True)
            elif isinstance(exc, Interrupted):
                self.claimer.release(task.claim)  # the checkpoint stays: any worker resumes at once
                return False
            elif isinstance(exc, OSError):
                self._release_keeping_checkpoint(task)
                return False
            else:
                return False
            return True
        finally:
            self._unhold(task.claim)

    def _hold(self, claim: Claim) -> None:
        with self._held_lock:
            self._held[claim.token] = claim

    def _unhold(self, claim: Claim) -> None:
        with self._held_lock:
            self._held.pop(claim.token, None)

    def _drain_commits(self) -> None:
        """Wait for the last commit and stop the commit thread (raises that commit's OSError)."""
        try:
            self._await_commit()
        finally:
            self._committer.shutdown()

    def _await_commit(self) -> None:
        """Wait for the commit in flight; its OSError (the output root failing) is raised here."""
        pending, self._commit_pending = self._commit_pending, None
        if pending is not None:
            pending.result()

    def _release_keeping_checkpoint(self, task: ShardTask) -> None:
        ckpt = read_record(self.root.checkpoint(task.entry.id), Checkpoint)
        if ckpt is None or ckpt.token != task.claim.token:
            task.part.unlink(missing_ok=True)
        self.claimer.release(task.claim)

    def _fail(self, task: ShardTask, reason: str) -> None:
        """Record why the shard failed, drop its partial output and move on."""
        entry = task.entry
        self.failed += 1
        line = reason.replace("\n", " ")
        log.error("%s: shard %s failed: %s: %s", self.name, entry.id, entry.path, line)
        write_record(self.root.failed(entry.id),
                     FailedRecord(shard=entry.id, path=entry.path, reason=line, host=self.me.host,
                                  pid=self.me.pid, launch=self.settings.launch, failed_at=time.time()))
        task.part.unlink(missing_ok=True)
        self.root.checkpoint(entry.id).unlink(missing_ok=True)
        self.claimer.release(task.claim)

    # -- heartbeat --------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        proc = psutil.Process()
        proc.cpu_percent(None)
        psutil.cpu_percent(None)  # both count from here: the first real reading covers one interval
        self._write_heartbeat("starting", proc)  # so status lists the worker before its first interval ends
        last = (time.time(), 0)
        while not self.stop.wait(self.settings.heartbeat_interval):
            with self._held_lock:
                held = list(self._held.values())
            for claim in held:
                if not self.claimer.refresh(claim):
                    self.lost_tokens.add(claim.token)
            claim = self.current
            now = time.time()
            rate = (self.stats.tokens - last[1]) / max(now - last[0], 1e-6)
            last = (now, self.stats.tokens)
            self._write_heartbeat("working" if claim else "waiting", proc, rate)

    def _write_heartbeat(self, state: str, proc: psutil.Process | None = None, rate: float = 0.0) -> None:
        proc = proc or psutil.Process()
        claim = self.current
        try:
            write_record(self.root.heartbeat(self.name), Heartbeat(
                worker=self.name, host=self.me.host, pid=self.me.pid, process_index=self.me.process_index,
                worker_index=self.index, shard=claim.shard if claim else None, state=state,
                documents=self.stats.documents, tokens=self.stats.tokens, text_chars=self.stats.text_chars,
                shards_done=self.stats.shards_done, tokens_per_second=round(rate, 1),
                cpu_percent=proc.cpu_percent(None), rss_bytes=proc.memory_info().rss,
                updated_at=time.time(), started_at=self.stats.started,
                interval=self.settings.heartbeat_interval, host_cpu_percent=psutil.cpu_percent(None),
                host_cpus=psutil.cpu_count() or 0), durable=False)
        except OSError as exc:  # a full disk must not kill the heartbeat thread silently
            log.warning("%s: cannot write heartbeat: %s", self.name, exc)


def _describe(record: LockRecord | None) -> str:
    if record is None:
        return "nobody"
    return f"{record.host} pid {record.pid} (process {record.process_index}, worker {record.worker})"


# -- process entry point ---------------------------------------------------------------------

def _die_with_parent() -> None:
    """Linux: get SIGKILL when the launching process dies, so no orphan keeps a claim alive."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _setup_logging(root: OutputRoot, name: str) -> None:
    path = root.log(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter(f"[{name}] %(levelname)s %(message)s"))
    logger = logging.getLogger("slimtok")
    logger.handlers[:] = [handler, console]
    logger.setLevel(logging.INFO)


def worker_main(settings: TokenizeSettings, worker_index: int, parent_pid: int | None = None) -> int:
    """Entry point of a spawned worker process; returns its exit status."""
    if parent_pid is not None:
        _die_with_parent()
        if os.getppid() != parent_pid:
            return EXIT_FATAL  # the parent died before we could arm the death signal
    try:
        worker = Worker(settings, worker_index)
    except (JobMismatch, TokenizerError, OSError, ValueError) as exc:
        logging.getLogger("slimtok").error("worker %d cannot start: %s", worker_index, exc)
        return EXIT_FATAL
    _setup_logging(worker.root, worker.name)

    def on_signal(signum: int, _frame: object) -> None:
        worker.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return worker.run()
