"""The on-disk protocol of an output root: every path slimtok keeps there, its records and formats.

This package is the only place that formats these paths and performs file operations on them;
everything else asks it (tests/unit/protocol/test_ownership.py keeps this true). Another tool
can read an output root safely by following the rules written here (docs/RELIABILITY.md says the
same at more length).

Layout of ``ROOT`` (``<id>`` is a manifest id such as ``train/chunk1/example_train_0``)::

    job.json                      settings pin, created once (exclusive link)       JobSettings
                                  (backend* fields: rewritten by worker 0, unpinned; ``kind``: what
                                  created the root, tokenize or mix, see .kinds)
    manifest.jsonl                the manifest the job was pinned to (a copy)
    tokenizer/tokenizer.json      the exact tokenizer the job uses (a copy, merges as "a b" strings
                                  when that loads back to the pinned canonical JSON)
    .pin.<token>/                 a pin's copies, staged before job.json names them (transient)
    launches/<token>.json         a running tokenize launch, from before it pins    LaunchLease
    locks/<id>.lock               claim of a shard, created by link(2)              LockRecord
    locks/<id>.<token>.stolen     a stale lock being taken over (transient)
    checkpoints/<id>.json         last durable progress of an unfinished shard     Checkpoint
    shards/<id>.<token>.part      token data being written by the claim <token>
    shards/<id>.bin               finished token data of a shard
    documents/<id>.<token>.part   document table being written by the claim <token>
    documents/<id>.docs           finished document table of a shard               DOC_TABLE_DTYPE
    done/<id>.json                commit record of a finished shard (exclusive)    DoneRecord
    failed/<id>.json              why a shard could not be read                    FailedRecord
    done/<dir>/.<name>.corrupt-<token>  an unparsable done record, set aside by a worker that redoes the shard
    heartbeats/<worker>.json      liveness and throughput of one worker             Heartbeat
    probes/<worker>               touched to read the file server's clock
    logs/<worker>.log             one worker's log
    status/done-rollup.json       counts of every done record, cached by status     DoneRollup
    status/journal/<worker>.jsonl one line per shard that worker committed: [id] + ROLLUP_COLUMNS
    train.bin val.bin test.bin    combined splits
    train.idx val.idx test.idx    uint64 document end offsets (tokens) of each combined split
    megatron/<prefix>_<split>_text_document.{bin,idx}   `slimtok export megatron` (relative prefix)
    packed/<split>-<seq_len>-<fmt>/manifest.json         `slimtok export packed` (default folder)   PackedManifest
    meta.pkl meta.json            what a trainer needs to read the combined splits          Meta
    mix.json                      `slimtok mix`: the resolved spec and its inputs' fingerprints  MixRecord
    .<split file>.mix-partial     a mix's split while its chunks (ids <split>/mix-<n>) are appended
    .<file>.publish.json          a set of outputs being published together (slimtok.publish)  PublishIntent
    .<split file>.consume(.json)  `combine --consume` in progress and its journal (slimtok.consume)  ConsumeJournal
    dedup/                        `slimtok dedup`: plan, unit rows and drops, done records (protocol.layout)

Invariants:

* A shard is finished exactly when ``done/<id>.json`` exists; its ``file`` names the data, whose
  size and checksum the record holds (:meth:`DoneRecord.data_checksum`: sha256 for tokenize's
  shards, xxh3-128 for a mix's chunks). Nothing else is ever trusted by combine.
* Only the holder of ``locks/<id>.lock`` (the record's ``token``) writes ``shards/<id>.<token>.part``
  and the checkpoint. A checkpoint always names a part file whose first ``bytes`` bytes are the
  tokens of the first ``lines`` input lines of the shard file as it was then (``source_size``,
  ``source_mtime_ns``), so any later holder that finds the same file may resume from it.
* ``documents/<id>.docs`` holds one ``DOC_TABLE_DTYPE`` row per document of ``shards/<id>.bin``, in
  order: the document's token count (separators included; the counts sum to the shard's tokens),
  its source (an index into the done record's ``source_names``) and the xxh3-128 hash of its exact
  text bytes (UTF-8, after the reader's repair rules). A checkpoint's table part holds exactly
  ``documents`` rows. Done records without ``table`` come from older roots (no table).
* Records are written whole: to a temporary name, fsync'd, then renamed or linked into place.
* ``status/done-rollup.json`` is only a cache: ``done/`` stays the truth. A done record is never
  rewritten once created, so ``slimtok status`` copies each one's counts into the roll-up the first
  time it lists it and afterwards only opens records that are new since; ids no longer listed in
  ``done/`` are dropped. Deleting the roll-up is always safe; status rebuilds it (and works, only
  slower, where it cannot write it).
* ``status/journal/<worker>.jsonl`` is a cache too: after creating a done record, its worker (the
  file's only writer) appends ``[id, *DoneRecord.rollup_row(size)]``, so a first status reads a few
  hundred journals instead of opening every done record. A line counts only while ``done/<id>.json``
  exists; torn or unreadable lines are ignored, and records missing from journals are opened.
* Each cached row carries its record file's size; status stats every done record and opens one
  whose size no longer matches. A record that does not parse is not done for any stage: tokenize
  sets it aside (``.<name>.corrupt-<token>``) and redoes the shard, combine names it, status lists
  it as pending with the reason.

Modules: :mod:`.layout` (``OutputRoot``: every path), :mod:`.records` (every JSON record),
:mod:`.atomic` (durable whole-file writes, record reads), :mod:`.storage` (the one interface every
file operation goes through), :mod:`.binary` (dtypes, checksums), :mod:`.doctable` and
:mod:`.docindex` (one module per binary format: names, writer, reader), :mod:`.identity`.
Importing this package never imports numpy (the dtypes below are built on first use).
"""

from __future__ import annotations

from typing import Any

from .atomic import (
    create_exclusive,
    fsync_dir,
    json_lines,
    parse_record,
    read_record,
    write_atomic,
    write_json_lines,
    write_record,
)
from .binary import CHECKSUMS, DTYPE_FIELDS, Checksum, dtype, hasher, read_tokens
from .doctable import DOC_TABLE_VERSION, read_doc_table, table_rows
from .identity import boot_id, hostname, new_token, worker_name
from .kinds import KINDS, MIX, TOKENIZE, RootKind, require_kind, root_kind, splits_command
from .layout import (
    PUBLISH_INTENT,
    SPLIT_FILES,
    SPLITS,
    OutputRoot,
    dedup_job_path,
    dedup_plan_path,
    dedup_unit,
    dedup_unit_data,
    dedup_unit_done,
    ids_under,
    publish_intent,
    temp_files,
    work_path,
)
from .records import (
    DEDUP_PHASES,
    DEDUP_REASONS,
    DEFAULT_SOURCE_KEY,
    PROTOCOL_VERSION,
    ROLLUP_COLUMNS,
    Checkpoint,
    ConsumeJournal,
    DedupJob,
    DedupPlan,
    DedupUnitRecord,
    DoneRecord,
    DoneRollup,
    FailedRecord,
    Heartbeat,
    Holder,
    JobSettings,
    LaunchLease,
    LockRecord,
    Meta,
    MixRecord,
    PackedManifest,
    PublishIntent,
    Record,
    RollupRow,
    journal_line,
)
from .storage import POSIX, FileStat, PosixStorage, Storage, storage_for, temp_glob, temp_path

__all__ = [
    "KINDS", "MIX", "TOKENIZE", "RootKind", "require_kind", "root_kind", "splits_command",
    "CHECKSUMS", "DEDUP_PHASES", "DEDUP_REASONS", "DEFAULT_SOURCE_KEY", "DOC_TABLE_VERSION", "DTYPE_FIELDS", "POSIX",
    "PROTOCOL_VERSION", "PUBLISH_INTENT", "ROLLUP_COLUMNS", "SPLITS", "SPLIT_FILES", "Checkpoint", "Checksum",
    "ConsumeJournal", "DedupJob", "DedupPlan", "DedupUnitRecord", "DoneRecord", "DoneRollup", "FailedRecord",
    "FileStat", "Heartbeat", "Holder", "JobSettings", "LaunchLease", "LockRecord", "Meta", "MixRecord", "OutputRoot",
    "PackedManifest",
    "PosixStorage",
    "PublishIntent", "Record", "RollupRow", "Storage", "boot_id", "create_exclusive", "dedup_job_path",
    "dedup_plan_path", "dedup_unit", "dedup_unit_data", "dedup_unit_done", "dtype",
    "fsync_dir", "hasher", "hostname", "ids_under", "journal_line", "json_lines", "new_token", "parse_record",
    "publish_intent",
    "read_doc_table", "read_record", "read_tokens", "storage_for", "table_rows", "temp_files", "temp_glob",
    "temp_path", "work_path", "worker_name", "write_atomic", "write_json_lines", "write_record",
]


def __getattr__(name: str) -> Any:
    """``DOC_TABLE_DTYPE``, ``DEDUP_ROW_DTYPE``, ``DEDUP_DROP_DTYPE``: built (numpy imported) on first use."""
    if name not in DTYPE_FIELDS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    built = globals()[name] = dtype(name)  # later uses find it without __getattr__
    return built
