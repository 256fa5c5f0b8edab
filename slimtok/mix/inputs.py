"""The finished roots a mix reads: per source, its shards (data file, document table, the label
its rows must carry) and a way to stream their documents a piece at a time.

Nothing here holds a per-document array beyond one piece (``PIECE_ROWS`` table rows) and the
small tables kept from their check (at most ``HOLD_BYTES`` over all sources): the plan streams a
source's other tables several times instead (slimtok/mix/plan.py).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

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

#: Table bytes kept in memory after their check, over all sources: a plan then reads each of
#: those tables once instead of once per pass. Only tables of at most HOLD_TABLE_BYTES are kept:
#: small tables are where a pass's cost is the opens, not the bytes (the rows of 122k shards of 10
#: documents are 29 MB); larger tables stream as before, so their memory stays one piece.
HOLD_BYTES = 64 << 20
HOLD_TABLE_BYTES = 64 << 10

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
    """``len(tokens)`` consecutive table rows of the source (in manifest order, possibly spanning
    several shards): each row's shard (index into SourceDocs.shards), row in that shard's table,
    tokens, start (in tokens from its shard's start) and hash, and which rows the source may use."""

    shard: np.ndarray     # int64, every row
    row: np.ndarray       # int64, every row
    table: np.ndarray     # DOC_TABLE_DTYPE rows
    tokens: np.ndarray    # uint32, every row
    start: np.ndarray     # uint32, every row
    keep: np.ndarray      # bool: carries the label and was not dropped by the root's dedup
    dropped: np.ndarray   # bool: carries the label but the root's dedup dropped it

    def hashes(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The 128-bit text hashes of ``rows`` (piece-relative): (hash_hi, hash_lo), uint64."""
        return np.asarray(self.table["hash_hi"][rows]), np.asarray(self.table["hash_lo"][rows])


#: ``Shard.label`` of a shard whose every row is the source's (None), as an integer column value
_ANY_LABEL = -2


@dataclass
class SourceDocs:
    """The documents one source may draw from: its shards in manifest order, streamed by
    :meth:`pieces`. ``deduplicated``: the root has a finished `slimtok dedup`, whose drop lists
    are honoured. ``held``: the tables load_source read whole while checking them (by shard
    index), which :meth:`pieces` serves from memory instead of opening them again."""

    spec: SourceSpec
    shards: list[Shard]
    fingerprint: str
    deduplicated: bool
    held: dict[int, np.ndarray] = field(default_factory=dict)

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
        """Every row of every shard in order, ``PIECE_ROWS`` at a time, a piece gathering the rows
        of as many shards as fit (so many small tables cost a few array operations, not a few per
        shard). Tables not held are read by explicit reads, not memory maps: a streamed table does
        not stay in the process's resident memory."""
        drops = DropReader(self.spec.root) if self.deduplicated else None
        labels = np.array([_ANY_LABEL if s.label is None else s.label for s in self.shards], dtype=np.int64)
        buf, fill, segments, carry = np.empty(PIECE_ROWS, DOC_TABLE_DTYPE), 0, [], 0
        for k, shard in enumerate(self.shards):
            held = self.held.get(k)
            with (nullcontext() if held is not None else storage_for(shard.table).open_read(shard.table)) as f:
                row = 0
                while row < shard.rows:
                    n = min(PIECE_ROWS - fill, shard.rows - row)
                    if held is not None:
                        buf[fill:fill + n] = held[row:row + n]
                    else:
                        _read_rows(cast(io.BufferedReader, f), buf[fill:fill + n], shard.table)
                    segments.append((k, row, n))
                    fill, row = fill + n, row + n
                    if fill == PIECE_ROWS:
                        piece, carry = _piece(buf, segments, carry, labels, drops, self.shards)
                        yield piece
                        # a fresh buffer: the piece just yielded keeps its rows
                        buf, fill, segments = np.empty(PIECE_ROWS, DOC_TABLE_DTYPE), 0, []
        if fill:
            yield _piece(buf[:fill], segments, carry, labels, drops, self.shards)[0]


def _read_rows(f: io.BufferedReader, into: np.ndarray, path: Path) -> None:
    """Fill ``into`` with the next table rows of ``f`` (the sizes were checked: a short read means
    the table changed since)."""
    view = into.view(np.uint8).data
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise MixError(f"the document table ended after {got:,} of {len(view):,} bytes of a read: it changed "
                           "while the mix was planned", path, "run the mix again once the root is left alone")
        got += n


def _piece(table: np.ndarray, segments: list[tuple[int, int, int]], carry: int, labels: np.ndarray,
           drops: DropReader | None, shards: list[Shard]) -> tuple[Piece, int]:
    """The piece of ``table``'s rows, which are ``segments`` (shard index, its first row here, row
    count) end to end; ``carry``: the tokens of the first segment's shard before its first row.
    Also the carry of the next piece (the tokens of the last segment's shard up to this piece's end)."""
    seg = np.array(segments, dtype=np.int64).reshape(-1, 3)
    shard_of, row0, lengths = seg[:, 0], seg[:, 1], seg[:, 2]
    at = np.zeros(len(seg) + 1, dtype=np.int64)
    np.cumsum(lengths, out=at[1:])
    tokens = np.ascontiguousarray(table["tokens"])
    before = np.zeros(len(table) + 1, dtype=np.int64)  # tokens of the piece before each row
    np.cumsum(tokens, dtype=np.int64, out=before[1:])
    # tokens of each segment's shard before its first row: only the first segment may continue a shard
    offset = np.zeros(len(seg), dtype=np.int64)
    offset[0] = carry if row0[0] else 0
    shift = np.repeat(before[at[:-1]] - offset, lengths)
    start = (before[:-1] - shift).astype(np.uint32)
    shard = np.repeat(shard_of, lengths)
    row = np.arange(len(table), dtype=np.int64) - np.repeat(at[:-1] - row0, lengths)
    label = labels[shard_of]
    if (label == _ANY_LABEL).all():
        labelled = np.ones(len(table), dtype=bool)
    else:
        per_row = np.repeat(label, lengths)
        labelled = (per_row == _ANY_LABEL) | (table["source"].astype(np.int64) == per_row)
    dropped = np.zeros(len(table), dtype=bool)
    if drops is not None:
        for (k, first, n), here in zip(segments, at[:-1].tolist(), strict=True):
            rows = drops.drops(shards[k].id)[0]
            rows = rows[(rows >= first) & (rows < first + n)]
            dropped[here + rows - first] = True
        dropped &= labelled
    last = int(before[-1] - before[at[-2]] + offset[-1])
    return Piece(shard, row, table, tokens, start, labelled & ~dropped, dropped), last


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


def _records(root: OutputRoot, split: str, name: str,
             hold: int) -> tuple[list[tuple[DoneRecord, Path, Path]], dict[int, np.ndarray]]:
    """The split's done records in manifest order, each with its path and its table's, each table
    checked against its record; and the tables of at most HOLD_TABLE_BYTES read whole by that
    check (by shard index) while their bytes stay within ``hold``."""
    entries = [e for e in read_manifest(root.manifest) if e.split == split]
    if not entries:
        raise MixError(f"source {name!r}: split {split} has no shards", root.manifest)
    records: list[tuple[DoneRecord, Path, Path]] = []
    held: dict[int, np.ndarray] = {}
    folders: dict[Path, str] = {}  # real paths of the tables' folders, resolved once in this pass
    for k, e in enumerate(entries):
        done = root.done(e.id)
        record = read_record(done, DoneRecord)
        if record is None:
            raise MixError(f"source {name!r}: shard {e.id} is not finished", root.root,
                           "finish the root with `slimtok tokenize` first")
        if not record.table:
            raise MixError(f"source {name!r}: shard {e.id} has no document table", root.root,
                           "re-tokenize the root with a slimtok that writes documents/")
        table = inside(root, record.table, record, "table", folders)
        try:
            size = root.storage.stat(table).size
        except FileNotFoundError:
            raise MixError(f"source {name!r}: shard {e.id}'s document table is missing", table,
                           "restore the table, or delete the shard's done record and tokenize the root again") from None
        if size != record.table_bytes or size != record.documents * DOC_TABLE_DTYPE.itemsize:
            raise MixError(f"source {name!r}: shard {e.id}'s document table holds {size:,} bytes, but its done "
                           f"record says {record.table_bytes:,} ({record.documents:,} documents)",
                           table, "restore the table, or delete the shard's done record "
                           "and table and tokenize the root again")
        # streamed (a table may be large), before any row is planned from: rotted rows are refused;
        # a table that fits what is left of ``hold`` is kept from this read, so planning opens it no more
        blocks: list[bytes] | None = [] if size <= min(hold, HOLD_TABLE_BYTES) else None
        read_checked(table, record, record.table_bytes, Checksum("sha256", record.table_sha256),
                     None if blocks is None else blocks.append)
        if blocks is not None:
            held[k] = np.frombuffer(b"".join(blocks), dtype=DOC_TABLE_DTYPE)
            hold -= size
        if record.tokens >= MAX_SHARD_TOKENS:
            raise MixError(f"source {name!r}: shard {e.id} holds {record.tokens:,} tokens, more than a mix "
                           f"can address ({MAX_SHARD_TOKENS:,})", done,
                           "tokenize the dataset into smaller shards")
        records.append((record, done, table))
    return records, held


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


def load_source(spec: SourceSpec, split: str, hold: int = HOLD_BYTES) -> tuple[SourceDocs, dict]:
    """One source's shards and its root's raw job.json; its tables are read once, to check them,
    and small ones within ``hold`` bytes in all are kept for planning (:attr:`SourceDocs.held`)."""
    root = OutputRoot(spec.root)
    require_kind(root, "mix source")
    _, raw = _job(root, spec.name)
    fingerprint = hashlib.sha256(raw["tokenizer_sha256"].encode())
    shards = []
    records, held = _records(root, split, spec.name, hold)
    data = _data_files(root, split, [r for r, _, _ in records], spec.name)
    for (record, done, table), (file, base) in zip(records, data, strict=True):
        # a sha256 record adds its bare digest, as before checksums were named: pinned mix.json files still match
        fingerprint.update(f"{record.shard} {record.checksum or record.sha256} {record.table_sha256}\n".encode())
        label = None
        if spec.source is not None:
            label = record.source_names.index(spec.source) if spec.source in record.source_names else -1
        shards.append(Shard(record.shard, file, table, record.table_bytes // DOC_TABLE_DTYPE.itemsize, label,
                            base, record, done))
    deduplicated = root.storage.exists(root.dedup_job)
    if deduplicated:
        fingerprint.update(root.storage.read_whole(root.dedup_job))
    if spec.source is not None and all(s.label == -1 for s in shards):
        raise MixError(f"source {spec.name!r}: source label {spec.source!r} has no documents", root.root)
    return SourceDocs(spec, shards, fingerprint.hexdigest(), deduplicated, held), raw


def load_sources(spec: MixSpec) -> tuple[list[SourceDocs], JobSettings, OutputRoot]:
    """Every source of the spec, checked to share tokenizer, dtype and document policy; also the
    first root's job and root (the mix output is described by them)."""
    loaded, hold = [], HOLD_BYTES
    for source in spec.sources:  # the sources share one budget of held tables
        loaded.append(load_source(source, spec.split, hold))
        hold -= sum(t.nbytes for t in loaded[-1][0].held.values())
    first = loaded[0][1]
    for docs, raw in loaded[1:]:
        for key in SAME_SETTINGS:
            if raw.get(key) != first.get(key):
                raise MixError(f"source {docs.spec.name!r}: {key} is {raw.get(key)!r}, but source "
                               f"{spec.sources[0].name!r} has {first.get(key)!r}", Path(docs.spec.root) / "job.json",
                               "mix only roots tokenized with the same tokenizer and settings")
    return [d for d, _ in loaded], JobSettings.from_dict(first), OutputRoot(spec.sources[0].root)
