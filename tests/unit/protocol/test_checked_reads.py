"""The checked reads: each format's one reader compares what it reads with what its writer
recorded before anything is built from it (document tables, drop lists, ``.idx`` files, per-source
counts, the source shards a mix copies), and validate's fixes name the command of the root's kind.
Each case damages one file so that an unchecked reader would go on and produce wrong output."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
import xxhash
import yaml

from helpers.corpus import doc_line, sample_documents, write_shard
from slimtok.combine import combine
from slimtok.data import DataError, TokenBin
from slimtok.dedup import DropReader, exclusion_for, run_dedup
from slimtok.errors import IntegrityError
from slimtok.mix import mix_main
from slimtok.protocol import DOC_TABLE_DTYPE, DedupUnitRecord, DoneRecord, OutputRoot, read_record, write_record
from slimtok.protocol.docindex import DocEnds, read_checked_index
from slimtok.protocol.doctable import read_checked_table
from slimtok.validate import validate

SHARD = "train/chunk1/example_train_1"


def _dataset(ds: Path) -> None:
    """Two train shards (two sources, a repeat inside the first) and a validation shard."""
    docs = sample_documents(24, seed=5)
    write_shard(ds / "train/chunk1/example_train_0.jsonl.zst",
                [doc_line(t, "a" if i % 3 else "b") for i, t in enumerate(docs[:8] + docs[:1])])
    write_shard(ds / "train/chunk1/example_train_1.jsonl.zst",
                [doc_line(t, "a" if i % 2 else "b") for i, t in enumerate(docs[8:16])])
    write_shard(ds / "validation/chunk1/example_holdout_0.jsonl.zst", [doc_line(t) for t in docs[16:24]])


@pytest.fixture
def root(tokenized_root, bpe_tokenizer) -> Path:
    return tokenized_root(_dataset, bpe_tokenizer, "--dtype", "uint32", "--quiet", "--spawn-workers", "1").root


def _mix_spec(source: Path, folder: Path) -> Path:
    path = folder / "mix.yaml"
    path.write_text(yaml.safe_dump({"seed": 3, "shuffle": "document", "chunk_documents": 4,
                                    "sources": [{"name": "r", "root": str(source), "tokens": 600}]}))
    return path


def test_an_edited_per_source_count_is_refused_not_copied_into_meta(root):
    """The record's per-source counts must equal what its table holds (computed here with
    np.bincount); one edited count is refused naming the done record, and meta.json is untouched."""
    out = OutputRoot(root)
    record = read_record(out.done(SHARD), DoneRecord)
    table = np.fromfile(out.resolve(record.table), dtype=DOC_TABLE_DTYPE)
    counts = np.bincount(table["source"], minlength=len(record.source_names))
    assert {n: record.sources[n]["documents"] for n in record.source_names} == \
        {n: int(counts[i]) for i, n in enumerate(record.source_names)}
    assert read_checked_table(out.resolve(record.table), record, out.done(SHARD)).tobytes() == table.tobytes()
    name = record.source_names[0]
    record.sources[name]["tokens"] += 7
    write_record(out.done(SHARD), record)
    with pytest.raises(IntegrityError, match=f"^{out.done(SHARD)}: counts source '{name}' as .* but the shard's"):
        combine(root, log=lambda _: None)
    assert not (root / "meta.json").exists()


def test_a_rotted_table_is_refused_by_combine_dedup_and_mix(root, tmp_path):
    out = OutputRoot(root)
    path = out.resolve(read_record(out.done(SHARD), DoneRecord).table)
    data = bytearray(path.read_bytes())
    data[8] ^= 0x10  # a hash byte: sizes and token sums still agree with the record
    path.write_bytes(bytes(data))
    for run in (lambda: combine(root, log=lambda _: None), lambda: run_dedup(root, workers=1),
                lambda: mix_main(_mix_spec(root, tmp_path), tmp_path / "mixed", log=lambda _: None)):
        with pytest.raises(Exception, match=str(path)) as caught:
            run()
        assert "sha256 does not match" in str(caught.value) or "corrupted after it was written" in str(caught.value)
    assert not (tmp_path / "mixed" / "train.bin").exists()


def test_a_rotted_drop_list_is_refused(root):
    run_dedup(root, workers=1)
    out = OutputRoot(root)
    record = next(r for k in range(8) if (r := read_record(out.dedup_unit_done("gather", k), DedupUnitRecord))
                  and r.rows)
    path = out.resolve(record.file)
    drops = bytearray(path.read_bytes())
    drops[0] ^= 0x01  # the first drop's order moves by one document: another document would be left out
    path.write_bytes(bytes(drops))
    with pytest.raises(IntegrityError, match=f"^{path}: sha256 does not match its unit's done record"):
        DropReader(root).drops("train/chunk1/example_train_0")
    with pytest.raises(IntegrityError, match=str(path)):
        combine(root, exclude=exclusion_for(root), log=lambda _: None)


def test_the_index_checksum_is_recorded_and_a_damaged_index_is_never_served(root, tmp_path):
    """meta.json's index_checksum is xxh3-128 of train.idx's bytes (computed here); an index whose
    one end moved within its neighbours (still increasing, still the right size) is refused."""
    combine(root, log=lambda _: None)
    meta = orjson.loads((root / "meta.json").read_bytes())["splits"]["train"]
    idx = (root / "train.idx").read_bytes()
    assert meta["index_checksum"] == f"xxh3-128:{xxhash.xxh3_128_hexdigest(idx)}"
    ends = np.frombuffer(idx, dtype="<u8").copy()
    k = int(np.flatnonzero(np.diff(ends) > 2)[0])
    ends[k] += 1  # still strictly increasing: only the checksum can tell
    ends.tofile(root / "train.idx")
    with pytest.raises(DataError, match=f"^{root / 'train.idx'}: xxh3-128 does not match meta.json's index_checksum"):
        TokenBin(root / "train.bin")
    report = validate(root, samples=4, block_size=16, log=lambda _: None)
    assert not report.ok and any(c.name == "train.bin: document index" and not c.ok for c in report.checks)
    (root / "train.idx").write_bytes(idx[:-3])  # not whole entries: refused, never mapped short
    with pytest.raises(DataError, match=f"^{root / 'train.idx'}: {len(idx) - 3:,} bytes, but meta.json records"):
        TokenBin(root / "train.bin")
    failed = [c for c in validate(root, samples=4, block_size=16, log=lambda _: None).checks if not c.ok]
    assert {c.name for c in failed} == {"train.bin: document index", "train.bin: sampler dry-run"}, failed
    assert all(str(root / "train.idx") in c.detail for c in failed)


def test_doc_ends_hashes_what_it_writes_and_the_checked_read_checks_structure_without_a_checksum(tmp_path):
    path = tmp_path / "x.idx"
    with path.open("wb") as f:
        ends = DocEnds(f)
        ends.add([3, 4])
        ends.add([5])
    assert ends.checksum == f"xxh3-128:{xxhash.xxh3_128_hexdigest(path.read_bytes())}"
    assert DocEnds(None).checksum == "xxh3-128:" + xxhash.xxh3_128_hexdigest(b"")
    assert read_checked_index(path, 3, 12, ends.checksum, "fix").tolist() == [3, 7, 12]
    np.array([3, 2, 12], dtype="<u8").tofile(path)
    with pytest.raises(IntegrityError, match="do not strictly increase"):
        read_checked_index(path, 3, 12, None, "fix")
    with pytest.raises(IntegrityError, match="records 4 documents"):
        read_checked_index(path, 4, 12, None, "fix")


def test_mix_refuses_a_source_shard_whose_bytes_rotted(root, tmp_path):
    """Before, the mix copied the rotted bytes and recorded a fresh checksum over them, so validate
    of the mix passed; now the shard is checked against its done record before any copy."""
    out = OutputRoot(root)
    data = out.resolve(read_record(out.done(SHARD), DoneRecord).file)
    rotted = bytearray(data.read_bytes())
    rotted[5] ^= 0x04
    data.write_bytes(bytes(rotted))
    with pytest.raises(IntegrityError, match=f"^{data}: its .* bytes do not match the sha256 of .*{SHARD}.json"):
        mix_main(_mix_spec(root, tmp_path), tmp_path / "mixed", log=lambda _: None)
    assert not (tmp_path / "mixed" / "train.bin").exists() and not list((tmp_path / "mixed" / "done").rglob("*.json"))


def test_a_finished_mix_rebuilds_its_missing_or_changed_index(root, tmp_path):
    spec = _mix_spec(root, tmp_path)
    mixed = tmp_path / "mixed"
    mix_main(spec, mixed, log=lambda _: None)
    want = (mixed / "train.idx").read_bytes()
    assert orjson.loads((mixed / "meta.json").read_bytes())["splits"]["train"]["index_checksum"] == \
        f"xxh3-128:{xxhash.xxh3_128_hexdigest(want)}"
    (mixed / "train.idx").unlink()
    mix_main(spec, mixed, log=lambda _: None)
    assert (mixed / "train.idx").read_bytes() == want
    (mixed / "train.idx").write_bytes(want[:-8])
    mix_main(spec, mixed, log=lambda _: None)
    assert (mixed / "train.idx").read_bytes() == want
    assert validate(mixed, samples=4, block_size=16, log=lambda _: None).ok


def test_validate_of_a_mix_names_the_mix_command_in_its_fixes(root, tmp_path):
    spec = _mix_spec(root, tmp_path)
    mixed = tmp_path / "mixed"
    mix_main(spec, mixed, log=lambda _: None)
    (mixed / "train.idx").unlink()
    lines: list[str] = []
    assert not validate(mixed, samples=4, block_size=16, log=lines.append).ok
    failed = [line for line in lines if line.startswith("[FAIL]")]
    assert failed and all(f"slimtok mix SPEC --output-root {mixed}" in line for line in failed), failed
    assert not any("combine" in line for line in failed)
    shutil.rmtree(mixed)
