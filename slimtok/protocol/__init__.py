"""The on-disk protocol of an output root: every path slimtok keeps there, and its records.

This module is the only place that formats these paths; everything else asks it. Another tool
can read an output root safely by following the rules written here (docs/RELIABILITY.md says the
same at more length).

Layout of ``ROOT`` (``<id>`` is a manifest id such as ``train/chunk1/example_train_0``)::

    job.json                      settings pin, created once (exclusive link)       JobSettings
                                  (backend* fields: rewritten by worker 0, unpinned)
    manifest.jsonl                the manifest the job was pinned to (a copy)
    tokenizer/tokenizer.json      the exact tokenizer the job uses (a copy, merges as "a b" strings
                                  when that loads back to the pinned canonical JSON)
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
    packed/<split>-<seq_len>-<fmt>/                      `slimtok export packed` (default folder)
    meta.pkl meta.json            what a trainer needs to read the combined splits          Meta
    .<file>.publish.json          a set of outputs being published together (slimtok.publish)
    .<split file>.consume(.json)  `combine --consume` in progress and its journal (slimtok.consume)
    dedup/                        `slimtok dedup`: plan, per-unit rows and drops, done records (see the dedup block below)

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
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, TypeVar

import orjson
import xxhash

from .errors import SlimtokError

if TYPE_CHECKING:
    import numpy as np

PROTOCOL_VERSION = 1
_TOKEN_WIDTHS = {"uint16": 2, "uint32": 4}

#: The fields of the binary records, as numpy dtypes named ``DOC_TABLE_DTYPE``, ``DEDUP_ROW_DTYPE``
#: and ``DEDUP_DROP_DTYPE`` (module attributes). Each dtype is built on its first use (the module's
#: ``__getattr__``), so the processes that only read and write JSON records (a launcher, a relaunch,
#: ``slimtok status``) never import numpy, whose import costs about a third of a tokenizer's load.
_DTYPE_FIELDS: dict[str, list[tuple[str, str]]] = {
    # One row of a shard's document table (24 bytes, little-endian, no header; docs/FORMATS.md).
    # hash_hi/hash_lo are the high and low 64 bits of xxh3-128 of the document's UTF-8 text.
    "DOC_TABLE_DTYPE": [("tokens", "<u4"), ("source", "<u4"), ("hash_hi", "<u8"), ("hash_lo", "<u8")],
    # One scatter row: a document's hash and its place in the global order (see slimtok.dedup.plan).
    "DEDUP_ROW_DTYPE": [("hash_hi", "<u8"), ("hash_lo", "<u8"), ("order", "<u8")],
    # One dropped document: its global order and why (DEDUP_REASONS index).
    "DEDUP_DROP_DTYPE": [("order", "<u8"), ("reason", "u1")],
}


def __getattr__(name: str) -> Any:
    if name not in _DTYPE_FIELDS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _dtype(name)


def _dtype(name: str) -> np.dtype:
    import numpy as np

    dtype = globals()[name] = np.dtype(_DTYPE_FIELDS[name])  # later uses find it without __getattr__
    return dtype

DOC_TABLE_VERSION = 1

#: Combined output file of each split; "validation" is ``val.bin`` as nanoGPT names it.
SPLIT_FILES = {"train": "train.bin", "validation": "val.bin", "test": "test.bin"}
SPLITS = tuple(SPLIT_FILES)
#: Where SlimPajama records name their source; the default of ``--source-key``.
DEFAULT_SOURCE_KEY = "meta.redpajama_set_name"

R = TypeVar("R", bound="Record")

#: The checksums a done record may give its data, by name. sha256 is what tokenize records (and
#: every record before ``DoneRecord.checksum`` existed); a mix records xxh3-128, which runs at
#: memory speed where sha256 runs slower than the copy it checks. Both detect corruption and
#: truncation; neither is a defence against someone who rewrites a record on purpose.
CHECKSUMS = {"sha256": hashlib.sha256, "xxh3-128": xxhash.xxh3_128}


@dataclass(frozen=True)
class Checksum:
    """A digest and the algorithm (a ``CHECKSUMS`` name) that made it; ``str()`` is ``algorithm:hex``."""

    algorithm: str
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> "Checksum":
        """The inverse of ``str()``; an unknown algorithm is kept (``hasher`` refuses it)."""
        algorithm, _, hexdigest = text.partition(":")
        return cls(algorithm, hexdigest)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"

    def hasher(self) -> Any:
        """A fresh hash object of the algorithm (``update``, ``hexdigest``); SlimtokError for a
        name this version does not know (a record from a newer writer)."""
        return hasher(self.algorithm)

    def matches(self, h: Any) -> bool:
        return h.hexdigest() == self.hexdigest


def hasher(algorithm: str) -> Any:
    """A fresh hash object of the ``CHECKSUMS`` algorithm ``algorithm``."""
    try:
        return CHECKSUMS[algorithm]()
    except KeyError:
        raise SlimtokError(f"unknown checksum algorithm {algorithm!r} (this slimtok knows {', '.join(CHECKSUMS)})",
                           fix="a newer slimtok wrote the record: read the root with that version") from None


class Record:
    """Mixin for dataclass records stored as JSON; unknown keys from newer writers are ignored."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class JobSettings(Record):
    """Everything that decides the output bytes; a relaunch must match it exactly."""

    manifest_sha256: str
    shards: int
    tokenizer: str
    #: sha256 of the tokenizer's canonical JSON (``to_str``); "" until the first worker records it
    #: when the launcher pinned the job from the JSON alone (slimtok.job.tokenizer_fingerprint)
    tokenizer_sha256: str
    vocab_size: int
    eos_token_id: int
    eos_token: str | None
    dtype: str
    text_key: str
    protocol: int = PROTOCOL_VERSION
    #: dotted path of the per-source accounting; pinned so every done record counts the same way
    source_key: str = DEFAULT_SOURCE_KEY
    #: Not pinned (every backend gives the reference ids, see slimtok.tokenizer.Encoder): the
    #: --backend asked for, the one worker 0 of process 0 encodes with in the latest launch, and how
    #: that backend was checked. Worker 0 rewrites them atomically; pinned fields never change.
    backend_requested: str = ""
    backend: str = ""
    backend_verification: str = ""
    #: Not pinned: sha256 of ``tokenizer/tokenizer.json``: the given file's bytes (pinned from its
    #: JSON alone), or the proven compact form (``slimtok.tokenizer.loading._read_file``); empty:
    #: the copy is the canonical JSON, whose sha256 is ``tokenizer_sha256``.
    tokenizer_file_sha256: str = ""
    #: Not pinned: sha256 of what the first launch was asked (tokenizer file bytes, tokenizer_config.json,
    #: the raw --eos-id/--bos/--special-text/--dtype/--text-key/--source-key, the slimtok version); a
    #: relaunch asking the same is the same job without loading the tokenizer (slimtok.job.request_digest).
    request_sha256: str = ""
    #: Not pinned: the disk-budget sample of the first launch, per split [tokens per compressed source
    #: byte, shards sampled]; later launches reuse it instead of encoding a sample again.
    sampled_ratios: dict[str, list[float]] = field(default_factory=dict)
    #: The document policy: each document is ``[bos_token_id]? + ids(text) + [eos_token_id]``, with
    #: special-token strings in text encoded as ordinary text (literal) or as their ids (parse).
    #: Roots pinned before the policy existed read as no bos, literal: what they were written with.
    bos_token_id: int | None = None
    bos_token: str | None = None
    special_text: str = "literal"
    #: Not pinned: why each separator and the dtype were chosen (one line each), for meta and status.
    policy_notes: list[str] = field(default_factory=list)

    PINNED = ("manifest_sha256", "tokenizer_sha256", "vocab_size", "eos_token_id", "dtype", "text_key",
              "protocol", "source_key", "bos_token_id", "special_text")

    @property
    def token_width(self) -> int:
        """Bytes per token id in the job's ``.bin`` files (``dtype`` is uint16 or uint32)."""
        return _TOKEN_WIDTHS[self.dtype]

    def differences(self, other: JobSettings) -> list[str]:
        """Human-readable list of pinned settings that differ (self = pinned, other = requested)."""
        return [f"{name}: pinned {getattr(self, name)!r}, requested {getattr(other, name)!r}"
                for name in self.PINNED if getattr(self, name) != getattr(other, name)]


@dataclass(frozen=True)
class Holder:
    """One worker process: host and boot (so pids are only compared where they mean something),
    pid and its start time (so a reused pid is not mistaken for the holder), and its place."""

    host: str
    boot_id: str
    pid: int
    pid_started: float
    process_index: int
    worker: int


@dataclass(frozen=True)
class LockRecord(Holder, Record):
    """Who holds a shard. ``token`` is unique per claim and names the claim's part file."""

    shard: str
    token: str
    claimed_at: float


@dataclass
class Checkpoint(Record):
    """Durable progress: ``part`` holds exactly ``bytes`` bytes for the first ``lines`` input lines."""

    shard: str
    token: str
    part: str
    lines: int
    documents: int
    tokens: int
    bytes: int
    skipped: dict[str, int] = field(default_factory=dict)
    #: documents and tokens per source for the first ``lines`` lines: {source: {"documents", "tokens"}}
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    #: size and mtime (ns) of the input shard the lines were read from; -1: not recorded (older writer).
    #: A holder whose shard file no longer matches starts the shard over instead of resuming.
    source_size: int = -1
    source_mtime_ns: int = -1
    #: names the document table's ``source`` column indexes, in first-seen order ("" = no source);
    #: the table part ``documents/<id>.<token>.part`` holds ``documents`` rows (0 rows: older writer)
    source_names: list[str] = field(default_factory=list)
    table_version: int = 0


@dataclass
class DoneRecord(Record):
    """Commit record of a finished shard; ``file`` is relative to the output root."""

    shard: str
    split: str
    file: str
    lines: int
    documents: int
    tokens: int
    bytes: int
    #: hex sha256 of the data; "" when ``checksum`` gives another algorithm's digest
    sha256: str
    dtype: str
    skipped: dict[str, int]
    source_size: int
    token: str
    host: str
    finished_at: float
    seconds: float
    #: documents and tokens per source (``job.source_key``); they sum to ``documents`` and ``tokens``
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    #: the encoder that wrote the shard (``tokenizers``, ``fastokens``, or ``tokenizers+fastokens``
    #: when fastokens took over part way; see slimtok.tokenizer)
    backend: str = ""
    #: the shard's document table (relative path; "" in roots written before tables existed), its
    #: size in bytes (``documents`` * DOC_TABLE_DTYPE.itemsize) and sha256, and the source names its
    #: ``source`` column indexes
    table: str = ""
    table_bytes: int = 0
    table_sha256: str = ""
    source_names: list[str] = field(default_factory=list)
    table_version: int = 0
    #: the data's checksum as ``algorithm:hex`` (a ``CHECKSUMS`` name) when it is not ``sha256``:
    #: a mix's chunks give ``xxh3-128:...`` here and ``sha256`` "". "" (every tokenize shard, and
    #: every record written before the field existed): the checksum is ``sha256``.
    checksum: str = ""

    def data_checksum(self) -> Checksum:
        """The checksum that every reader verifies the record's bytes against."""
        return Checksum.parse(self.checksum) if self.checksum else Checksum("sha256", self.sha256)

    def rollup_row(self, record_bytes: int) -> list[Any]:
        """The record's ``ROLLUP_COLUMNS``, as status caches them; ``record_bytes``: its file's size."""
        return [self.documents, self.tokens, self.bytes, self.source_size, self.finished_at, self.sources,
                record_bytes]


@dataclass
class FailedRecord(Record):
    """Why a shard could not be tokenized; the reason is one line naming the file."""

    shard: str
    path: str
    reason: str
    host: str
    pid: int
    launch: str
    failed_at: float


@dataclass
class Heartbeat(Record):
    """Written every few seconds by each live worker, read by ``slimtok status``."""

    worker: str
    host: str
    pid: int
    process_index: int
    worker_index: int
    shard: str | None
    state: str
    documents: int
    tokens: int
    text_chars: int
    shards_done: int
    tokens_per_second: float
    cpu_percent: float
    rss_bytes: int
    updated_at: float
    started_at: float
    #: seconds between heartbeats, so a reader knows when one is overdue (0: older writer)
    interval: float = 0.0
    #: whole host's CPU use in percent of all its cores, to see whether the node is saturated
    host_cpu_percent: float = 0.0
    host_cpus: int = 0


#: What ``DoneRollup.shards`` keeps of each done record, in this order.
#: ``record_bytes`` is the size of the done record file the row was taken from: status compares it
#: with the file's current size, so a record damaged after its row was cached is noticed.
ROLLUP_COLUMNS = ["documents", "tokens", "bytes", "source_size", "finished_at", "sources", "record_bytes"]


def journal_line(record: DoneRecord) -> bytes:
    """One line of ``status/journal/<worker>.jsonl``: ``[id, *ROLLUP_COLUMNS]``, for a record
    written by ``write_record`` (so its file holds exactly ``record.to_json()``)."""
    return orjson.dumps([record.shard, *record.rollup_row(len(record.to_json()))]) + b"\n"


@dataclass
class RollupRow:
    """One done shard's ``ROLLUP_COLUMNS`` by name; stored as a plain list in that order."""

    documents: int
    tokens: int
    bytes: int
    source_size: int
    finished_at: float
    sources: dict[str, dict[str, int]]
    record_bytes: int

    @classmethod
    def from_list(cls, row: list[Any]) -> RollupRow | None:
        """The row, or None when it does not hold one value per column (a foreign or older row)."""
        return cls(*row) if isinstance(row, list) and len(row) == len(ROLLUP_COLUMNS) else None

    def to_list(self) -> list[Any]:
        return [getattr(self, name) for name in ROLLUP_COLUMNS]


@dataclass
class DoneRollup(Record):
    """Cache of done records kept by ``slimtok status``: ``shards[id]`` holds ``columns`` in order."""

    manifest_sha256: str
    shards: dict[str, list[Any]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=lambda: list(ROLLUP_COLUMNS))


class OutputRoot:
    """Paths of one output root. Methods only compute paths; callers create what they need."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).absolute()

    # -- job-wide files ---------------------------------------------------------------------
    @property
    def job(self) -> Path:
        return self.root / "job.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.jsonl"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_file(self) -> Path:
        return self.tokenizer_dir / "tokenizer.json"

    @property
    def tokenizer_config_file(self) -> Path:
        return self.tokenizer_dir / "tokenizer_config.json"

    @property
    def meta_pkl(self) -> Path:
        return self.root / "meta.pkl"

    @property
    def meta_json(self) -> Path:
        return self.root / "meta.json"

    @property
    def mix_json(self) -> Path:
        """``slimtok mix``: the resolved spec and the fingerprints of its inputs."""
        return self.root / "mix.json"

    def combined(self, split: str) -> Path:
        return self.root / SPLIT_FILES[split]

    def doc_index(self, split: str) -> Path:
        """``train.idx``: uint64 end offset (in tokens, exclusive) of every document in ``train.bin``."""
        return self.combined(split).with_suffix(".idx")

    # -- exports ----------------------------------------------------------------------------
    def megatron_prefix(self, prefix: str, split: str) -> Path:
        """``<prefix>_<split>_text_document`` (+ .bin/.idx); a relative prefix lives in ``megatron/``."""
        base = Path(prefix) if Path(prefix).is_absolute() else self.root / "megatron" / prefix
        return base.with_name(f"{base.name}_{self.combined(split).stem}_text_document")

    def packed_dir(self, split: str, seq_len: int, fmt: str) -> Path:
        return self.root / "packed" / f"{self.combined(split).stem}-{seq_len}-{fmt}"

    # -- per-shard files --------------------------------------------------------------------
    def lock(self, shard: str) -> Path:
        return self.root / "locks" / f"{shard}.lock"

    def stolen(self, shard: str, token: str) -> Path:
        """Where a stealer renames a stale lock; exactly one stealer's rename succeeds."""
        return self.root / "locks" / f"{shard}.{token}.stolen"

    def checkpoint(self, shard: str) -> Path:
        return self.root / "checkpoints" / f"{shard}.json"

    def part(self, shard: str, token: str) -> Path:
        return self.root / "shards" / f"{shard}.{token}.part"

    def parts(self, shard: str) -> list[Path]:
        """Every ``part(shard, token)`` file present, whatever its token (one directory listing)."""
        return _token_files(self.part(shard, "-").parent, shard)

    def table_parts(self, shard: str) -> list[Path]:
        """Every ``table_part(shard, token)`` file present, whatever its token."""
        return _token_files(self.table_part(shard, "-").parent, shard)

    def data(self, shard: str) -> Path:
        return self.root / "shards" / f"{shard}.bin"

    def table_part(self, shard: str, token: str) -> Path:
        """The document table being written by the claim ``token`` beside ``part(shard, token)``."""
        return self.root / "documents" / f"{shard}.{token}.part"

    def table(self, shard: str) -> Path:
        """The finished document table of a shard: ``DOC_TABLE_DTYPE`` rows, one per document."""
        return self.root / "documents" / f"{shard}.docs"

    def done(self, shard: str) -> Path:
        return self.root / "done" / f"{shard}.json"

    def corrupt_aside(self, record: Path) -> Path:
        """Where an unparsable record is kept for inspection (``.*`` names are never listed as ids)."""
        return record.with_name(f".{record.name}.corrupt-{new_token()}")

    def failed(self, shard: str) -> Path:
        return self.root / "failed" / f"{shard}.json"

    def part_files(self) -> list[Path]:
        """Every part file of any shard (token data and document tables being written), one walk."""
        return [p for folder in ("shards", "documents") for p in sorted((self.root / folder).rglob("*.part"))]

    def stolen_markers(self) -> list[Path]:
        """Every ``stolen(shard, token)`` marker present (a takeover under way, or one a kill cut short)."""
        return sorted((self.root / "locks").rglob("*.stolen"))

    def worker_folders(self) -> list[Path]:
        """The folders only tokenize workers write (per-shard files, records, heartbeats): where
        the temporary files of a killed worker stay behind."""
        return [self.root / name for name in ("shards", "documents", "done", "failed", "checkpoints", "locks",
                                              "heartbeats")]

    # -- listings (one directory walk each, no stat) ----------------------------------------
    def done_ids(self) -> set[str]:
        return ids_under(self.root / "done", ".json")

    def done_sizes(self) -> dict[str, int]:
        """{shard: size of its done record}: the listing of ``done_ids`` plus one stat per record."""
        sizes: dict[str, int] = {}
        for shard, path in _files_under(self.root / "done", ".json"):
            try:
                sizes[shard] = os.stat(path).st_size
            except FileNotFoundError:
                pass  # set aside or removed since the listing
        return sizes

    def failed_ids(self) -> set[str]:
        return ids_under(self.root / "failed", ".json")

    def locked_ids(self) -> set[str]:
        return ids_under(self.root / "locks", ".lock")

    def checkpointed_ids(self) -> set[str]:
        return ids_under(self.root / "checkpoints", ".json")

    # -- per-worker files -------------------------------------------------------------------
    def heartbeat(self, worker: str) -> Path:
        return self.root / "heartbeats" / f"{worker}.json"

    def heartbeats_dir(self) -> Path:
        return self.root / "heartbeats"

    def probe(self, worker: str) -> Path:
        return self.root / "probes" / worker

    def log(self, worker: str) -> Path:
        return self.root / "logs" / f"{worker}.log"

    # -- status ---------------------------------------------------------------------------
    @property
    def done_rollup(self) -> Path:
        return self.root / "status" / "done-rollup.json"

    def done_journal(self, worker: str) -> Path:
        return self.root / "status" / "journal" / f"{worker}.jsonl"

    def done_journals(self) -> list[Path]:
        folder = self.root / "status" / "journal"
        return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def resolve(self, relative: str) -> Path:
        return self.root / relative

    def prune_empty(self, removed: Iterable[Path]) -> None:
        """Remove the folders left empty by removing ``removed`` (e.g. ``shards/train/chunk1/``),
        up to but not including the root's own folders (``shards/``, ``locks/``, ...). A folder a
        file is still in, or that another process refilled meanwhile, stays (``rmdir`` refuses)."""
        for folder in sorted({p.parent for p in removed}, key=lambda f: len(f.parts), reverse=True):
            while folder.parent != self.root and self.root in folder.parents:
                try:
                    folder.rmdir()
                except FileNotFoundError:
                    pass  # removed already, by this loop for another file or by an earlier run
                except OSError:  # not empty
                    break
                folder = folder.parent


def ids_under(folder: Path, suffix: str) -> set[str]:
    """Shard ids of every ``<id><suffix>`` file below ``folder`` (temp files, named ``.*``, excluded)."""
    return {shard for shard, _path in _files_under(folder, suffix)}


def _files_under(folder: Path, suffix: str) -> Iterator[tuple[str, str]]:
    """(shard id, path) of every ``<id><suffix>`` file below ``folder``, ``.*`` names excluded."""
    for dirpath, _dirs, files in os.walk(folder):
        rel = os.path.relpath(dirpath, folder)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for name in files:
            if name.endswith(suffix) and not name.startswith("."):
                yield prefix + name[: -len(suffix)], os.path.join(dirpath, name)


def _token_files(folder: Path, shard: str) -> list[Path]:
    """``<folder>/<last id component>.<token>.part`` files, whatever the token (one listing)."""
    prefix = shard.rsplit("/", 1)[-1] + "."
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [folder / name for name in names if name.startswith(prefix) and name.endswith(".part")
            and "." not in name[len(prefix):-len(".part")]]  # tokens have no dot; longer ids do


def read_doc_table(path: Path) -> np.ndarray:
    """A document table as a read-only structured array (memory-mapped; empty file: no rows)."""
    import numpy as np

    dtype = _dtype("DOC_TABLE_DTYPE")
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def worker_name(host: str, process_index: int, worker: int) -> str:
    """File-name-safe identity of one worker: ``<host>-p<index>-w<worker>``."""
    safe_host = "".join(c if c.isalnum() or c in "-_." else "_" for c in host)
    return f"{safe_host}-p{process_index}-w{worker}"


def new_token() -> str:
    """A claim token: unique across hosts and relaunches (random, not derived from pid)."""
    return secrets.token_hex(8)


def hostname() -> str:
    return socket.gethostname()


def boot_id() -> str:
    """Identifies this kernel boot, so a pid is only compared on the same host and boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


# -- atomic record I/O -----------------------------------------------------------------------

def fsync_dir(path: Path) -> None:
    """Make a rename or link inside ``path`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """A private temporary name beside ``path`` (``.<name>.<token>.tmp``: never listed as an id)."""
    return path.with_name(f".{path.name}.{new_token()}.tmp")


def temp_glob(name: str) -> str:
    """The glob of every :func:`temp_path` of a file called ``name``."""
    return f".{name}.*.tmp"


def temp_files(folder: Path) -> list[Path]:
    """Every :func:`temp_path` file below ``folder``, whatever its name."""
    return sorted(folder.rglob(temp_glob("*")))


def work_path(path: Path, kind: str) -> Path:
    """A hidden working file of a stage beside ``path``: ``.<name>.<kind>`` (e.g. ``consume``)."""
    return path.with_name(f".{path.name}.{kind}")


def _write_tmp(path: Path, payload: bytes, durable: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def write_atomic(path: Path, payload: bytes, durable: bool = True) -> None:
    """Replace ``path`` with ``payload`` so readers see the old or the new content, never a mix."""
    tmp = _write_tmp(path, payload, durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def create_exclusive(path: Path, payload: bytes, durable: bool = True) -> bool:
    """Create ``path`` with ``payload`` unless it exists; True when this call created it.

    Uses link(2) of a private file rather than O_EXCL, because O_EXCL is not atomic on every NFS
    setup; a link whose reply was lost is recognised by the private file's link count. ``durable``
    also syncs the content and the directory entry (two syncs).
    """
    tmp = _write_tmp(path, payload, durable)
    try:
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
        except OSError:
            created = os.stat(tmp).st_nlink == 2
        if not created and os.stat(tmp).st_nlink == 2:
            created = True
    finally:
        tmp.unlink(missing_ok=True)
    if created and durable:
        fsync_dir(path.parent)
    return created


def read_record(path: Path, cls: type[R]) -> R | None:
    """The record at ``path``, or None when it is missing or not a complete record."""
    try:
        return parse_record(path.read_bytes(), cls)
    except (FileNotFoundError, NotADirectoryError):
        return None


def parse_record(raw: bytes, cls: type[R]) -> R | None:
    """The record that ``raw`` (a record file's bytes) holds, or None when it is not a complete one."""
    try:
        return cls.from_dict(orjson.loads(raw))
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return None


def write_record(path: Path, record: Record, durable: bool = True) -> None:
    write_atomic(path, record.to_json(), durable)


# -- meta.json (combine's record; owned by the output stage) ---------------------------------

@dataclass
class Meta(Record):
    """``meta.json`` / ``meta.pkl``: what a trainer needs to read the combined splits.

    ``splits[name]`` (name as in SPLIT_FILES) holds ``file``, ``index``, ``shards``, ``documents``,
    ``tokens``, ``bytes``, ``sha256`` (without --no-verify), ``partial``, ``missing_shards``,
    ``skipped_lines``, ``sources`` ({source: {"documents", "tokens"}}) and, when documents were
    left out, ``removed`` ({reason: {"documents", "tokens"}}, also per source); counts are of what
    the split's file holds."""

    #: every field has a default so that meta.json of older versions (fewer keys) still reads
    tokenizer: str = ""
    tokenizer_path: str = ""
    tokenizer_sha256: str = ""
    vocab_size: int = 0
    eos_token_id: int = -1
    eos_token: str | None = None
    #: the document policy: each document is [bos_token_id]? + ids(text) + [eos_token_id]
    bos_token_id: int | None = None
    bos_token: str | None = None
    special_text: str = "literal"
    #: why the separators and dtype were chosen, and warnings (e.g. an eos that text can produce)
    policy_notes: list[str] = field(default_factory=list)
    dtype: str = ""
    text_key: str = ""
    manifest_sha256: str = ""
    backend: str = ""
    backend_verification: str = ""
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    slimtok_version: str = ""
    combined_at: str = ""


# -- dedup -------------------------------------------------------------------------------------
# ``slimtok dedup`` keeps everything under ``ROOT/dedup/`` (docs/DEDUP.md)::
#
#     dedup/plan.json                 buckets, unit size and inputs' fingerprint, created once  DedupPlan
#     dedup/<phase>/<k>.<ext>         data of unit k of a phase (scatter .rows, bucket .drops,
#                                     gather .drops), renamed into place before its done record
#     dedup/done/<phase>/<k>.json     commit record of a finished unit (exclusive)           DedupUnitRecord
#     dedup/job.json                  written once every unit is done                         DedupJob
#     locks/dedup/<phase>/<k>.lock    claim of a unit (the claim id is ``dedup/<phase>/<k>``)
#
# A unit is finished exactly when its done record exists; its data file never changes afterwards
# (any two writers of one unit write the same bytes, so a late rename is harmless).

DEDUP_REASONS = ("kept", "duplicate", "contamination")
DEDUP_PHASES = ("scatter", "bucket", "gather")
_DEDUP_EXT = {"scatter": "rows", "bucket": "drops", "gather": "drops"}
_DEDUP_DATA_DIR = {"scatter": "scatter", "bucket": "bucket", "gather": "drops"}


@dataclass
class DedupPlan(Record):
    """How a dedup of one output root is cut into units; pinned once, a relaunch must match."""

    fingerprint: str
    shards: int
    documents: int
    buckets: int
    unit_shards: int
    version: int = 1


@dataclass
class DedupUnitRecord(Record):
    """Commit record of one finished unit: ``file`` (relative) holds ``rows`` rows.

    Scatter: ``offsets`` has ``buckets + 1`` entries, bucket b's rows are ``[offsets[b], offsets[b+1])``.
    Bucket and gather: ``counts`` has documents dropped per reason name.
    """

    unit: str
    file: str
    rows: int
    bytes: int
    sha256: str
    host: str
    finished_at: float
    offsets: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class DedupJob(Record):
    """A finished dedup: the plan it followed and the documents dropped per reason name."""

    fingerprint: str
    shards: int
    documents: int
    buckets: int
    unit_shards: int
    dropped: dict[str, int]
    finished_at: float


def dedup_plan_path(root: OutputRoot) -> Path:
    return root.root / "dedup" / "plan.json"


def dedup_job_path(root: OutputRoot) -> Path:
    return root.root / "dedup" / "job.json"


def dedup_unit(phase: str, k: int) -> str:
    """The claim id of unit ``k`` of ``phase``; its lock is ``OutputRoot.lock`` of it."""
    return f"dedup/{phase}/{k}"


def dedup_unit_done(root: OutputRoot, phase: str, k: int) -> Path:
    return root.root / "dedup" / "done" / phase / f"{k}.json"


def dedup_unit_data(root: OutputRoot, phase: str, k: int) -> Path:
    return root.root / "dedup" / _DEDUP_DATA_DIR[phase] / f"{k}.{_DEDUP_EXT[phase]}"
