"""Test helper: give a tokenized output root the per-shard document tables, computed here.

The test BPE's eos (id 0) is only ever the separator (special strings are encoded as text), so
splitting each shard's tokens at eos gives its documents exactly; sources and hashes come from
the shard's own lines read with the reference rules (tests/helpers/corpus.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import xxhash
import zstandard

from helpers.corpus import reference_texts
from slimtok.protocol import DOC_TABLE_DTYPE, DOC_TABLE_VERSION, DoneRecord, OutputRoot, read_record, write_record


def shard_documents(root: OutputRoot, record: DoneRecord, eos: int = 0) -> list[np.ndarray]:
    tokens = np.fromfile(root.resolve(record.file), dtype=record.dtype)
    return np.split(tokens, np.flatnonzero(tokens == eos) + 1)[:-1]


def _texts_and_sources(path: Path) -> tuple[list[str], list[str]]:
    with open(path, "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    lines = [line for line in raw.split(b"\n") if reference_texts([line])]
    return reference_texts(lines), [json.loads(line)["meta"]["redpajama_set_name"] for line in lines]


def write_table(root: OutputRoot, record: DoneRecord, counts: np.ndarray, sources: list[str],
                texts: list[str]) -> DoneRecord:
    """Write ``documents/<id>.docs`` from these rows and rewrite the done record to name it (and to
    count its documents per source as the table does)."""
    names = list(dict.fromkeys(sources))
    table = np.zeros(len(counts), dtype=DOC_TABLE_DTYPE)
    table["tokens"] = counts
    table["source"] = [names.index(s) for s in sources]
    digests = [xxhash.xxh3_128_intdigest(t.encode("utf-8")) for t in texts]
    table["hash_hi"] = [d >> 64 for d in digests]
    table["hash_lo"] = [d & ((1 << 64) - 1) for d in digests]
    path = root.table(record.shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(table.tobytes())
    record.table, record.table_bytes = root.relative(path), path.stat().st_size
    record.table_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    record.source_names, record.table_version = names, DOC_TABLE_VERSION
    record.documents = len(counts)
    record.sources = {}  # what tokenize counts per source, which readers check against the table
    for n, source in zip(counts.tolist(), sources, strict=True):
        total = record.sources.setdefault(source, {"documents": 0, "tokens": 0})
        total["documents"], total["tokens"] = total["documents"] + 1, total["tokens"] + int(n)
    write_record(root.done(record.shard), record)
    return record


def add_tables(root_path: Path, manifest: Path) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    """Tables for every done shard of the root; returns {shard: (documents' ids, sources)}."""
    root = OutputRoot(root_path)
    out = {}
    for line in manifest.read_text().splitlines():
        entry = json.loads(line)
        record = read_record(root.done(entry["id"]), DoneRecord)
        if record is None:
            continue
        docs = shard_documents(root, record)
        texts, sources = _texts_and_sources(Path(entry["path"]))
        assert len(texts) == len(docs), entry["id"]
        write_table(root, record, np.array([len(d) for d in docs]), sources, texts)
        out[entry["id"]] = (docs, sources)
    return out
