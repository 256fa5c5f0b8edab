"""One claimed shard, from its last checkpoint to its done record.

Reads the shard file (through :class:`~slimtok.reader.ShardReader`) and the shard's checkpoint;
writes ``shards/<id>.<token>.part`` (token ids) and ``documents/<id>.<token>.part`` (one
``DOC_TABLE_DTYPE`` row per document), ``checkpoints/<id>.json``, then, on commit,
``shards/<id>.bin``, ``documents/<id>.docs`` and ``done/<id>.json``.

The flow, top to bottom (:meth:`ShardTask.write` then :meth:`ShardTask.commit`)::

    records -> batches -> encode -> write at document boundaries -> checkpoint -> commit

Invariants a relaunch relies on:

* tokens and table rows reach their part files only in whole documents, and a checkpoint is
  written only after the data it covers is fdatasync'd, so (lines, bytes, documents) of any
  checkpoint is a valid resume point;
* a resume copies the checkpointed prefix of both files into the new claim's own part files, so a
  holder that lost its claim (stopped, then woken) can never corrupt the new holder's output;
* before every checkpoint and before publishing, the task checks that the lock still names its
  claim, and the done record is created exclusively, so a shard is committed exactly once;
* the parity sample: each document whose text digest falls in the first ``parity_share`` of the
  digest space (so the same documents whatever the batching, resume or worker) and that is at most
  ``PARITY_MAX_CHARS`` long is re-encoded by the reference alone and compared with the ids about to
  be written; a difference fails the shard (:class:`ParityMismatch`), and the counts of the
  documents checked go with their documents into checkpoints and the done record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xxhash

from ..claims import Claim
from ..errors import EmptyShard, Interrupted, LostClaim, ParityMismatch, ShardReadError
from ..formats.streams import check_listed_version
from ..manifest import ShardEntry
from ..protocol import (
    DOC_TABLE_DTYPE,
    DOC_TABLE_VERSION,
    Checkpoint,
    DoneRecord,
    JobSettings,
    OutputRoot,
    create_exclusive,
    read_record,
    table_rows,
    write_record,
)
from ..reader import ShardReader, TextPieces
from ..tokenizer import Encoder
from .batches import batched
from .files import PartFile, copy_prefix, source_state
from .stats import Stats, append_journal

log = logging.getLogger("slimtok.worker")

#: Longer documents are left out of the parity sample: the reference encodes a document whole, whose
#: memory can reach ~85 bytes per byte of text (Prepend normalizers); 1 Mi characters bounds that.
PARITY_MAX_CHARS = 1 << 20
#: skip reasons of the length filters (--min-chars, --min-tokens): documents the user chose to leave out
LENGTH_FILTERED = ("too_few_chars", "too_few_tokens")


@dataclass
class TaskContext:
    """What a shard task needs from the worker running it (nothing else is reached through it)."""

    root: OutputRoot
    job: JobSettings
    encoder: Encoder
    stats: Stats
    host: str
    #: the worker's name: its journal file
    name: str
    tokens_per_write: int
    checkpoint_every: float
    #: raises LostClaim or Interrupted at a safe point
    check_running: Callable[[Claim], None]
    #: whether the lock still names the claim (a look at the lock file)
    holds: Callable[[Claim], bool]
    #: share of documents in the parity sample (see the module docstring); 0: none
    parity_share: float = 0.0


@dataclass
class Progress:
    """Counts for the data written so far to one claim's part files."""

    lines: int = 0
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    #: the table's ``source`` column indexes these names ("" = the document named no source)
    source_names: list[str] = field(default_factory=list)
    #: documents of the parity sample among these, and the UTF-8 bytes of their text
    parity_documents: int = 0
    parity_bytes: int = 0


@dataclass
class Mark:
    """Where the reader stood right after one document, and that document's source."""

    lines: int
    skipped: dict[str, int]
    source: str | None = None


@dataclass
class Pending:
    """Encoded documents not yet written: token arrays and table rows, in order."""

    tokens: list[np.ndarray] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    token_count: int = 0
    documents: int = 0
    sources: dict[str, list[int]] = field(default_factory=dict)
    parity_documents: int = 0
    parity_bytes: int = 0


class ShardTask:
    """Tokenizes one claimed shard from its last checkpoint to its done record."""

    def __init__(self, ctx: TaskContext, entry: ShardEntry, claim: Claim):
        self.ctx = ctx
        self.root = ctx.root
        self.entry = entry
        self.claim = claim
        self.data = PartFile(self.root.part(entry.id, claim.token))
        self.table = PartFile(self.root.table_part(entry.id, claim.token))
        self.progress = Progress()
        self.pending = Pending()
        self.last_mark = Mark(0, {})
        self.source_index: dict[str, int] = {}
        self.started = time.time()
        self.checkpointed = time.monotonic()
        self.source = source_state(entry.path)
        #: documents this task left out for having fewer than the job's min_tokens (see _counted)
        self.too_few_tokens = 0
        self._separators = len(ctx.encoder.policy.prefix) + 1
        self._chars_before = dict(ctx.encoder.chars)
        #: the backend(s) that encoded this claim's documents, set when :meth:`write` ends
        self.backend = ctx.encoder.backend

    @property
    def part(self) -> Path:
        return self.data.path

    # -- the flow ---------------------------------------------------------------------------
    def write(self) -> None:
        """Resume or start, and write every document of the shard into the part files.

        On return both part files are complete but not yet synced, and stay open for
        :meth:`commit`; on an exception they are closed.
        """
        self._check_size_listed()
        ckpt = read_record(self.root.checkpoint(self.entry.id), Checkpoint)
        self._drop_stale_parts(ckpt)
        self.data.open()
        self.table.open()
        try:
            self._resume(ckpt)
            phases = self.ctx.stats.phases  # a batch's records are parsed, its blocks read, then it is encoded
            reader = ShardReader(self.entry.path, self.ctx.job.text_key, self.progress.lines, self.progress.skipped,
                                 source_key=self.ctx.job.source_key, pause=lambda: self.ctx.check_running(self.claim),
                                 max_line_bytes=self.ctx.job.max_line_bytes, min_chars=self.ctx.job.min_chars,
                                 reading=lambda blocks: phases.timed("read", blocks))
            records = ((text, Mark(reader.lines, reader.skipped, source)) for text, source in reader.records())
            try:
                for texts, marks in phases.timed("parse", batched(records)):
                    with phases.phase("encode"):
                        self._encode(texts, marks)
                    del texts  # a huge document's raw line goes before the reader reads on
                    self.ctx.check_running(self.claim)
            except Interrupted:
                if self.pending.documents:  # keep what is encoded: checkpoint it before letting go
                    self._flush(self.last_mark, checkpoint=True)
                raise
            self._flush(self._counted(Mark(reader.lines, dict(reader.skipped))), checkpoint=False)
            self._check_not_empty(reader.missing_text_hint())
            self.backend = self._backends_used()
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Close the part files written by :meth:`write` without committing them."""
        self.data.close()
        self.table.close()

    def discard_parts(self) -> None:
        """Remove this claim's part files (a shard failed, or its claim was lost or let go)."""
        for part in (self.data.path, self.table.path):
            self.root.storage.delete(part)

    def commit(self) -> DoneRecord:
        """Sync and close the part files written by :meth:`write`, then publish the shard.

        Runs on the worker's commit thread while the next shard is being encoded; it touches
        only this task's files and the claim it still holds.
        """
        try:
            self.data.sync_close()
        finally:
            self.table.sync_close()
        self._check_source_unchanged()
        return self._publish()

    # -- encode -----------------------------------------------------------------------------
    def _encode(self, texts: list[str] | TextPieces, marks: list[Mark]) -> None:
        """Encode a batch; write at each document boundary where tokens_per_write is reached."""
        if isinstance(texts, TextPieces):
            self._encode_huge(texts, marks[0])
            return
        flat, lengths = self.ctx.encoder.encode(texts)
        digests = b"".join(xxhash.xxh3_128_digest(t.encode()) for t in texts)
        rows = self._rows(lengths, [m.source for m in marks], digests)
        checked = self._check_parity(texts, marks, digests, flat, lengths)
        start = end = first = 0
        for i, n in enumerate(lengths):
            end += n
            if self._too_few_tokens(n):  # left out: what precedes it goes to pending, it does not
                self.pending.tokens.append(flat[start:end - n])
                self.pending.rows.append(rows[first:i])
                start, first = end, i + 1
            elif self._count_document(n, marks[i].source, checked.get(i)):
                self.pending.tokens.append(flat[start:end])
                self.pending.rows.append(rows[first:i + 1])
                self._flush(self._counted(marks[i]), checkpoint=self._checkpoint_due())
                start, first = end, i + 1
        if first < len(lengths):
            self.pending.tokens.append(flat[start:end])
            self.pending.rows.append(rows[first:])
        self.last_mark = self._counted(marks[-1])
        self.ctx.stats.add(len(texts), int(flat.size), sum(len(t) for t in texts))

    def _encode_huge(self, text: TextPieces, mark: Mark) -> None:
        """Encode one lazily decoded document; its ids join the pending tokens as chunks."""
        hasher = xxhash.xxh3_128()
        for piece in text:
            hasher.update(piece.encode())
        chunks = list(self.ctx.encoder.encode_pieces(text))  # pending either way: no more memory than before
        tokens = sum(chunk.size for chunk in chunks)
        if self._too_few_tokens(tokens):
            self.last_mark = self._counted(mark)
        else:
            self.pending.tokens += chunks
            self.pending.rows.append(self._rows([tokens], [mark.source], hasher.digest()))
            if self._count_document(tokens, mark.source):
                self._flush(self._counted(mark), checkpoint=self._checkpoint_due())
            self.last_mark = self._counted(mark)
        self.ctx.stats.add(1, tokens, len(text))

    def _check_parity(self, texts: list[str], marks: list[Mark], digests: bytes, flat: np.ndarray,
                      lengths: list[int]) -> dict[int, int]:
        """Re-encode this batch's parity sample with the reference and compare; {index in the batch:
        UTF-8 bytes of its text} for each document checked. ParityMismatch on the first difference."""
        share = self.ctx.parity_share
        if not share:
            return {}
        # the first 8 bytes of each document's xxh3-128 digest, as a fraction of the digest space
        picked = np.flatnonzero(np.frombuffer(digests, dtype="<u8")[::2] / 2.0 ** 64 < share)
        if not picked.size:
            return {}
        ends = np.cumsum(lengths)
        checked: dict[int, int] = {}
        for i in picked.tolist():
            if len(texts[i]) > PARITY_MAX_CHARS:
                continue
            written = flat[ends[i] - lengths[i]:ends[i]]
            want = self.ctx.encoder.reference_ids(texts[i])
            if not np.array_equal(written, want):
                raise ParityMismatch(f"document {self.progress.documents + self.pending.documents + i} (line "
                                     f"{marks[i].lines}) encodes to other ids than the reference tokenizers gives "
                                     f"({_first_difference(written, want)})", self.entry.path,
                                     "relaunch with --backend tokenizers and --retry-failed, and report the document")
            checked[i] = len(texts[i].encode())
        return checked

    def _backends_used(self) -> str:
        """The backends that encoded text since this task began: "tokenizers", "fastokens", or
        "tokenizers+fastokens" when each encoded part of it (a deferred fastokens took over, or a
        mismatch switched back to the reference, mid-shard)."""
        now = self.ctx.encoder.chars
        used = [b for b in ("tokenizers", "fastokens") if now[b] > self._chars_before.get(b, 0)]
        return "+".join(used) or self.ctx.encoder.backend

    def _rows(self, lengths: list[int], sources: list[str | None], digests: bytes) -> np.ndarray:
        """Table rows for consecutive documents: token counts, source indexes, xxh3-128 digests."""
        return table_rows(lengths, [self._source_id(s) for s in sources], digests)

    def _source_id(self, source: str | None) -> int:
        name = source or ""
        index = self.source_index.get(name)
        if index is None:
            index = self.source_index[name] = len(self.progress.source_names)
            self.progress.source_names.append(name)
        return index

    def _too_few_tokens(self, length: int) -> bool:
        """Whether a document of ``length`` ids (separators included) falls under the job's
        min_tokens; if so it is counted (:meth:`_counted`) and left out."""
        if length - self._separators >= self.ctx.job.min_tokens:
            return False
        self.too_few_tokens += 1
        return True

    def _counted(self, mark: Mark) -> Mark:
        """``mark`` with the documents left out for min_tokens so far among its skipped lines.

        The reader never skips for that reason, so its count in a mark is the one the task resumed
        from; what this task left out is added here, so every checkpoint and the done record count
        them like any skipped line, and a resume continues the count."""
        if not self.too_few_tokens:
            return mark
        before = mark.skipped.get("too_few_tokens", 0)
        return Mark(mark.lines, {**mark.skipped, "too_few_tokens": before + self.too_few_tokens}, mark.source)

    def _count_document(self, tokens: int, source: str | None, parity_bytes: int | None = None) -> bool:
        """Count one encoded document as pending (``parity_bytes``: its text's bytes when the parity
        sample checked it); True when tokens_per_write is reached."""
        pending = self.pending
        pending.token_count += tokens
        pending.documents += 1
        if parity_bytes is not None:
            pending.parity_documents += 1
            pending.parity_bytes += parity_bytes
        if source is not None:
            counts = pending.sources.get(source)
            if counts is None:
                counts = pending.sources[source] = [0, 0]
            counts[0] += 1
            counts[1] += tokens
        return pending.token_count >= self.ctx.tokens_per_write

    # -- write and checkpoint ---------------------------------------------------------------
    def _checkpoint_due(self) -> bool:
        return time.monotonic() - self.checkpointed >= self.ctx.checkpoint_every

    def _flush(self, mark: Mark, checkpoint: bool) -> None:
        """Write pending documents, make them durable, then (optionally) record a checkpoint."""
        with self.ctx.stats.phases.phase("write"):
            self._write_pending(mark, checkpoint)

    def _write_pending(self, mark: Mark, checkpoint: bool) -> None:
        p, pending = self.progress, self.pending
        for arr in pending.tokens:
            self.data.write(arr.data.cast("B"))
            p.bytes += arr.nbytes
        for rows in pending.rows:
            self.table.write(rows.tobytes())
        p.tokens += pending.token_count
        p.documents += pending.documents
        p.parity_documents += pending.parity_documents
        p.parity_bytes += pending.parity_bytes
        p.lines, p.skipped = mark.lines, mark.skipped
        for source, (docs, tokens) in pending.sources.items():
            counts = p.sources.setdefault(source, {"documents": 0, "tokens": 0})
            counts["documents"] += docs
            counts["tokens"] += tokens
        self.pending = Pending()
        if not checkpoint:
            return
        self.data.datasync()
        self.table.datasync()
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
                                source_mtime_ns=self.source[1] if self.source else -1,
                                source_names=list(p.source_names), table_version=DOC_TABLE_VERSION,
                                parity_documents=p.parity_documents, parity_bytes=p.parity_bytes),
                     durable=False)

    def _check_claim(self) -> None:
        if not self.ctx.holds(self.claim):
            raise LostClaim(f"{self.entry.id}: lock taken over by another worker; stopping this copy")

    # -- checks -----------------------------------------------------------------------------
    def _check_size_listed(self) -> None:
        """The file read must be the file listed: its size is the manifest's (and an object's version)."""
        check_listed_version(self.entry.path, self.entry.version)
        if self.source is not None and self.entry.size >= 0 and self.source[0] != self.entry.size:
            raise ShardReadError(self.entry.path, f"is {self.source[0]} bytes but the manifest lists "
                                 f"{self.entry.size}; rebuild the manifest with `slimtok manifest` (and a new "
                                 "--output-root if the data really changed)")

    def _check_not_empty(self, hint: str) -> None:
        """Lines read and no document kept means the wrong file or key, unless the length filters
        left documents out: then a shard of only short documents is done with none (as an empty file is)."""
        p = self.progress
        if p.lines and not p.documents and not any(p.skipped.get(r) for r in LENGTH_FILTERED):
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(p.skipped.items()))
            raise EmptyShard(f"no usable document in {p.lines} lines (skipped: {reasons}{'; ' + hint if hint else ''})",
                             self.entry.path,
                             f"check the file and --text-key {self.ctx.job.text_key!r}")

    def _source_changed_since(self, ckpt: Checkpoint) -> bool:
        """Whether the shard file differs from the one the checkpoint's lines were counted in."""
        if ckpt.source_mtime_ns == -1:  # written before slimtok recorded it: trust the lines
            return False
        return self.source != (ckpt.source_size, ckpt.source_mtime_ns)

    def _check_source_unchanged(self) -> None:
        """The lines just read must all come from the file as it was when the task began."""
        now = source_state(self.entry.path)
        if now is not None and now != self.source:
            raise ShardReadError(self.entry.path, "changed while it was being tokenized "
                                 f"({_describe_state(self.source)} when opened, {_describe_state(now)} at the end); "
                                 "relaunch with --retry-failed to tokenize it again")

    # -- resume -----------------------------------------------------------------------------
    def _drop_stale_parts(self, ckpt: Checkpoint | None) -> None:
        """Delete part files of earlier claims on this shard, except those the checkpoint names.

        Done before our own part files exist: only the lock names the claim we replaced, so if we
        were killed after creating ours, the next holder could no longer find that one. Only after
        a takeover or with a checkpoint does a shard have earlier part files; then one listing per
        folder also finds files orphaned by a holder killed in the middle of its resume.
        """
        if self.claim.previous is None and ckpt is None:
            return
        keep: set[Path] = set()
        if ckpt is not None and ckpt.shard == self.entry.id:
            keep = {self.root.resolve(ckpt.part), self.root.table_part(ckpt.shard, ckpt.token)}
        for part in self.root.parts(self.entry.id) + self.root.table_parts(self.entry.id):
            if part not in keep:
                self.root.storage.delete(part)

    def _resume(self, ckpt: Checkpoint | None) -> None:
        """Continue from the shard's checkpoint if its data is intact and the shard file is the one
        it was counted in (same size and mtime), else from the start.

        The copied progress is checkpointed as ours before the old part files are deleted, so a
        kill at any point leaves a checkpoint naming files that hold its bytes (a kill between the
        two leaves the old files to the next holder's :meth:`_drop_stale_parts`).
        """
        if ckpt is None or ckpt.shard != self.entry.id:
            return
        old_data, old_table = self.root.resolve(ckpt.part), self.root.table_part(ckpt.shard, ckpt.token)
        if self._source_changed_since(ckpt):
            log.warning("%s: %s changed since its checkpoint (%s then, %s now); starting the shard over",
                        self.entry.id, self.entry.path, _describe_state((ckpt.source_size, ckpt.source_mtime_ns)),
                        _describe_state(self.source))
        elif ckpt.documents and ckpt.table_version != DOC_TABLE_VERSION:
            log.warning("%s: its checkpoint predates document tables; starting the shard over", self.entry.id)
        elif (copy_prefix(old_data, self.data, ckpt.bytes)
              and copy_prefix(old_table, self.table, ckpt.documents * DOC_TABLE_DTYPE.itemsize)):
            p = self.progress
            p.lines, p.documents, p.tokens, p.bytes = ckpt.lines, ckpt.documents, ckpt.tokens, ckpt.bytes
            p.skipped = dict(ckpt.skipped)
            p.sources = _copy_sources(ckpt.sources)
            p.source_names = list(ckpt.source_names)
            p.parity_documents, p.parity_bytes = ckpt.parity_documents, ckpt.parity_bytes
            self.source_index = {name: i for i, name in enumerate(p.source_names)}
            self._checkpoint()
            log.info("%s: resuming at line %d (%d tokens) from %s", self.entry.id, p.lines, p.tokens, ckpt.part)
        else:
            self.data.restart()
            self.table.restart()
        for old, ours in ((old_data, self.data.path), (old_table, self.table.path)):
            if old != ours:
                self.root.storage.delete(old)

    # -- commit -----------------------------------------------------------------------------
    def _publish(self) -> DoneRecord:
        """Rename the synced part files to their final names, then create the done record."""
        self._check_claim()
        p = self.progress
        data, table = self.root.data(self.entry.id), self.root.table(self.entry.id)
        storage = self.root.storage
        try:
            storage.make_folders(table.parent)
            storage.replace(self.table.path, table)
            storage.replace(self.data.path, data)
        except FileNotFoundError as exc:  # a new holder removed our part file after taking over
            raise LostClaim(f"{self.entry.id}: part file removed by a new holder; stopping this copy") from exc
        storage.sync_folder(table.parent)
        storage.sync_folder(data.parent)
        record = DoneRecord(shard=self.entry.id, split=self.entry.split, file=self.root.relative(data),
                            lines=p.lines, documents=p.documents, tokens=p.tokens, bytes=p.bytes,
                            sha256=self.data.sha256(), dtype=self.ctx.job.dtype, skipped=dict(p.skipped),
                            source_size=self.source[0] if self.source else self.entry.size,
                            token=self.claim.token, host=self.ctx.host, finished_at=time.time(),
                            seconds=round(time.time() - self.started, 3), sources=_copy_sources(p.sources),
                            backend=self.backend, table=self.root.relative(table),
                            table_bytes=self.table.size, table_sha256=self.table.sha256(),
                            source_names=list(p.source_names), table_version=DOC_TABLE_VERSION,
                            parity_documents=p.parity_documents, parity_bytes=p.parity_bytes, parity_mismatches=0)
        done = self.root.done(self.entry.id)
        storage.make_folders(done.parent)
        if create_exclusive(done, record.to_json()):
            append_journal(self.root, self.ctx.name, record)
        else:
            existing = read_record(done, DoneRecord)
            if existing is None or existing.sha256 != record.sha256:
                log.error("%s: a done record already exists with different content (%s vs %s); "
                          "the tokenizer is not deterministic or the output root was modified",
                          self.entry.id, existing and existing.sha256, record.sha256)
        storage.delete(self.root.checkpoint(self.entry.id))
        storage.delete(self.root.failed(self.entry.id))
        return record


def _first_difference(written: np.ndarray, want: np.ndarray) -> str:
    """Where two id arrays first differ, in words."""
    # not strict: arrays of other lengths differ at their common prefix's end at the latest
    at = next((k for k, (a, b) in enumerate(zip(written.tolist(), want.tolist(), strict=False)) if a != b), None)
    if at is None:
        return f"{written.size} ids written, {want.size} expected"
    return f"first difference at id {at}: {written[at]} written, {want[at]} expected"


def _describe_state(state: tuple[int, int] | None) -> str:
    return "not readable" if state is None else f"{state[0]} bytes, mtime_ns {state[1]}"


def _copy_sources(sources: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {name: dict(counts) for name, counts in sources.items()}
