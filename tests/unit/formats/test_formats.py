"""Input formats end to end: a datatrove JsonlWriter folder (.jsonl.gz), a Hub-style parquet
dataset, plain .jsonl next to .jsonl.zst; per-source accounting, its pin, and its resume."""

import bz2
import gzip
import json
import lzma
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

from helpers.cli import run_pipeline, slimtok, tokenize_cmd
from helpers.corpus import doc_line, sample_documents, write_shard
from slimtok.reader import NO_SOURCE, ShardReader, ShardReadError

SOURCES = ("RedPajamaC4", "RedPajamaGithub", "RedPajamaArXiv")


def encode_documents(texts: list[str], tokenizer: Path) -> list[list[int]]:
    """Each text encoded on its own plus eos (id 0 in the test BPE), special strings as text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    tok.encode_special_tokens = True
    return [tok.encode(t, add_special_tokens=False).ids + [0] for t in texts]


def source_counts(docs: list[list[int]], sources: list[str]) -> dict:
    out: dict = {}
    for ids, source in zip(docs, sources, strict=True):
        c = out.setdefault(source, {"documents": 0, "tokens": 0})
        c["documents"] += 1
        c["tokens"] += len(ids)
    return out


def _meta(root: Path) -> dict:
    return json.loads((root / "meta.json").read_text())


def _done_records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "done").rglob("*.json"))]


# -- datatrove ---------------------------------------------------------------------------------

def _datatrove_folder(folder: Path, ranks: int = 2, docs: int = 25) -> tuple[list[str], list[str]]:
    """What datatrove's JsonlWriter leaves: ``00000.jsonl.gz`` per rank, records text/id/metadata."""
    texts, dumps = [], []
    folder.mkdir(parents=True)
    for rank in range(ranks):
        lines = []
        for i, text in enumerate(sample_documents(docs, seed=40 + rank)):
            dump = f"CC-MAIN-2024-{10 + (i % 3)}"
            record = {"text": text if i != 3 else "", "id": f"<urn:uuid:{rank}-{i}>",
                      "metadata": {"dump": dump, "url": f"https://example.org/{rank}/{i}", "language_score": 0.9}}
            lines.append(json.dumps(record, ensure_ascii=False))
            if i != 3:  # the empty text is skipped
                texts.append(text)
                dumps.append(dump)
        (folder / f"{rank:05d}.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return texts, dumps


def test_datatrove_jsonl_gz_folder_end_to_end_with_sources(tmp_path, bpe_tokenizer):
    texts, dumps = _datatrove_folder(tmp_path / "dt")
    root = run_pipeline(tmp_path / "dt", tmp_path, bpe_tokenizer, "--source-key", "metadata.dump",
                        patterns=("*.jsonl.gz",))
    docs = encode_documents(texts, bpe_tokenizer)
    got = np.fromfile(root / "train.bin", dtype=np.uint32)
    assert np.array_equal(got, np.concatenate(docs))
    meta = _meta(root)["splits"]["train"]
    assert meta["sources"] == source_counts(docs, dumps)
    assert meta["skipped_lines"] == {"empty_text": 2}
    assert np.array_equal(np.fromfile(root / "train.idx", dtype="<u8"), np.cumsum([len(d) for d in docs]))


# -- Hub parquet ---------------------------------------------------------------------------------

def _parquet_shard(path: Path, texts: list, sources: list, row_group_size: int = 7) -> None:
    """A Hub-style parquet shard: text, id, and a ``meta`` struct holding redpajama_set_name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"text": pa.array(texts, pa.string()),
                      "id": [f"doc-{i}" for i in range(len(texts))],
                      "meta": [None if s is None else {"redpajama_set_name": s} for s in sources]})
    pq.write_table(table, path, row_group_size=row_group_size)


def _parquet_dataset(folder: Path, shards: int = 2, docs: int = 30, seed: int = 60) -> tuple[list[str], list[str]]:
    texts_kept, sources_kept = [], []
    for s in range(shards):
        texts = sample_documents(docs, seed=seed + s)
        sources: list = [SOURCES[(i + s) % len(SOURCES)] for i in range(docs)]
        texts[5] = None  # a null text is skipped
        sources[8] = None  # a document without a source is counted under NO_SOURCE
        _parquet_shard(folder / f"data/train-{s:05d}-of-{shards:05d}.parquet", texts, sources)
        for t, src in zip(texts, sources, strict=True):
            if t:
                texts_kept.append(t)
                sources_kept.append(src or NO_SOURCE)
    return texts_kept, sources_kept


def test_hub_parquet_dataset_end_to_end_with_default_source_key(tmp_path, bpe_tokenizer):
    texts, sources = _parquet_dataset(tmp_path / "hub")
    root = run_pipeline(tmp_path / "hub", tmp_path, bpe_tokenizer, patterns=("*.parquet",))
    docs = encode_documents(texts, bpe_tokenizer)
    assert np.array_equal(np.fromfile(root / "train.bin", dtype=np.uint32), np.concatenate(docs))
    meta = _meta(root)["splits"]["train"]
    assert meta["sources"] == source_counts(docs, sources)
    assert meta["skipped_lines"] == {"missing_text": 2}
    for record in _done_records(root):  # per shard, sources add up to the shard's totals
        assert sum(c["documents"] for c in record["sources"].values()) == record["documents"]
        assert sum(c["tokens"] for c in record["sources"].values()) == record["tokens"]


def test_plain_jsonl_and_zst_together_with_two_patterns_and_no_source_key(tmp_path, bpe_tokenizer):
    a, b = sample_documents(12, seed=70), sample_documents(9, seed=71)
    (tmp_path / "ds/train").mkdir(parents=True)
    (tmp_path / "ds/train/part_0.jsonl").write_bytes(b"".join(doc_line(t) + b"\n" for t in a) + b"\n\n")
    write_shard(tmp_path / "ds/train/part_1.jsonl.zst", [doc_line(t) for t in b])
    root = run_pipeline(tmp_path / "ds", tmp_path, bpe_tokenizer, "--source-key", "",
                        patterns=("*.jsonl", "*.jsonl.zst"))
    docs = encode_documents(a + b, bpe_tokenizer)
    assert np.array_equal(np.fromfile(root / "train.bin", dtype=np.uint32), np.concatenate(docs))
    assert _meta(root)["splits"]["train"]["sources"] == {}


# -- reader ----------------------------------------------------------------------------------------

def test_parquet_reader_resumes_at_any_row_with_the_same_counts(tmp_path):
    texts = sample_documents(23, seed=80)
    texts[4] = ""
    texts[17] = None
    sources = [SOURCES[i % 3] for i in range(23)]
    path = tmp_path / "x.parquet"
    _parquet_shard(path, texts, sources, row_group_size=5)
    full = ShardReader(path, source_key="meta.redpajama_set_name")
    marks = []
    for text, source in full.records():
        marks.append((full.lines, dict(full.skipped), text, source))
    assert [m[2] for m in marks] == [t for t in texts if t]
    assert [m[3] for m in marks] == [s for t, s in zip(texts, sources, strict=True) if t]
    assert full.lines == 23 and full.skipped == {"empty_text": 1, "missing_text": 1}
    for k, (lines, skipped, _, _) in enumerate(marks):
        resumed = ShardReader(path, start_line=lines, skipped=skipped, source_key="meta.redpajama_set_name")
        assert list(resumed.records()) == [(m[2], m[3]) for m in marks[k + 1:]]
        assert resumed.lines == 23 and resumed.skipped == full.skipped


def test_parquet_without_the_text_column_or_corrupt_names_the_file(tmp_path):
    path = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"content": ["a", "b"]}), path)
    with pytest.raises(ShardReadError, match=r"notext\.parquet: has no column 'text'.*content"):
        list(ShardReader(path).records())
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ShardReadError, match=r"broken\.parquet: not a readable parquet file"):
        list(ShardReader(broken).records())
    with pytest.raises(ShardReadError, match="fewer lines than the checkpoint"):
        list(ShardReader(path, text_key="content", start_line=3).records())


def test_source_of_a_jsonl_line_follows_the_dotted_path(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text":"a","meta":{"redpajama_set_name":"X"}}\n{"text":"b","meta":{}}\n'
                    '{"text":"c","meta":"flat"}\n{"text":"d","meta":{"redpajama_set_name":7}}\n')
    assert list(ShardReader(path, source_key="meta.redpajama_set_name").records()) == [
        ("a", "X"), ("b", NO_SOURCE), ("c", NO_SOURCE), ("d", "7")]
    assert list(ShardReader(path, source_key="").records()) == [("a", None), ("b", None), ("c", None),
                                                                ("d", None)]


# -- pin and resume ----------------------------------------------------------------------------------

def test_source_key_is_pinned_in_job_json(tmp_path, bpe_tokenizer):
    _parquet_dataset(tmp_path / "hub", shards=1, docs=10)
    root = run_pipeline(tmp_path / "hub", tmp_path, bpe_tokenizer, patterns=("*.parquet",))
    assert json.loads((root / "job.json").read_text())["source_key"] == "meta.redpajama_set_name"
    proc = subprocess.run(tokenize_cmd(tmp_path / "m/manifest.jsonl", root, bpe_tokenizer, "--source-key", "id"),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "source_key" in proc.stderr


@pytest.mark.slow  # kill -9 at random moments, several runs
def test_kill_9_mid_parquet_shard_keeps_per_source_counts_exact(tmp_path, bpe_tokenizer):
    texts, sources = _parquet_dataset(tmp_path / "hub", shards=2, docs=1200, seed=90)
    slimtok("manifest", "--dataset-dir", tmp_path / "hub", "--output-dir", tmp_path / "m", "--pattern", "*.parquet")
    root = tmp_path / "out"
    cmd = tokenize_cmd(tmp_path / "m/manifest.jsonl", root, bpe_tokenizer, "--spawn-workers", "1",
                        "--tokens-per-write", "3000", "--checkpoint-every", "0")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not any((root / "checkpoints").rglob("*.json")) if (root / "checkpoints").exists() else True:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    checkpoint = json.loads(next((root / "checkpoints").rglob("*.json")).read_text())
    assert sum(c["documents"] for c in checkpoint["sources"].values()) == checkpoint["documents"]
    subprocess.run(cmd, check=True, capture_output=True)
    slimtok("combine", "--output-root", root)
    logs = "".join(p.read_text() for p in (root / "logs").glob("*.log"))
    assert "resuming at line" in logs
    docs = encode_documents(texts, bpe_tokenizer)
    assert _meta(root)["splits"]["train"]["sources"] == source_counts(docs, sources)
    assert np.array_equal(np.fromfile(root / "train.bin", dtype=np.uint32), np.concatenate(docs))
    assert Counter(sources)[NO_SOURCE] == 2


# -- the format registry: bz2, xz, Arrow IPC ------------------------------------------------------

def _records(texts: list[str | None], sources: list[str]) -> list[bytes]:
    return [json.dumps({"text": t, "meta": {"redpajama_set_name": s}} if t is not None else {"content": "x", "id": 1},
                       ensure_ascii=False).encode() for t, s in zip(texts, sources, strict=True)]


@pytest.mark.parametrize("suffix,compress", [(".jsonl.bz2", bz2.compress), (".jsonl.xz", lzma.compress),
                                             (".jsonl.gz", gzip.compress)])
def test_stdlib_compressed_jsonl_reads_the_texts_written(tmp_path, suffix, compress):
    texts = sample_documents(40, seed=90)
    texts[5] = None  # a record without the text key
    sources = [SOURCES[i % 3] for i in range(40)]
    path = tmp_path / f"shard{suffix}"
    path.write_bytes(compress(b"".join(line + b"\n" for line in _records(texts, sources))))
    reader = ShardReader(path, source_key="meta.redpajama_set_name")
    got = list(reader.records())
    assert got == [(t, s) for t, s in zip(texts, sources, strict=True) if t is not None]
    assert reader.lines == 40 and reader.skipped == {"missing_text": 1}
    assert reader.missing_text_keys == ("content", "id")
    assert "'content', 'id'" in reader.missing_text_hint()


def _arrow_stream(path: Path, texts: list[str | None], sources: list[str], batch_rows: int) -> None:
    """An Arrow IPC stream as `datasets.save_to_disk` writes one (``data-00000-of-00001.arrow``)."""
    table = pa.table({"text": pa.array(texts, pa.string()),
                      "meta": pa.array([{"redpajama_set_name": s} for s in sources])})
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)


def test_arrow_ipc_stream_reads_the_texts_written_and_resumes_at_any_row(tmp_path):
    texts = sample_documents(17, seed=91)
    texts[3], texts[11] = None, ""
    sources = [SOURCES[i % 3] for i in range(17)]
    path = tmp_path / "train" / "data-00000-of-00001.arrow"
    _arrow_stream(path, texts, sources, batch_rows=4)
    full = ShardReader(path, source_key="meta.redpajama_set_name")
    marks = [(full.lines, full.skipped, text, source) for text, source in full.records()]
    assert [(m[2], m[3]) for m in marks] == [(t, s) for t, s in zip(texts, sources, strict=True) if t]
    assert full.lines == 17 and full.skipped == {"missing_text": 1, "empty_text": 1}
    for k, (lines, skipped, _, _) in enumerate(marks):
        resumed = ShardReader(path, start_line=lines, skipped=skipped, source_key="meta.redpajama_set_name")
        assert list(resumed.records()) == [(m[2], m[3]) for m in marks[k + 1:]]
        assert resumed.lines == 17 and resumed.skipped == full.skipped
    with pytest.raises(ShardReadError, match="fewer lines than the checkpoint"):
        list(ShardReader(path, start_line=18).records())


def test_arrow_ipc_file_layout_and_bad_arrow_files_name_the_file(tmp_path):
    texts = sample_documents(6, seed=92)
    path = tmp_path / "random_access.arrow"
    table = pa.table({"text": texts})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    assert list(ShardReader(path).documents()) == texts
    with pytest.raises(ShardReadError, match=r"random_access\.arrow: has no column 'body'.*text"):
        list(ShardReader(path, text_key="body").records())
    broken = tmp_path / "broken.arrow"
    broken.write_bytes(b"not arrow at all, not even close")
    with pytest.raises(ShardReadError, match=r"broken\.arrow: not a readable Arrow IPC file"):
        list(ShardReader(broken).records())
    empty = tmp_path / "empty.arrow"
    empty.write_bytes(b"")
    with pytest.raises(ShardReadError, match=r"empty\.arrow: empty file"):
        list(ShardReader(empty).records())


def test_save_to_disk_layout_end_to_end(tmp_path, bpe_tokenizer):
    texts = sample_documents(20, seed=93)
    sources = [SOURCES[i % 3] for i in range(20)]
    ds = tmp_path / "saved"
    _arrow_stream(ds / "train" / "data-00000-of-00001.arrow", texts, sources, batch_rows=6)
    (ds / "dataset_dict.json").write_text('{"splits": ["train"]}')
    (ds / "train" / "state.json").write_text("{}")
    root = run_pipeline(ds, tmp_path, bpe_tokenizer, patterns=("*.arrow",))
    docs = encode_documents(texts, bpe_tokenizer)
    assert np.array_equal(np.fromfile(root / "train.bin", dtype=np.uint32), np.concatenate(docs))
    assert _meta(root)["splits"]["train"]["sources"] == source_counts(docs, sources)
    assert [r["shard"] for r in _done_records(root)] == ["train/data-00000-of-00001"]
