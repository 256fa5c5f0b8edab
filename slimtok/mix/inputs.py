"""The finished roots a mix reads: per source, its shards (data file, document table, the label
its rows must carry) and a way to stream their documents a piece at a time.

Nothing here holds a per-document array beyond one piece (``PIECE_ROWS`` table rows): the plan
streams a source's tables several times instead (slimtok/mix/plan.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from ..dedup.drops import DropReader
from ..errors import MixError
from ..finished import check_range, combined_mismatch, inside, plan_split, read_checked, read_meta
from ..job import tokenizer_fingerprint
from ..manifest import read_manifest
from ..protocol import (
    DOC_TABLE_DTYPE,
    Checksum,
    DoneRecord,
    JobSettings,
    OutputRoot,
    read_record,
    require_kind,
    storage_for,
)
from .spec import MixSpec, SourceSpec

#: job.json fields that must agree across roots (document policy included where a root records it)
SAME_SETTINGS = ("tokenizer_sha256", "dtype", "eos_token_id", "bos_token_id", "special_text")

#: Table rows read at once while streaming (24 bytes each: a 6 MB buffer).
PIECE_ROWS = 1 << 18

#: A document's start is kept in tokens as uint32 (see plan.PICK_DTYPE), so a shard holds fewer.
MAX_SHARD_TOKENS = 1 << 32


@dataclass
class Shard:
    """One shard of a source: ``rows`` table rows; ``label`` is the ``source`` column value its
    documents must carry (None: every row; -1: the shard has none of the source's label). Its
    tokens are the bytes of ``file`` from ``base`` on: its own data file (base 0), or, once the
    root's split was consumed or cleaned, the combined split file at the shard's offset."""

    id: str
    file: Path
    table: Path
    rows: int
    label: int | None
    base: int = 0
    #: the shard's done record (and its path): what the bytes at ``file[base:base + record.bytes]``
    #: must hash to before a chunk copies any of them (:meth:`SourceDocs.verify`)
    record: DoneRecord | None = None
    done: Path | None = None


@dataclass
class Piece:
    """Consecutive table rows ``[first, first + len(keep))`` of one shard: every row's tokens,
    start (in tokens from the shard's start) and hash, and which rows the source may use."""

    shard: int            # index into SourceDocs.shards
    first: int
    table: np.ndarray     # DOC_TABLE_DTYPE rows
    tokens: np.ndarray    # uint32, every row
    start: np.ndarray     # uint32, every row
    keep: np.ndarray      # bool: carries the label and was not dropped by the root's dedup
    dropped: np.ndarray   # bool: carries the label but the root's dedup dropped it

    def hashes(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The 128-bit text hashes of ``rows`` (piece-relative): (hash_hi, hash_lo), uint64."""
        return np.asarray(self.table["hash_hi"][rows]), np.asarray(self.table["hash_lo"][rows])


@dataclass
class SourceDocs:
    """The documents one source may draw from: its shards in manifest order, streamed by
    :meth:`pieces`. ``deduplicated``: the root has a finished `slimtok dedup`, whose drop lists
    are honoured."""

    spec: SourceSpec
    shards: list[Shard]
    fingerprint: str
    deduplicated: bool

    @property
    def paths(self) -> list[Path]:
        return [s.file for s in self.shards]

    @property
    def bases(self) -> list[int]:
        return [s.base for s in self.shards]

    def verify(self, k: int) -> None:
        """Check shard ``k``'s token bytes against its done record's checksum (one read), so a mix
        never copies, and records a fresh checksum over, bytes that changed after tokenize wrote them."""
        shard = self.shards[k]
        assert shard.record is not None and shard.done is not None, "load_source records every shard"
        check_range(shard.file, shard.base, shard.record.bytes, shard.record.data_checksum(), shard.done)

    def pieces(self) -> Iterator[Piece]:
        """Every shard's rows in order, ``PIECE_ROWS`` at a time (explicit reads, not memory
        maps: a streamed table does not stay in the process's resident memory)."""
        drops = DropReader(self.spec.root) if self.deduplicated else None
        for k, shard in enumerate(self.shards):
            dropped_rows = drops.drops(shard.id)[0] if drops is not None else None
            offset = 0
            with storage_for(shard.table).open_read(shard.table) as f:
                for first in range(0, shard.rows, PIECE_ROWS):
                    table = np.fromfile(f, dtype=DOC_TABLE_DTYPE, count=min(PIECE_ROWS, shard.rows - first))
                    tokens = np.ascontiguousarray(table["tokens"])
                    ends = np.cumsum(tokens, dtype=np.int64) + offset
                    offset = int(ends[-1])
                    start = (ends - tokens).astype(np.uint32)
                    labelled = (np.ones(len(table), dtype=bool) if shard.label is None
                                else np.asarray(table["source"]) == shard.label)
                    dropped = np.zeros(len(table), dtype=bool)
                    if dropped_rows is not None and len(dropped_rows):
                        inside = dropped_rows[(dropped_rows >= first) & (dropped_rows < first + len(table))]
                        dropped[inside - first] = True
                        dropped &= labelled
                    yield Piece(k, first, table, tokens, start, labelled & ~dropped, dropped)


def _job(root: OutputRoot, name: str) -> tuple[JobSettings, dict]:
    try:
        raw = orjson.loads(root.storage.read_whole(root.job))
    except (OSError, orjson.JSONDecodeError) as exc:
        raise MixError(f"source {name!r}: job.json is missing or unreadable", root.job,
                       "is the root a finished slimtok output root?") from exc
    job = JobSettings.from_dict(raw)
    if not raw.get("tokenizer_sha256"):  # pinned from the JSON and no worker has recorded it yet
        raw["tokenizer_sha256"] = tokenizer_fingerprint(root, job)
        if not raw["tokenizer_sha256"]:
            raise MixError(f"source {name!r}: job.json records no tokenizer fingerprint and the root's tokenizer "
                           "copy does not load, so its tokens cannot be matched with the other sources'",
                           root.tokenizer_file, "restore tokenizer/ from the tokenizer the root was tokenized with")
        job = JobSettings.from_dict(raw)
    return job, raw


def _records(root: OutputRoot, split: str, name: str) -> list[DoneRecord]:
    entries = [e for e in read_manifest(root.manifest) if e.split == split]
    if not entries:
        raise MixError(f"source {name!r}: split {split} has no shards", root.manifest)
    records = []
    for e in entries:
        record = read_record(root.done(e.id), DoneRecord)
        if record is None:
            raise MixError(f"source {name!r}: shard {e.id} is not finished", root.root,
                           "finish the root with `slimtok tokenize` first")
        if not record.table:
            raise MixError(f"source {name!r}: shard {e.id} has no document table", root.root,
                           "re-tokenize the root with a slimtok that writes documents/")
        if not root.storage.exists(root.resolve(record.table)):
            raise MixError(f"source {name!r}: shard {e.id}'s document table is missing", root.resolve(record.table),
                           "restore the table, or delete the shard's done record and tokenize the root again")
        size = root.storage.stat(root.resolve(record.table)).size
        if size != record.table_bytes or size != record.documents * DOC_TABLE_DTYPE.itemsize:
            raise MixError(f"source {name!r}: shard {e.id}'s document table holds {size:,} bytes, but its done "
                           f"record says {record.table_bytes:,} ({record.documents:,} documents)",
                           root.resolve(record.table), "restore the table, or delete the shard's done record "
                           "and table and tokenize the root again")
        # streamed (a table may be large), before any row is planned from: rotted rows are refused
        read_checked(inside(root, record.table, record, "table"), record, record.table_bytes,
                     Checksum("sha256", record.table_sha256), None)
        if record.tokens >= MAX_SHARD_TOKENS:
            raise MixError(f"source {name!r}: shard {e.id} holds {record.tokens:,} tokens, more than a mix "
                           f"can address ({MAX_SHARD_TOKENS:,})", root.done(e.id),
                           "tokenize the dataset into smaller shards")
        records.append(record)
    return records


def _data_files(root: OutputRoot, split: str, records: list[DoneRecord], name: str) -> list[tuple[Path, int]]:
    """(file, byte offset) of each shard's tokens: its data file, or, when the shard files are gone
    because the split was combined with --consume or cleaned, its range of the combined file
    (checked against the done records first, as a repeated combine checks it)."""
    files = [root.resolve(r.file) for r in records]
    missing = [f for f in files if not root.storage.exists(f)]
    if not missing:
        return [(f, 0) for f in files]
    meta = read_meta(root)
    entry = meta.splits.get(split) if meta is not None else None
    if not entry or not entry.get("consumed"):
        raise MixError(f"source {name!r}: the tokens of {len(missing)} finished shard(s) are missing, e.g. "
                       f"{missing[0]}, and split {split} was not combined with --consume or cleaned",
                       missing[0], "restore the shard files, or tokenize the root again")
    plan = plan_split(root, read_manifest(root.manifest, check_files=False), split)
    if (why := combined_mismatch(root, plan, entry, checksums=False)) is not None:
        raise MixError(f"source {name!r}: split {split} was consumed into {root.combined(split)}, but {why}",
                       root.combined(split), "restore the combined file, or tokenize the root again")
    # the cumulative sums are one longer than the shards (the split's size last): strict=False drops it
    offsets = dict(zip((r.shard for r in plan.done), np.cumsum([0] + [r.bytes for r in plan.done]).tolist(),
                       strict=False))
    return [(root.combined(split), offsets[r.shard]) for r in records]


def load_source(spec: SourceSpec, split: str) -> tuple[SourceDocs, dict]:
    """One source's shards and its root's raw job.json (no table is read here)."""
    root = OutputRoot(spec.root)
    require_kind(root, "mix source")
    _, raw = _job(root, spec.name)
    fingerprint = hashlib.sha256(raw["tokenizer_sha256"].encode())
    shards = []
    records = _records(root, split, spec.name)
    data = _data_files(root, split, records, spec.name)
    for record, (file, base) in zip(records, data, strict=True):
        # a sha256 record adds its bare digest, as before checksums were named: pinned mix.json files still match
        fingerprint.update(f"{record.shard} {record.checksum or record.sha256} {record.table_sha256}\n".encode())
        label = None
        if spec.source is not None:
            label = record.source_names.index(spec.source) if spec.source in record.source_names else -1
        shards.append(Shard(record.shard, file, root.resolve(record.table),
                            record.table_bytes // DOC_TABLE_DTYPE.itemsize, label, base, record,
                            root.done(record.shard)))
    deduplicated = root.storage.exists(root.dedup_job)
    if deduplicated:
        fingerprint.update(root.storage.read_whole(root.dedup_job))
    if spec.source is not None and all(s.label == -1 for s in shards):
        raise MixError(f"source {spec.name!r}: source label {spec.source!r} has no documents", root.root)
    return SourceDocs(spec, shards, fingerprint.hexdigest(), deduplicated), raw


def load_sources(spec: MixSpec) -> tuple[list[SourceDocs], JobSettings, OutputRoot]:
    """Every source of the spec, checked to share tokenizer, dtype and document policy; also the
    first root's job and root (the mix output is described by them)."""
    loaded = [load_source(s, spec.split) for s in spec.sources]
    first = loaded[0][1]
    for docs, raw in loaded[1:]:
        for key in SAME_SETTINGS:
            if raw.get(key) != first.get(key):
                raise MixError(f"source {docs.spec.name!r}: {key} is {raw.get(key)!r}, but source "
                               f"{spec.sources[0].name!r} has {first.get(key)!r}", Path(docs.spec.root) / "job.json",
                               "mix only roots tokenized with the same tokenizer and settings")
    return [d for d, _ in loaded], JobSettings.from_dict(first), OutputRoot(spec.sources[0].root)
