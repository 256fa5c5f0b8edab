"""Step 7: check combined token files the way a trainer will read them.

Reads ``meta.json``, the combined split files, ``done/`` and the job's tokenizer; writes nothing.
Checks per split:

* **sizes**: file size = meta tokens × itemsize = sum of the done records' bytes;
* **checksums**: each shard's byte range in the combined file hashes to its done record's checksum
  (sha256, or xxh3-128 for a mix's chunks: ``DoneRecord.data_checksum``), so corruption is reported
  with the shard (or chunk) that holds it;
* **ids**: every id < vocab_size, and the number of eos ids ≥ the number of documents;
* **separators** (roots with document tables): every document (by the index) ends with eos, and
  starts with bos when the job's policy adds one; eos inside a document's text is never an error;
* **alignment**: at random offsets s, x = data[s:s+B] and y = data[s+1:s+1+B] satisfy x[1:] == y[:-1];
* **eye test**: decodes windows near offset 0 and deep in the file and prints them;
* **document index**: ``train.idx`` has one increasing end per document, the last at the file's end;
  with tables it equals their running token sums, in a legacy root (no tables, said once) each
  end is right after an eos and there are as many as eos ids;
* **eos scan** (roots with document tables): whether a loader that finds documents by scanning for
  eos (OLMo-core's document lengths, Levanter, nanotron's positions) gets exactly the index's
  ends, and otherwise how many documents it would split (those with an eos id inside their tokens,
  which ``--special-text parse`` or some tokenizers produce); information, never a failure;
* **sampler dry-run**: draws (x, y) batches with :class:`slimtok.data.TokenBin` as a training loop
  does, checks its document starts against the eos ids, and reports ln(vocab_size), the loss an
  untrained model starts near;
* **parity sample**: the job's total of documents the workers re-encoded with the reference and
  compared (``DoneRecord.parity_*``), failing if any record counts a mismatch;
* **text shape**: over ``samples`` random documents (by the index; their text ids, separators
  removed), tokens per byte of decoded text and id entropy, failing when the ids are degenerate
  (:meth:`slimtok.tokenizer.IdShape.faults`: most documents one id, ids collapsed onto few).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .data import TokenBin
from .errors import DataError, IntegrityError, ValidateError
from .finished import checked_table, plan_split, read_meta
from .job import load_job, load_pinned_tokenizer
from .manifest import ShardEntry
from .protocol import (
    SPLIT_FILES,
    Checksum,
    DoneRecord,
    JobSettings,
    OutputRoot,
    read_tokens,
    splits_command,
    storage_for,
)
from .protocol.docindex import index_path, read_checked_index, read_doc_index
from .tokenizer import IdShape

SCAN_TOKENS = 1 << 24
#: Stock nanoGPT memmaps train.bin as uint16: a uint32 file would be read as twice as many wrong ids.
NANOGPT_UINT32_NOTE = ("note: the token files are uint32 (ids ≥ 65536); stock nanoGPT reads uint16 and would "
                       "silently misread them: in its train.py change np.memmap(..., dtype=np.uint16, ...) to "
                       "dtype=np.uint32")
#: Text ids read of each document the text-shape check samples: a bound on its work per document.
SHAPE_DOC_TOKENS = 4096


@dataclass
class Check:
    """One verdict: ``name`` says what was checked (``train.bin: size``), ``detail`` the numbers seen."""

    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    """Every check of one run, in order, and the eye-test texts; ``ok`` only when all checks passed."""

    checks: list[Check] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))


def _scan(path: os.PathLike[str], dtype: np.dtype, ranges: list[tuple[str, int, int, Checksum | None]],
          eos: int) -> tuple[int, int, list[str]]:
    """One pass over the file: (max id, eos count, shards whose byte range hash differs from its
    checksum; a range without one is only scanned)."""
    max_id, eos_count, bad = 0, 0, []
    data = read_tokens(Path(path), dtype)
    for shard, start, size, want in ranges:
        h = want.hasher() if want is not None else None
        first, last = start // dtype.itemsize, (start + size) // dtype.itemsize
        for lo in range(first, last, SCAN_TOKENS):
            block = data[lo:min(lo + SCAN_TOKENS, last)]
            if h is not None:
                h.update(block.data.cast("B"))
            if block.size:
                max_id = max(max_id, int(block.max()))
                eos_count += int(np.count_nonzero(block == eos))
        if want is not None and not want.matches(h):
            bad.append(shard)
    del data
    return max_id, eos_count, bad


def validate_split(root: OutputRoot, entries: list[ShardEntry], split: str, info: dict, job: JobSettings,
                   tok: Tokenizer, samples: int,
                   block_size: int, rng: np.random.Generator, report: Report) -> list[DoneRecord]:
    """Check one combined split; returns its done records (none when its file is missing)."""
    path = root.combined(split)
    dtype = np.dtype(job.dtype)
    name = SPLIT_FILES[split]
    if not root.storage.exists(path):
        report.add(f"{name}: present", False, f"{path} is missing; {splits_command(root)}")
        return []
    size = root.storage.stat(path).size
    records = plan_split(root, entries, split).done
    # With documents left out the shards' byte ranges are not in the file: the whole-file hash is.
    removed = bool(info.get("removed"))
    expected = info["bytes"] if removed else sum(r.bytes for r in records)
    report.add(f"{name}: size", size == info["bytes"] == expected == info["tokens"] * dtype.itemsize,
               f"file {size:,} B, meta {info['bytes']:,} B, {len(records)} done records {expected:,} B"
               + ("" if size == expected or removed else _size_hint(records, size, splits_command(root))))
    if size != expected:
        return records
    ranges: list[tuple[str, int, int, Checksum | None]] = []
    offset = 0
    for r in records if not removed else []:
        ranges.append((r.shard, offset, r.bytes, r.data_checksum()))
        offset += r.bytes
    if removed:  # without a recorded sha256 (--no-verify) there is nothing to compare the file with
        ranges = [("(whole file)", 0, size, Checksum("sha256", info["sha256"]) if info.get("sha256") else None)]
    max_id, eos_count, bad = _scan(path, dtype, ranges, job.eos_token_id)
    report.add(f"{name}: checksums", not bad,
               ("every shard's range matches its done record" if not removed else "the file matches meta's sha256")
               if not bad else f"{len(bad)} shard range(s) differ from their done records: {', '.join(bad[:10])}")
    report.add(f"{name}: ids < vocab_size", max_id < job.vocab_size,
               f"max id {max_id}, vocab_size {job.vocab_size}")
    report.add(f"{name}: eos count ≥ documents", eos_count >= info["documents"],
               f"{eos_count:,} eos ({job.eos_token_id}) for {info['documents']:,} documents")
    data = read_tokens(path, dtype)
    if len(data):
        _alignment(data, samples, block_size, rng, name, report)
        _eye_test(data, tok, rng, name, report)
    else:  # valid data (every document left out, say): there is no window to sample or show
        report.add(f"{name}: empty", info["documents"] == 0,
                   f"0 tokens and {info['documents']:,} documents in meta.json; nothing to sample")
    tables = all(r.table for r in records)
    if tables:
        want = None if removed else _table_ends(root, records)
        ends = _doc_index_tables(root.doc_index(split), data, info, want, job, name, report, splits_command(root))
        if ends is not None:
            _eos_scan(root.doc_index(split), ends, data, eos_count, job.eos_token_id, name, report)
    else:
        _doc_index(root.doc_index(split), data, info["documents"], eos_count, job.eos_token_id, name, report,
                   splits_command(root))
    if len(data):
        _sampler(path, dtype, job.vocab_size, job.eos_token_id, block_size, rng, name, report, legacy=not tables)
    _text_shape(root.doc_index(split), data, job, tok, samples, rng, name, report)
    return records


def _parity(records: list[DoneRecord], report: Report) -> None:
    """The job's parity total over the done records that recorded one (older writers and mix chunks
    did not); fails when a record counts a mismatch (a worker fails such a shard instead)."""
    counted = [r for r in records if r.parity_mismatches >= 0]
    mismatches = sum(r.parity_mismatches for r in counted)
    report.add("job: parity sample", mismatches == 0,
               f"{sum(r.parity_documents for r in counted):,} documents ({sum(r.parity_bytes for r in counted):,} "
               f"bytes of text) re-encoded by the reference tokenizers during tokenize, {mismatches} mismatches; "
               f"recorded by {len(counted)} of {len(records)} done records")


def _text_shape(index: Path, data: np.ndarray, job: JobSettings, tok: Tokenizer, samples: int,
                rng: np.random.Generator, name: str, report: Report) -> None:
    """Tokens per byte and id entropy of ``samples`` documents drawn at random (with replacement)
    by the index: each one's text ids (bos and eos removed, at most SHAPE_DOC_TOKENS of them) and the
    UTF-8 bytes they decode to. Fails when :meth:`IdShape.faults` finds the shape degenerate. An
    index that is missing, damaged or does not reach the file's end is left to the document index check."""
    if not storage_for(index).exists(index):
        return
    try:
        ends = read_doc_index(index)
    except IntegrityError:  # reported by the document index check
        return
    if not len(ends) or int(ends[-1]) != len(data):
        return
    head = int(job.bos_token_id is not None)
    documents, text_bytes = [], 0
    for k in sorted(int(k) for k in rng.integers(0, len(ends), size=samples)):
        start, end = (int(ends[k - 1]) if k else 0) + head, int(ends[k]) - 1
        ids = np.asarray(data[start:min(end, start + SHAPE_DOC_TOKENS)])
        documents.append(ids)
        text_bytes += len(tok.decode(ids.tolist(), skip_special_tokens=False).encode())
    shape = IdShape.of(documents, text_bytes)
    faults = shape.faults()
    report.add(f"{name}: text shape", not faults,
               f"over {samples} sampled documents: {shape.describe()}"
               + (f"; degenerate: {'; '.join(faults)}" if faults else ""))


def _table_ends(root: OutputRoot, records: list[DoneRecord]) -> np.ndarray:
    """The split's document ends as the shards' tables give them (running token sums)."""
    counts = [np.asarray(checked_table(root, r)["tokens"], dtype=np.uint64) for r in records]
    return np.cumsum(np.concatenate(counts) if counts else np.zeros(0, np.uint64), dtype=np.uint64)


def _doc_index_tables(index: Path, data: np.ndarray, info: dict, want: np.ndarray | None, job: JobSettings,
                      name: str, report: Report, fix: str) -> np.ndarray | None:
    """The index passes its checked read (:func:`read_checked_index`: meta's count, last end and
    checksum), equals the tables' ends (``want``, when no document was left out), is strictly
    increasing to the file's end, and each document ends with eos (starts with bos when the policy
    has one). eos elsewhere in a document is text, not an error. ``fix``: the command that writes it.
    Returns the ends when the index passed (None: a failed check was reported)."""
    label = f"{name}: document index"
    documents = info["documents"]
    try:
        ends = np.asarray(read_checked_index(index, documents, len(data), info.get("index_checksum"), fix),
                          dtype=np.int64)
    except IntegrityError as exc:
        report.add(label, False, str(exc))
        return None
    ok = (len(ends) == documents and (not len(ends) or int(ends[-1]) == len(data))
          and bool((np.diff(ends, prepend=0) > 0).all()) and (want is None or np.array_equal(ends, want)))
    report.add(label, ok, f"{index.name}: {len(ends):,} document ends for {documents:,} documents; "
                          + ("increasing, the last at the end of the file, equal to the document tables"
                             if ok else f"inconsistent with the file or the document tables: {fix}"))
    if not ok:
        return None
    bad_eos = int(np.count_nonzero(np.asarray(data[ends - 1]) != job.eos_token_id)) if len(ends) else 0
    bos = getattr(job, "bos_token_id", None)
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    bad_bos = int(np.count_nonzero(np.asarray(data[starts]) != bos)) if bos is not None and len(ends) else 0
    report.add(f"{name}: separators", bad_eos == bad_bos == 0,
               f"{bad_eos} of {len(ends):,} documents do not end with eos ({job.eos_token_id})"
               + ("" if bos is None else f", {bad_bos} do not start with bos ({bos})"))
    return ends


def split_by_eos_scan(data: np.ndarray, ends: np.ndarray, eos: int) -> tuple[int, int]:
    """(documents holding an eos id before their last token, such eos ids): what a loader that cuts
    after every eos gets wrong against the exact ends. Streamed SCAN_TOKENS at a time; ``ends`` is
    the document index (increasing, the last at ``len(data)``)."""
    split_docs, inner, last_doc = 0, 0, -1
    for lo in range(0, len(data), SCAN_TOKENS):
        positions = np.flatnonzero(np.asarray(data[lo:lo + SCAN_TOKENS]) == eos) + lo
        if not positions.size:
            continue
        # the document holding position p is the first whose end is > p
        docs = np.searchsorted(ends, positions, side="right")
        inside = positions + 1 != np.asarray(ends[np.minimum(docs, len(ends) - 1)]).astype(np.int64)
        hit = np.unique(docs[inside])
        inner += int(np.count_nonzero(inside))
        # a document spanning two blocks is counted once: blocks come in order, so only the first can repeat
        split_docs += len(hit) - int(bool(hit.size) and int(hit[0]) == last_doc)
        last_doc = int(hit[-1]) if hit.size else last_doc
    return split_docs, inner


def _eos_scan(index: Path, ends: np.ndarray, data: np.ndarray, eos_count: int, eos: int, name: str,
              report: Report) -> None:
    """Says whether cutting after every eos reproduces the index (never a failure: an eos inside a
    document's text is valid data, but a trainer scanning for eos would split that document)."""
    # every document ends with eos (separators), so with no more eos than documents none is inside one
    split_docs, inner = split_by_eos_scan(data, ends, eos) if eos_count > len(ends) else (0, 0)
    report.add(f"{name}: eos scan", True,
               "a loader that finds documents by scanning for eos gets exactly the index's document ends"
               if not split_docs else
               f"a loader that finds documents by scanning for eos ({eos}) would split {split_docs:,} of "
               f"{len(ends):,} documents ({inner:,} eos ids inside documents); give it the exact ends "
               f"({index.name}, or an export with document offsets: docs/FORMATS.md)")


def _size_hint(records: list[DoneRecord], size: int, fix: str) -> str:
    """Name the shard whose byte range the file's end falls short of (a truncated copy)."""
    offset = 0
    for r in records:
        if offset + r.bytes > size:
            return (f"; the file ends inside shard {r.shard} (bytes {offset:,}..{offset + r.bytes:,}): truncated? "
                    f"{fix}")
        offset += r.bytes
    return f"; the file is longer than its shards: {fix} if shards finished since"


def _alignment(data: np.ndarray, samples: int, block: int, rng: np.random.Generator, name: str,
               report: Report) -> None:
    b = min(block, len(data) - 1)
    if b < 2:
        report.add(f"{name}: alignment", False, f"only {len(data)} tokens; nothing to train on")
        return
    bad = 0
    for s in rng.integers(0, len(data) - b, size=samples):
        x = np.asarray(data[s:s + b])
        y = np.asarray(data[s + 1:s + 1 + b])
        bad += not np.array_equal(x[1:], y[:-1])
    report.add(f"{name}: alignment", bad == 0, f"{samples} random windows of {b} tokens, {bad} misaligned")


def _eye_test(data: np.ndarray, tok: Tokenizer, rng: np.random.Generator, name: str, report: Report,
              window: int = 48) -> None:
    starts = [0, int(rng.integers(len(data) // 2, max(len(data) - window, len(data) // 2 + 1)))]
    for s in starts:
        ids = [int(i) for i in data[s:s + window]]
        text = tok.decode(ids, skip_special_tokens=False)
        report.samples.append(f"{name} @ token {s:,}: {text!r}")


def _doc_index(index: Path, data: np.ndarray, documents: int, eos_count: int, eos: int, name: str,
               report: Report, fix: str) -> None:
    """The index has one strictly increasing end per document, each just after an eos, the last at
    the file's end; with as many entries as eos ids, that makes it exactly the eos positions."""
    label = f"{name}: document index"
    if not storage_for(index).exists(index):
        report.add(label, False, f"{index} is missing; {fix}")
        return
    ends = read_doc_index(index)
    ok = len(ends) == documents == eos_count and (not len(ends) or int(ends[-1]) == len(data))
    previous = 0
    for lo in range(0, len(ends) if ok else 0, SCAN_TOKENS):
        chunk = np.asarray(ends[lo:lo + SCAN_TOKENS]).astype(np.int64)
        ok = (int(chunk[0]) > previous and bool((np.diff(chunk) > 0).all())
              and int(chunk[-1]) <= len(data) and bool((np.asarray(data[chunk - 1]) == eos).all()))
        if not ok:
            break
        previous = int(chunk[-1])
    report.add(label, ok, f"{index.name}: {len(ends):,} document ends for {documents:,} documents and "
                          f"{eos_count:,} eos; " + ("each ends just after an eos, the last at the end of the file"
                                                    if ok else f"inconsistent: {fix}"))


def _sampler(path: Path, dtype: np.dtype, vocab: int, eos: int, block: int, rng: np.random.Generator, name: str,
             report: Report, batch_size: int = 8, steps: int = 4, legacy: bool = True) -> None:
    """Batches the way a training loop draws them (slimtok.data), and the document starts it reports."""
    try:
        data = TokenBin(path, dtype)
    except (DataError, IntegrityError) as exc:
        report.add(f"{name}: sampler dry-run", False, str(exc))
        return
    b = min(block, len(data) - 1)
    ok = True
    for _ in range(steps):
        x, y = data.get_batch(batch_size, b, rng)
        ok &= x.shape == y.shape == (batch_size, b) and bool((x[:, 1:] == y[:, :-1]).all())
        ok &= bool((x >= 0).all() and (x < vocab).all())
    if data.doc_ends is not None:  # document starts in a window against the index read directly
        s = int(rng.integers(0, len(data) - b))
        x, _ = data.window(s, b)
        ends = np.asarray(read_doc_index(index_path(path))).astype(np.int64)
        want = (np.flatnonzero(x[:-1] == eos) + 1 if legacy  # legacy: eos only separates documents
                else ends[(ends > s) & (ends < s + b)] - s)
        ok &= np.array_equal(data.document_starts(s + 1, s + b) - s, want)
    report.add(f"{name}: sampler dry-run", ok,
               f"{steps} batches of {batch_size}×{b} (x, y) int64 blocks from slimtok.data.TokenBin; an "
               f"untrained model's loss starts near ln({vocab}) = {math.log(vocab):.3f}")


def validate(output_root: str | os.PathLike[str], samples: int = 64, seed: int = 0, block_size: int = 1024,
             log: Callable[[str], None] = print) -> Report:
    """Run every check on every combined split; the report's ``ok`` is the verdict. An output root
    that was never combined raises ValidateError saying to run combine."""

    root = OutputRoot(output_root)
    job, entries = load_job(root)
    meta = read_meta(root)
    if meta is None or not meta.splits:
        what = "cannot be parsed" if root.storage.exists(root.meta_json) else "is missing: nothing was combined yet"
        raise ValidateError(what, root.meta_json, f"{splits_command(root)} first")
    report = Report()
    for key in ("vocab_size", "eos_token_id", "dtype"):
        report.add(f"meta: {key}", getattr(meta, key) == getattr(job, key),
                   f"meta {getattr(meta, key)!r}, job.json {getattr(job, key)!r}")
    tok = load_pinned_tokenizer(root, job)
    rng = np.random.default_rng(seed)
    legacy = [s for s, info in meta.splits.items() if info.get("document_ends")]
    if legacy:
        log(f"note: split(s) {', '.join(legacy)} come from shards without document tables (an older root); "
            "their document ends are checked against eos ids")
    if meta.dtype == "uint32":
        log(NANOGPT_UINT32_NOTE)
    records: list[DoneRecord] = []
    for split, info in meta.splits.items():
        records += validate_split(root, entries, split, info, job, tok, samples, block_size, rng, report)
    _parity(records, report)
    for c in report.checks:
        log(f"[{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
    for s in report.samples:
        log(f"eye test: {s}")
    return report
