"""The finished roots a mix reads: per source, every document's token count and byte range in
its shard file, from the done records and document tables of one split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from ..errors import MixError
from ..manifest import read_manifest
from ..protocol import DoneRecord, JobSettings, OutputRoot, read_doc_table, read_record
from .spec import MixSpec, SourceSpec

#: job.json fields that must agree across roots (document policy included where a root records it)
SAME_SETTINGS = ("tokenizer_sha256", "dtype", "eos_token_id", "bos_token_id", "special_text")


@dataclass
class SourceDocs:
    """The documents one source may draw from, in root order: ``tokens[k]`` (separators included)
    and the bytes ``[start[k], start[k] + tokens[k] * itemsize)`` of ``paths[file[k]]``."""

    spec: SourceSpec
    tokens: np.ndarray   # uint32
    file: np.ndarray     # uint32 index into paths
    start: np.ndarray    # int64 byte offset
    paths: list[Path]
    fingerprint: str

    @property
    def available(self) -> int:
        return int(self.tokens.sum(dtype=np.int64))


def _job(root: OutputRoot, name: str) -> tuple[JobSettings, dict]:
    try:
        raw = orjson.loads(root.job.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise MixError(f"source {name!r}: job.json is missing or unreadable", root.job,
                       "is the root a finished slimtok output root?") from exc
    return JobSettings.from_dict(raw), raw


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
        if not record.table or not root.resolve(record.table).exists():
            raise MixError(f"source {name!r}: shard {e.id} has no document table", root.root,
                           "re-tokenize the root with a slimtok that writes documents/")
        records.append(record)
    return records


def load_source(spec: SourceSpec, split: str) -> tuple[SourceDocs, dict]:
    """One source's documents and its root's raw job.json."""
    root = OutputRoot(spec.root)
    job, raw = _job(root, spec.name)
    itemsize = np.dtype(job.dtype).itemsize
    fingerprint = hashlib.sha256(job.tokenizer_sha256.encode())
    tokens, files, starts, paths = [], [], [], []
    for record in _records(root, split, spec.name):
        table = read_doc_table(root.resolve(record.table))
        fingerprint.update(f"{record.shard} {record.sha256} {record.table_sha256}\n".encode())
        counts = np.asarray(table["tokens"])
        if spec.source is not None:
            label = record.source_names.index(spec.source) if spec.source in record.source_names else -1
            keep = np.asarray(table["source"]) == label
        else:
            keep = np.ones(len(counts), dtype=bool)
        ends = np.cumsum(counts, dtype=np.int64) * itemsize
        tokens.append(counts[keep])
        starts.append((ends - counts.astype(np.int64) * itemsize)[keep])
        files.append(np.full(int(keep.sum()), len(paths), dtype=np.uint32))
        paths.append(root.resolve(record.file))
    docs = SourceDocs(spec, np.concatenate(tokens).astype(np.uint32), np.concatenate(files),
                      np.concatenate(starts), paths, fingerprint.hexdigest())
    if not len(docs.tokens):
        what = f"source label {spec.source!r}" if spec.source is not None else f"split {split}"
        raise MixError(f"source {spec.name!r}: {what} has no documents", root.root)
    return docs, raw


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
