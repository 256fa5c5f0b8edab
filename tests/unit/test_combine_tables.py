"""combine and validate driven by document tables, documents left out by an exclusion callable,
legacy roots without tables, and records that point where they must not."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import slimtok
from helpers.corpus import doc_line, sample_documents, write_shard
from helpers.tables import add_tables, write_table
from slimtok.combine import Exclusion, combine
from slimtok.errors import CombineError, IntegrityError, ValidateError
from slimtok.protocol import DoneRecord, OutputRoot, read_record, write_record
from slimtok.validate import validate

SOURCES = ("A", "B", "C")


def _dataset(folder: Path) -> Path:
    for i in range(3):
        docs = sample_documents(12, seed=50 + i)
        write_shard(folder / f"train/chunk1/example_train_{i}.jsonl.zst",
                    [doc_line(d, SOURCES[(i + k) % 3]) for k, d in enumerate(docs)])
    write_shard(folder / "validation/chunk1/example_holdout_0.jsonl.zst",
                [doc_line(d, "A") for d in sample_documents(4, seed=60)])
    return folder


@pytest.fixture(scope="module")
def tokenized(tokenized_root, bpe_tokenizer):
    """(root with tables, manifest, {shard: (documents, sources)}), combined once."""
    run = tokenized_root(_dataset, bpe_tokenizer, "--dtype", "uint32", "--quiet", "--spawn-workers", "1")
    legacy, manifest = run.root, run.manifest
    root = run.work / "with-tables"
    shutil.copytree(legacy, root)
    docs = add_tables(root, manifest)
    _strip_tables(legacy)
    return root, legacy, manifest, docs


def _strip_tables(root):
    """Make ``root`` what slimtok wrote before document tables: done records without ``table``."""
    out = OutputRoot(root)
    for path in (root / "done").rglob("*.json"):
        record = read_record(path, DoneRecord)
        record.table, record.table_bytes, record.table_sha256, record.source_names = "", 0, "", []
        record.table_version = 0
        write_record(path, record)
    shutil.rmtree(out.root / "documents")


def _train_ids(manifest, docs):
    return [json.loads(x)["id"] for x in manifest.read_text().splitlines() if json.loads(x)["split"] == "train"]


def test_tables_give_the_same_bytes_and_the_index_from_their_counts(tokenized, tmp_path):
    root, legacy, manifest, docs = tokenized
    logs = []
    meta = combine(root, log=logs.append)
    assert not any("no document table" in line for line in logs)
    legacy_copy = tmp_path / "legacy"
    shutil.copytree(legacy, legacy_copy)
    legacy_logs = []
    legacy_meta = combine(legacy_copy, log=legacy_logs.append)
    assert sum("no document table" in line for line in legacy_logs) == 2  # once per split
    assert legacy_meta.splits["train"]["document_ends"].startswith("eos scan")
    assert "document_ends" not in meta.splits["train"]
    want = [d for shard in _train_ids(manifest, docs) for d in docs[shard][0]]
    assert (root / "train.bin").read_bytes() == np.concatenate(want).astype("<u4").tobytes()
    assert (root / "train.bin").read_bytes() == (legacy_copy / "train.bin").read_bytes()
    assert np.fromfile(root / "train.idx", "<u8").tolist() == np.cumsum([len(d) for d in want]).tolist()
    assert (root / "train.idx").read_bytes() == (legacy_copy / "train.idx").read_bytes()
    assert validate(root, samples=8, block_size=64, log=lambda s: None).ok
    legacy_log = []
    assert validate(legacy_copy, samples=8, block_size=64, log=legacy_log.append).ok
    assert any("without document tables" in s for s in legacy_log)


def test_eos_inside_a_document_is_text_when_the_table_says_so(tokenized, tmp_path):
    """A table that makes documents 0 and 1 of a shard one document (as an eos produced by text
    would): combine and validate follow the table; an eos scan could not."""
    root, _, manifest, docs = tokenized
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    shard = _train_ids(manifest, docs)[1]
    own, sources = docs[shard]
    counts = [len(own[0]) + len(own[1])] + [len(d) for d in own[2:]]
    record = read_record(OutputRoot(copy).done(shard), DoneRecord)
    write_table(OutputRoot(copy), record, np.array(counts), sources[1:], ["merged"] * len(counts))
    meta = combine(copy, log=lambda s: None)
    ends = np.fromfile(copy / "train.idx", "<u8")
    assert meta.splits["train"]["documents"] == len(ends) == sum(len(docs[s][0]) for s in docs
                                                                 if s.startswith("train")) - 1
    lines = []
    assert validate(copy, samples=8, block_size=64, log=lines.append).ok, lines
    assert any("[ok] train.bin: separators: 0 of" in s for s in lines)


def test_an_exclusion_leaves_documents_out_and_meta_counts_them(tokenized, tmp_path):
    root, _, manifest, docs = tokenized
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    ids = _train_ids(manifest, docs)
    drop = {ids[0]: ([1, 3, 5], ["duplicate", "duplicate", "contamination"]), ids[2]: ([0, 11], ["duplicate"] * 2)}

    def exclude(record):
        if record.shard not in drop:
            return None
        indices, reasons = drop[record.shard]
        return Exclusion(np.array(indices), reasons)

    meta = combine(copy, exclude=exclude, log=lambda s: None)
    kept, removed, by_source = [], {}, {}
    for shard in ids:
        own, sources = docs[shard]
        gone = dict(zip(*drop.get(shard, ([], [])), strict=True))
        for k, (d, source) in enumerate(zip(own, sources, strict=True)):
            if k in gone:
                r = removed.setdefault(gone[k], {"documents": 0, "tokens": 0})
                s = by_source.setdefault(source, {}).setdefault(gone[k], {"documents": 0, "tokens": 0})
                for c in (r, s):
                    c["documents"] += 1
                    c["tokens"] += len(d)
            else:
                kept.append(d)
    assert (copy / "train.bin").read_bytes() == np.concatenate(kept).astype("<u4").tobytes()
    assert np.fromfile(copy / "train.idx", "<u8").tolist() == np.cumsum([len(d) for d in kept]).tolist()
    info = meta.splits["train"]
    assert info["removed"] == removed and info["documents"] == len(kept)
    assert info["tokens"] == sum(len(d) for d in kept)
    for source, reasons in by_source.items():
        assert info["sources"][source]["removed"] == reasons
    kept_by_source = {}
    for shard in ids:
        gone = set(drop.get(shard, ([], []))[0])
        for k, (d, source) in enumerate(zip(*docs[shard], strict=True)):
            if k not in gone:
                c = kept_by_source.setdefault(source, [0, 0])
                c[0] += 1
                c[1] += len(d)
    assert {s: [v["documents"], v["tokens"]] for s, v in info["sources"].items()} == kept_by_source
    assert json.loads((copy / "meta.json").read_text())["splits"]["train"]["removed"] == removed
    assert validate(copy, samples=8, block_size=64, log=lambda s: None).ok


def test_a_table_that_does_not_sum_to_its_shard_is_refused(tokenized, tmp_path):
    root, _, manifest, docs = tokenized
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    shard = _train_ids(manifest, docs)[2]
    own, sources = docs[shard]
    record = read_record(OutputRoot(copy).done(shard), DoneRecord)
    write_table(OutputRoot(copy), record, np.array([len(d) for d in own[:-1]] + [len(own[-1]) - 1]), sources,
                ["x"] * len(own))
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    with pytest.raises(IntegrityError, match=f"{shard}.docs: its rows hold .* tokens, but its done record says"):
        combine(copy, log=lambda s: None)
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before  # no temp file left


@pytest.mark.parametrize("field", ["file", "table"])
def test_a_done_record_naming_a_file_outside_the_root_is_refused(tokenized, tmp_path, field):
    root, _, manifest, docs = tokenized
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    shard = _train_ids(manifest, docs)[0]
    record = read_record(OutputRoot(copy).done(shard), DoneRecord)
    outside = tmp_path / "elsewhere.bin"
    shutil.copy(copy / getattr(record, field), outside)
    setattr(record, field, "../elsewhere.bin")
    write_record(OutputRoot(copy).done(shard), record)
    with pytest.raises(CombineError, match="outside the output root"):
        combine(copy, log=lambda s: None)


def test_validate_before_combine_says_to_combine(tokenized, tmp_path):
    _, legacy, _, _ = tokenized
    copy = tmp_path / "root"
    shutil.copytree(legacy, copy)
    with pytest.raises(ValidateError, match="slimtok combine"):
        validate(copy, log=lambda s: None)
    proc = slimtok("validate", "--output-root", copy, check=False)
    assert proc.returncode == 2 and "run `slimtok combine --output-root" in proc.stderr
    (copy / "meta.json").write_text('{"tokenizer": ')  # torn: combine rewrites it
    lines = []
    combine(copy, log=lines.append)
    assert any("cannot be parsed" in s for s in lines)
    assert validate(copy, samples=4, block_size=64, log=lambda s: None).ok
