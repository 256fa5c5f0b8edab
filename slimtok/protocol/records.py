"""Every JSON record of an output root, as a dataclass (the layout table in :mod:`slimtok.protocol`
says which file holds which).

Records are read and written only through :mod:`.atomic` (``read_record``, ``write_record``), which
stores ``Record.to_json``: indented, keys sorted, newline-ended. Unknown keys from newer writers are
ignored when reading; a field added later has a default, so records of older writers still read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import orjson

from .binary import Checksum

PROTOCOL_VERSION = 1
_TOKEN_WIDTHS = {"uint16": 2, "uint32": 4}
#: Where SlimPajama records name their source; the default of ``--source-key``.
DEFAULT_SOURCE_KEY = "meta.redpajama_set_name"
#: The default of ``--max-line-bytes``: a longer line (a parquet/Arrow text: its UTF-8 bytes) is
#: skipped as ``line_too_long``. A worker holds at most one line of this size (plus a block), so it
#: is also the bound on a worker's reading memory. 256 MiB keeps the 200 MB lines the huge-document
#: path exists for (and the tests read whole), far above ordinary web and book documents, and is
#: small enough that a node's workers each holding one stay within ordinary per-core memory.
DEFAULT_MAX_LINE_BYTES = 256 << 20

R = TypeVar("R", bound="Record")


class Record:
    """Mixin for dataclass records stored as JSON; unknown keys from newer writers are ignored.

    ``JSON_OPTIONS`` (orjson options) is how a record class's file is laid out: indented with
    sorted keys unless the class says otherwise (and why)."""

    JSON_OPTIONS: ClassVar[int] = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=self.JSON_OPTIONS) + b"\n"

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        names = _field_names(cls)
        if data.keys() <= names:  # the usual case, tested in C: no per-key Python loop
            return cls(**data)
        return cls(**{k: v for k, v in data.items() if k in names})


#: Field names per record class, computed once: ``dataclasses.fields`` was a third of the CPU
#: of reading a done record, and planners read one per shard (122k at SlimPajama scale).
_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return names


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
    #: the raw --eos-id/--bos/--special-text/--dtype/--text-key/--source-key/--max-line-bytes, the slimtok version); a
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
    #: Lines (parquet/Arrow texts) longer than this many bytes are skipped as ``line_too_long``;
    #: roots pinned before the cap existed read as the default.
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    #: Length filters (0: off): documents of fewer characters, or fewer tokens (separators aside), are
    #: skipped as ``too_few_chars`` / ``too_few_tokens``; roots pinned before them read as off.
    min_chars: int = 0
    min_tokens: int = 0
    #: Not pinned: why each separator and the dtype were chosen (one line each), for meta and status.
    policy_notes: list[str] = field(default_factory=list)
    #: What created the root (``slimtok.protocol.kinds``: "tokenize", "mix"), set once by the record
    #: that creates it; "" in roots created before kinds were recorded (then ``root_kind`` infers it).
    kind: str = ""
    #: The transformers class that built a tokenizer without a tokenizer.json (--tokenizer-class);
    #: "" for a tokenizer.json, the only other kind a job accepts (and every root before the field).
    tokenizer_class: str = ""

    PINNED = ("manifest_sha256", "tokenizer_sha256", "vocab_size", "eos_token_id", "dtype", "text_key",
              "protocol", "source_key", "bos_token_id", "special_text", "max_line_bytes", "tokenizer_class",
              "min_chars", "min_tokens")

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
    #: the parity sample of the first ``documents`` documents (see ``DoneRecord.parity_documents``);
    #: 0 in a checkpoint of an older writer, whose resumed shard then counts from its resume on
    parity_documents: int = 0
    parity_bytes: int = 0


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
    #: The parity sample (slimtok.worker.task): documents of the shard re-encoded by the reference
    #: encoder (tokenizers, one document at a time, separators placed by hand) and compared with the
    #: ids written, the UTF-8 bytes of their text, and how many differed (always 0: a difference
    #: fails the shard). -1: not recorded (a record written before the sample existed, or a mix chunk).
    parity_documents: int = -1
    parity_bytes: int = -1
    parity_mismatches: int = -1

    def data_checksum(self) -> Checksum:
        """The checksum that every reader verifies the record's bytes against."""
        return Checksum.parse(self.checksum) if self.checksum else Checksum("sha256", self.sha256)

    def rollup_row(self, record_bytes: int) -> list[Any]:
        """The record's ``ROLLUP_COLUMNS``, as status caches them; ``record_bytes``: its file's size."""
        return [self.documents, self.tokens, self.bytes, self.source_size, self.finished_at, self.sources,
                record_bytes, self.host, self.seconds]


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
class LaunchLease(Record):
    """A running tokenize launch (``launches/<token>.json``), held from before it pins until it ends.

    ``request`` is the launch's ``request_sha256`` once it is about to read or create job.json (None
    before: such a launch has not seen job.json, and compares itself with it when it does; "" for a
    tokenizer that has no request digest, a Hub id or a transformers folder)."""

    host: str
    boot_id: str
    pid: int
    started_at: float
    request: str | None = None


#: The phases a tokenize worker's wall time is split into (its heartbeat's ``phases``): reading
#: (and decompressing) input, parsing records, encoding (and hashing, parity), writing part files
#: (with their syncs and checkpoints, and waiting for the previous shard's commit), and finding,
#: claiming or waiting for shards.
PHASES = ("read", "parse", "encode", "write", "claim_wait")


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
    #: seconds of the worker's main thread per phase of ``PHASES`` since ``started_at`` (the rest of
    #: its wall time is in no phase: start-up, loading the tokenizer); empty: older writer
    phases: dict[str, float] = field(default_factory=dict)
    #: CPU seconds of the worker's process (every thread) since ``started_at``
    cpu_seconds: float = 0.0
    #: bytes the worker read and wrote through read/write calls since ``started_at``; None: the
    #: platform does not count them (or an older writer)
    bytes_read: int | None = None
    bytes_written: int | None = None


#: What ``DoneRollup.shards`` keeps of each done record, in this order.
#: ``record_bytes`` is the size of the done record file the row was taken from: status compares it
#: with the file's current size, so a record damaged after its row was cached is noticed.
#: ``host`` and ``seconds`` (who wrote the shard, in how long) give the status page's throughput history.
ROLLUP_COLUMNS = ["documents", "tokens", "bytes", "source_size", "finished_at", "sources", "record_bytes", "host",
                  "seconds"]


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
    host: str
    seconds: float

    @classmethod
    def from_list(cls, row: list[Any]) -> RollupRow | None:
        """The row, or None when it does not hold one value per column (a foreign or older row)."""
        return cls(*row) if isinstance(row, list) and len(row) == len(ROLLUP_COLUMNS) else None

    def to_list(self) -> list[Any]:
        return [getattr(self, name) for name in ROLLUP_COLUMNS]


@dataclass
class DoneRollup(Record):
    """Cache of done records kept by ``slimtok status``: ``shards[id]`` holds ``columns`` in order."""

    #: compact: one row per done shard (hundreds of thousands), read by every ``slimtok status``
    JSON_OPTIONS: ClassVar[int] = 0

    manifest_sha256: str
    shards: dict[str, list[Any]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=lambda: list(ROLLUP_COLUMNS))

    def to_dict(self) -> dict[str, Any]:
        """The fields as they are, in order (``asdict`` would deep-copy every row: seconds at 100k shards)."""
        return {"manifest_sha256": self.manifest_sha256, "shards": self.shards, "columns": self.columns}


@dataclass
class Meta(Record):
    """``meta.json`` / ``meta.pkl``: what a trainer needs to read the combined splits.

    ``splits[name]`` (name as in SPLIT_FILES) holds ``file``, ``index``, ``shards``, ``documents``,
    ``tokens``, ``bytes``, ``sha256`` (without --no-verify), ``partial``, ``missing_shards``,
    ``skipped_lines``, ``sources`` ({source: {"documents", "tokens"}}) and, when documents were
    left out, ``removed`` ({reason: {"documents", "tokens"}}, also per source); counts are of what
    the split's file holds."""

    #: keys in the order written: ``splits`` lists the splits in the manifest's order, as readers show them
    JSON_OPTIONS: ClassVar[int] = orjson.OPT_INDENT_2

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
    #: the job's length filters (0: off); the documents they left out are among each split's skipped lines
    min_chars: int = 0
    min_tokens: int = 0
    dtype: str = ""
    text_key: str = ""
    manifest_sha256: str = ""
    backend: str = ""
    backend_verification: str = ""
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    slimtok_version: str = ""
    combined_at: str = ""


# -- dedup (paths: OutputRoot.dedup_*) ----------------------------------------------------------

DEDUP_REASONS = ("kept", "duplicate", "contamination")
DEDUP_PHASES = ("scatter", "bucket", "gather")


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


# -- records of the finishing stages ------------------------------------------------------------

@dataclass
class ConsumeJournal(Record):
    """A consuming combine of ``split`` (``OutputRoot.consume_journal``): the first ``appended`` of
    ``shards`` are in the working file, which is durable up to ``bytes``; their shard files are
    deleted or about to be."""

    split: str
    shards: list[str] = field(default_factory=list)
    appended: int = 0
    bytes: int = 0


@dataclass
class PublishIntent(Record):
    """Renames still to do in one folder (``OutputRoot.publish_intent``): ``[temporary name, target
    name]``, in order; ``partners`` are target names removed before any rename while their
    temporary file still exists; ``obsolete`` names (not targets) are removed after the renames."""

    renames: list[list[str]] = field(default_factory=list)
    partners: list[str] = field(default_factory=list)
    obsolete: list[str] = field(default_factory=list)


@dataclass
class MixRecord(Record):
    """``mix.json``: the resolved spec of ``slimtok mix`` (``MixSpec.to_dict``) and, per input name,
    its ``root``, ``source``, ``fingerprint``, ``available_tokens`` and ``documents``. Created once;
    a relaunch must find the same record (compared as data, not as bytes)."""

    #: keys in the order written: ``inputs`` follows the spec's sources, the order exports list them in
    JSON_OPTIONS: ClassVar[int] = orjson.OPT_INDENT_2

    spec: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class PackedManifest(Record):
    """``manifest.json`` of a ``slimtok export packed`` folder: what the rows are (``seq_len``
    tokens of ``dtype`` from ``source``, the tail that did not fill a row dropped) and, in
    ``files``, every part file the export wrote (``file``, ``first_row``, ``rows``, ``bytes``,
    ``sha256``): the only files a later export into the folder replaces or removes."""

    #: keys in the order written, the order a trainer's reader shows them
    JSON_OPTIONS: ClassVar[int] = orjson.OPT_INDENT_2

    format: str
    seq_len: int
    dtype: str
    split: str
    source: str
    source_sha256: str | None
    source_tokens: int
    rows: int
    dropped_tail_tokens: int
    eos_token_id: int
    tokenizer_sha256: str
    files: list[dict[str, Any]] = field(default_factory=list)
    #: the files split into equal rows under ``files[rank::ranks]`` (rows that would not are dropped)
    ranks: int = 1
    #: parquet only: a ``document_ends`` column, each row's document ends (offsets in (0, seq_len])
    document_ends: bool = False
