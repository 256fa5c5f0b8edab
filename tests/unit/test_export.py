"""Outputs for trainers: the document index, the Megatron round trip through megatron-core's own
reader, and packed rows against the combined stream."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers.cli import PIPELINE_TOKENIZE, slimtok
from helpers.corpus import reference_ids
from helpers.trainers import (
    MDS_NOT_INSTALLABLE,
    datatrove_folder_dataset,
    litdata_blocks,
    litdata_items,
    mds_samples,
    megatron_dataset,
    torchtitan_documents,
)


@pytest.fixture(scope="module", params=["uint32", "uint16"])
def combined(request, tokenized_root, bpe_tokenizer):
    """(output root, reference ids of train, reference documents of train) for each dtype."""
    run = tokenized_root({"train_shards": 3, "docs_per_shard": 15, "holdout_docs": 5}, bpe_tokenizer,
                         *PIPELINE_TOKENIZE, "--dtype", request.param, combine=True)
    ref = reference_ids(run.manifest, bpe_tokenizer / "tokenizer.json", 0, "train")
    docs = np.split(ref, np.flatnonzero(ref == 0) + 1)[:-1]  # the reference puts eos only after documents
    assert len(docs) == 45
    return run.root, ref, docs, request.param


def test_document_index_holds_every_documents_end(combined):
    root, ref, docs, dtype = combined
    ends = np.fromfile(root / "train.idx", dtype="<u8")
    assert np.array_equal(ends, np.cumsum([len(d) for d in docs]))
    meta = json.loads((root / "meta.json").read_text())
    assert meta["splits"]["train"]["index"] == "train.idx"
    assert (root / "val.idx").stat().st_size == 8 * meta["splits"]["validation"]["documents"]


def test_megatron_round_trip_with_megatron_core_reader(combined):
    root, ref, docs, dtype = combined
    slimtok("export", "megatron", "--output-root", root, "--prefix", "slim")
    prefix = root / "megatron" / "slim_train_text_document"
    ds = megatron_dataset(prefix)
    assert len(ds) == len(docs)
    assert np.array_equal(ds.document_indices, np.arange(len(docs) + 1))
    assert np.array_equal(ds.sequence_lengths, [len(d) for d in docs])
    for i, doc in enumerate(docs):
        assert np.array_equal(ds[i].astype(np.int64), doc)
    assert ds.index.dtype == (np.uint16 if dtype == "uint16" else np.int32)
    # the token data was linked, not copied a second time
    assert (root / "megatron/slim_train_text_document.bin").stat().st_ino == (root / "train.bin").stat().st_ino
    val = megatron_dataset(root / "megatron" / "slim_val_text_document")
    assert len(val) == json.loads((root / "meta.json").read_text())["splits"]["validation"]["documents"]


def test_megatron_export_to_an_absolute_prefix(combined, tmp_path):
    root, ref, docs, _ = combined
    slimtok("export", "megatron", "--output-root", root, "--prefix", tmp_path / "mg" / "corpus", "--splits", "train")
    ds = megatron_dataset(tmp_path / "mg" / "corpus_train_text_document")
    assert np.array_equal(np.concatenate([ds[i] for i in range(len(ds))]).astype(np.int64), ref)
    assert not (tmp_path / "mg" / "corpus_val_text_document.bin").exists()


def _check_manifest(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    for f in manifest["files"]:
        assert hashlib.sha256((folder / f["file"]).read_bytes()).hexdigest() == f["sha256"]
    return manifest


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_packed_rows_equal_the_stream(combined, fmt, tmp_path):
    root, ref, docs, dtype = combined
    seq_len = 257
    slimtok("export", "packed", "--output-root", root, "--seq-len", seq_len, "--format", fmt, "--rows-per-file", 7)
    folder = root / "packed" / f"train-{seq_len}-{fmt}"
    manifest = _check_manifest(folder)
    rows = []
    for f in manifest["files"]:
        if fmt == "parquet":
            part = np.array(pq.read_table(folder / f["file"]).column("input_ids").to_pylist())
        else:
            part = np.load(folder / f["file"])
        assert part.shape == (f["rows"], seq_len)
        rows.append(part)
    got = np.concatenate(rows)
    n = len(ref) // seq_len
    assert manifest["rows"] == n and manifest["dropped_tail_tokens"] == len(ref) - n * seq_len
    assert len(manifest["files"]) == -(-n // 7)
    assert np.array_equal(got.astype(np.int64), ref[:n * seq_len].reshape(n, seq_len))
    # deterministic: a second export elsewhere has the same bytes
    slimtok("export", "packed", "--output-root", root, "--seq-len", seq_len, "--format", fmt, "--rows-per-file", 7,
            "--output-dir", tmp_path / "again")
    again = _check_manifest(tmp_path / "again")
    assert [f["sha256"] for f in again["files"]] == [f["sha256"] for f in manifest["files"]]


def test_export_before_combine_is_refused_with_the_reason(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    proc = slimtok("export", "megatron", "--output-root", tmp_path, "--prefix", "p", check=False)
    assert proc.returncode == 2 and "no combined split" in proc.stderr


def test_packed_deletes_only_parts_its_earlier_manifest_recorded(combined, tmp_path):
    """Foreign files beside a packed export survive it byte for byte: ``part-*`` names no manifest
    lists are neither removed (a shorter re-export) nor replaced (refused, naming the file); the
    parts a longer earlier export recorded and a shorter one no longer lists are removed."""
    root, ref, docs, dtype = combined
    out = tmp_path / "out"
    out.mkdir()
    foreign = {out / "part-00099.parquet": b"another tool's file", out / "notes.txt": b"mine"}
    for path, payload in foreign.items():
        path.write_bytes(payload)

    def export(rows_per_file: int, check: bool = True):
        return slimtok("export", "packed", "--output-root", root, "--seq-len", 64, "--rows-per-file", rows_per_file,
                       "--output-dir", out, check=check)

    export(40)
    longer = _check_manifest(out)
    export(100_000)  # one file now: the earlier parts 1.. are recorded and go, the foreign ones stay
    shorter = _check_manifest(out)
    assert 1 < len(longer["files"]) < 99 and [f["file"] for f in shorter["files"]] == ["part-00000.parquet"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", "part-00000.parquet",
                                                            "part-00099.parquet", "notes.txt"])
    assert all(path.read_bytes() == payload for path, payload in foreign.items())
    # a part name the new export needs, held by a file no manifest recorded: refused, nothing changed
    (out / "manifest.json").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = export(40, check=False)
    assert proc.returncode == 2 and f"{out}: holds part-00000.parquet, which no earlier export" in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a manifest.json that is not a packed export's is not replaced either
    (out / "part-00000.parquet").unlink()
    (out / "manifest.json").write_text('{"mine": true}\n')
    proc = export(100_000, check=False)
    assert proc.returncode == 2 and f"{out / 'manifest.json'}: is not the manifest of a packed export" in proc.stderr
    assert (out / "manifest.json").read_text() == '{"mine": true}\n'


def _positions(ends: np.ndarray, start: int, length: int) -> np.ndarray:
    """Independent: each token's offset in its document, counted from the window's start at most."""
    g = np.arange(start, start + length)
    doc_start = np.concatenate([[0], ends])[np.searchsorted(ends, g, side="right")]
    return g - np.maximum(doc_start, start)


def test_datatrove_reads_the_export_with_its_own_dataset(combined):
    root, ref, docs, dtype = combined
    DatatroveFolderDataset = datatrove_folder_dataset()
    slimtok("export", "datatrove", "--output-root", root, "--prefix", "dt")
    folder = root / "datatrove" / "dt" / "train"
    # the token file and the index are the combined split's, linked
    assert (folder / "train.ds").stat().st_ino == (root / "train.bin").stat().st_ino
    assert (folder / "train.ds.index").stat().st_ino == (root / "train.idx").stat().st_ino
    token_size = np.dtype(dtype).itemsize
    meta = json.loads((root / "meta.json").read_text())
    assert (folder / "train.ds.metadata").read_text().splitlines()[:2] == [f"{meta['tokenizer']}|{token_size}",
                                                                          str(len(ref))]
    ends = np.cumsum([len(d) for d in docs])
    seq_len = 63
    ds = DatatroveFolderDataset(str(folder), seq_len=seq_len, token_size=token_size, return_positions=True)
    assert len(ds) == len(ref) // (seq_len + 1) > 10
    for i in range(len(ds)):
        item = ds[i]
        start = i * (seq_len + 1)
        assert np.array_equal(item["input_ids"].numpy(), ref[start:start + seq_len + 1])
        assert np.array_equal(item["positions"].numpy(), _positions(ends, start, seq_len + 1)), i
    # each split has its folder: the validation one holds only val.*
    assert sorted(p.name for p in (root / "datatrove" / "dt" / "val").iterdir()) == [
        "slimtok-export.json", "val.ds", "val.ds.index", "val.ds.metadata"]


def test_export_folder_replaces_only_what_it_recorded(combined, tmp_path):
    """A re-export replaces its own files; a file of another program at a name it needs is refused,
    naming it, and left byte for byte; other files of the folder are never touched."""
    root, ref, docs, dtype = combined
    folder = tmp_path / "dt" / "train"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_bytes(b"mine")
    slimtok("export", "datatrove", "--output-root", root, "--prefix", tmp_path / "dt", "--splits", "train")
    slimtok("export", "datatrove", "--output-root", root, "--prefix", tmp_path / "dt", "--splits", "train")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "slimtok-export.json", "train.ds",
                                                        "train.ds.index", "train.ds.metadata"]
    assert json.loads((folder / "slimtok-export.json").read_text())["files"] == [
        "train.ds", "train.ds.index", "train.ds.metadata"]
    (folder / "slimtok-export.json").unlink()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    proc = slimtok("export", "datatrove", "--output-root", root, "--prefix", tmp_path / "dt", "--splits", "train",
                   check=False)
    assert proc.returncode == 2 and f"{folder}: holds train.ds, which no earlier export" in proc.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_torchtitan_documents_are_the_exact_documents(combined):
    root, ref, docs, dtype = combined
    slimtok("export", "torchtitan", "--output-root", root, "--prefix", "tt", "--splits", "train")
    folder = root / "torchtitan" / "tt" / "train"
    got = torchtitan_documents(folder)
    assert len(got) == len(docs)
    assert all(np.array_equal(g, d) for g, d in zip(got, docs, strict=True))
    offsets = np.load(folder / "document_offsets.npy")
    assert offsets.dtype == np.int64 and np.array_equal(offsets[1:], np.fromfile(root / "train.idx", "<u8"))
    # uint32 bytes are the split's own: linked; uint16 ones are widened
    linked = (folder / "tokens.bin").stat().st_ino == (root / "train.bin").stat().st_ino
    assert linked == (dtype == "uint32")
    assert (folder / "tokens.bin").stat().st_size == 4 * len(ref)
    assert not (root / "torchtitan" / "tt" / "val").exists()


def test_an_interrupted_export_leaves_the_old_set(combined, tmp_path, monkeypatch):
    """An export that fails after writing some of its files leaves the previous export's files as
    they were and no temporary file behind."""
    from slimtok.export import torchtitan

    root, ref, docs, dtype = combined
    torchtitan.export_torchtitan(root, str(tmp_path / "tt"), ["train"], log=lambda _: None)
    folder = tmp_path / "tt" / "train"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = torchtitan.write_blocks

    def fail_on_offsets(tmp, blocks, header=b""):
        if "document_offsets" in tmp.name:
            raise KeyboardInterrupt  # stands for a kill between the two files
        real(tmp, blocks, header)

    monkeypatch.setattr(torchtitan, "write_blocks", fail_on_offsets)
    monkeypatch.setattr(torchtitan, "link_or_copy", lambda src, tmp: real(tmp, [np.arange(5, dtype="<u4")]) or "x")
    with pytest.raises(KeyboardInterrupt):
        torchtitan.export_torchtitan(root, str(tmp_path / "tt"), ["train"], log=lambda _: None)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_litdata_blocks_are_the_windows_and_items_the_documents(combined):
    root, ref, docs, dtype = combined
    block = 65
    itemsize = np.dtype(dtype).itemsize
    slimtok("export", "litdata", "--output-root", root, "--prefix", "ld", "--block-size", block, "--splits", "train",
            "--chunk-bytes", 7 * block * itemsize + 5)  # 7 blocks a chunk, several chunks
    folder = root / "litdata" / "ld" / "train"
    blocks = litdata_blocks(folder, block)
    assert len(blocks) == len(ref) // block
    for i, got in enumerate(blocks):
        assert np.array_equal(got.astype(np.int64), ref[i * block:(i + 1) * block]), i
    # the chunks' items are the documents, cut only where a chunk ends
    index = json.loads((folder / "index.json").read_text())
    assert len(index["chunks"]) == -(-len(ref) // (7 * block)) > 2
    cuts, position = set(), 0
    for chunk in index["chunks"]:
        items = litdata_items(folder / chunk["filename"])
        assert sum(len(i) for i in items) == chunk["dim"] * itemsize
        for item in items:
            position += len(item) // itemsize
            cuts.add(position)
    chunk_ends = set(np.cumsum([c["dim"] for c in index["chunks"]]).tolist())
    assert cuts == set(np.cumsum([len(d) for d in docs]).tolist()) | chunk_ends


def test_packed_balances_ranks_and_carries_document_ends(combined, tmp_path):
    root, ref, docs, dtype = combined
    seq_len, ranks = 50, 3
    out = tmp_path / "p"
    slimtok("export", "packed", "--output-root", root, "--seq-len", seq_len, "--rows-per-file", 4, "--ranks", ranks,
            "--document-ends", "--output-dir", out)
    manifest = _check_manifest(out)
    files = manifest["files"]
    # every rank reading files[rank::ranks] gets the same rows; only what cannot divide evenly is dropped
    per_rank = [sum(f["rows"] for f in files[r::ranks]) for r in range(ranks)]
    assert len(set(per_rank)) == 1 and len(files) % ranks == 0
    total = len(ref) // seq_len
    assert 0 <= total - manifest["rows"] < ranks + len(files)  # under a row per rank and per part
    assert manifest["ranks"] == ranks and manifest["document_ends"] is True
    assert manifest["dropped_tail_tokens"] == len(ref) - manifest["rows"] * seq_len
    tables = [pq.read_table(out / f["file"]) for f in files]
    rows = np.array([r for t in tables for r in t.column("input_ids").to_pylist()])
    assert np.array_equal(rows.astype(np.int64), ref[:manifest["rows"] * seq_len].reshape(-1, seq_len))
    # independent: each row's document ends from the documents' lengths
    ends = np.cumsum([len(d) for d in docs])
    want = [[int(e - r * seq_len) for e in ends if r * seq_len < e <= (r + 1) * seq_len]
            for r in range(manifest["rows"])]
    assert [x for t in tables for x in t.column("document_ends").to_pylist()] == want
    assert sum(map(len, want)) > 10


def test_document_ends_need_parquet(combined, tmp_path):
    root, *_ = combined
    proc = slimtok("export", "packed", "--output-root", root, "--format", "npy", "--document-ends",
                   "--output-dir", tmp_path / "n", check=False)
    assert proc.returncode == 2 and "document_ends column needs --format parquet" in proc.stderr


def test_every_export_reads_a_mix_root_as_a_combined_one(combined, tmp_path):
    """A mix root's train.bin/train.idx go through the same exports: each reader gets the mix's
    documents (read here from its files) exactly."""
    import yaml

    root, ref, docs, dtype = combined
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"seed": 3, "total_tokens": len(ref) // 2, "shuffle": "document",
                                    "chunk_documents": 5, "sources": [{"name": "a", "root": str(root), "weight": 1}]}))
    mixed = tmp_path / "mixed"
    slimtok("mix", spec, "--output-root", mixed, "--quiet")
    mix_dtype = json.loads((mixed / "meta.json").read_text())["dtype"]
    ids = np.fromfile(mixed / "train.bin", dtype=mix_dtype).astype(np.int64)
    ends = np.fromfile(mixed / "train.idx", dtype="<u8").astype(np.int64)
    mix_docs = np.split(ids, ends[:-1])
    assert len(mix_docs) > 5
    for target in ("datatrove", "torchtitan"):
        slimtok("export", target, "--output-root", mixed, "--prefix", "x", "--splits", "train")
    assert all(np.array_equal(a, b) for a, b in
               zip(torchtitan_documents(mixed / "torchtitan/x/train"), mix_docs, strict=True))
    ds = datatrove_folder_dataset()(str(mixed / "datatrove/x/train"), seq_len=15, return_positions=True,
                                    token_size=np.dtype(mix_dtype).itemsize)
    assert np.array_equal(np.concatenate([ds[i]["input_ids"].numpy() for i in range(len(ds))]),
                          ids[:len(ds) * 16])
    assert all(np.array_equal(ds[i]["positions"].numpy(), _positions(ends, 16 * i, 16)) for i in range(len(ds)))
    slimtok("export", "litdata", "--output-root", mixed, "--prefix", "x", "--splits", "train", "--block-size", 16)
    blocks = litdata_blocks(mixed / "litdata/x/train", 16)
    assert np.array_equal(np.concatenate(blocks).astype(np.int64), ids[:len(ids) // 16 * 16])


def test_mds_samples_are_the_rows(combined):
    root, ref, docs, dtype = combined
    seq_len = 33
    slimtok("export", "mds", "--output-root", root, "--prefix", "m", "--seq-len", seq_len, "--splits", "train")
    folder = root / "mds" / "m" / "train"
    samples = mds_samples(folder)
    n = len(ref) // seq_len
    assert len(samples) == n
    assert all(s["tokens"].dtype == np.dtype(dtype) for s in samples)
    assert np.array_equal(np.stack([s["tokens"] for s in samples]).astype(np.int64), ref[:n * seq_len].reshape(n, -1))


def test_mds_with_streamings_own_reader(combined):
    streaming = pytest.importorskip("streaming", reason=MDS_NOT_INSTALLABLE)
    root, ref, docs, dtype = combined
    slimtok("export", "mds", "--output-root", root, "--prefix", "m", "--seq-len", 33, "--splits", "train")
    ds = streaming.StreamingDataset(local=str(root / "mds" / "m" / "train"), shuffle=False, batch_size=1)
    n = len(ref) // 33
    assert np.array_equal(np.stack([ds[i]["tokens"] for i in range(n)]).astype(np.int64), ref[:n * 33].reshape(n, -1))


def test_a_shorter_export_removes_only_the_files_the_longer_one_recorded(combined, tmp_path):
    root, ref, docs, dtype = combined
    folder = tmp_path / "ld" / "train"
    folder.mkdir(parents=True)
    (folder / "chunk-0-9999.bin").write_bytes(b"another tool's file")

    def export(*extra):
        slimtok("export", "litdata", "--output-root", root, "--prefix", tmp_path / "ld", "--splits", "train",
                "--block-size", 64, *extra)
        return sorted(p.name for p in folder.iterdir())

    many = export("--chunk-bytes", 64 * 8 * 2)
    assert len([n for n in many if n.startswith("chunk-")]) > 3
    assert export() == ["chunk-0-0.bin", "chunk-0-9999.bin", "index.json", "slimtok-export.json"]  # one chunk now
    assert (folder / "chunk-0-9999.bin").read_bytes() == b"another tool's file"
    assert np.array_equal(np.concatenate(litdata_blocks(folder, 64)).astype(np.int64), ref[:len(ref) // 64 * 64])
