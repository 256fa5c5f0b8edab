"""The line cap (issue 24, item 2): a line over ``max_line_bytes`` is read past without being kept
and counted as one ``line_too_long`` skip, for every compression and for parquet/Arrow texts;
memory stays bounded by the cap however long the line; the cap is pinned in job.json."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
import zstandard

from helpers.cli import slimtok, tokenize
from helpers.corpus import doc_line, make_dataset, sample_documents
from slimtok.formats.streams import Overlong, split_blocks
from slimtok.reader import ShardReader

COMPRESSORS = {".jsonl": lambda b: b, ".jsonl.zst": zstandard.ZstdCompressor().compress, ".jsonl.gz": gzip.compress,
               ".jsonl.bz2": bz2.compress, ".jsonl.xz": lzma.compress}


def _expected(data: bytes, cap: int) -> list[bytes | Overlong]:
    """What split_blocks must give, computed the plain way: split at newlines, a last line without
    newline counts, each empty line on its own, an over-long line as Overlong(its length)."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line if len(line) <= cap else Overlong(len(line)) for line in lines]


def _flatten(parts) -> list[bytes | Overlong]:
    out: list[bytes | Overlong] = []
    for part in parts:
        if isinstance(part, int):
            out += [b""] * part
        else:
            out.append(part if isinstance(part, Overlong) else bytes(part))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_split_blocks_with_a_cap_matches_a_plain_split(seed):
    rng = random.Random(seed)
    cap = rng.choice([1, 5, 17, 64, 300])
    lines = [bytes(rng.choice(b"ab{}\"") for _ in range(rng.choice([0, 0, 1, 3, cap, cap + 1, 2 * cap, 5 * cap + 7])))
             for _ in range(rng.randrange(1, 40))]
    data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 20)))) if len(data) > 1 else []
    blocks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert _flatten(split_blocks(iter(blocks), cap)) == _expected(data, cap)
    assert _flatten(split_blocks(iter(blocks))) == _expected(data, len(data))  # no cap: every line kept


def _docs(n: int, seed: int) -> list[str]:
    return sample_documents(n, seed=seed)


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_an_over_long_line_is_one_line_too_long_skip_in_every_compression(tmp_path, suffix):
    before, after = _docs(5, 1), _docs(4, 2)
    cap = 4096
    long_line = json.dumps({"text": "x" * (3 * (1 << 20))}).encode()  # spans several 1 MiB blocks
    edge = json.dumps({"text": "y" * 10}).encode()
    edge = edge[:-2] + b"y" * (cap - len(edge)) + edge[-2:]  # exactly the cap: kept
    assert len(edge) == cap
    raw = b"\n".join([*(doc_line(d) for d in before), long_line, edge, *(doc_line(d) for d in after)]) + b"\n"
    path = tmp_path / f"s{suffix}"
    path.write_bytes(COMPRESSORS[suffix](raw))
    reader = ShardReader(path, max_line_bytes=cap)
    got = [str(t) for t, _ in reader.records()]
    assert got == [*before, json.loads(edge)["text"], *after]
    assert reader.skipped == {"line_too_long": 1}
    assert reader.lines == len(before) + 2 + len(after)
    # a resume just past the long line reads what follows it, with the count carried over
    resumed = ShardReader(path, start_line=len(before) + 1, skipped={"line_too_long": 1}, max_line_bytes=cap)
    assert [str(t) for t, _ in resumed.records()] == [json.loads(edge)["text"], *after]
    assert resumed.skipped == {"line_too_long": 1}
    # the same file without a cap beyond the long line keeps it
    assert len(list(ShardReader(path).records())) == len(got) + 1


@pytest.mark.parametrize("layout", ["parquet", "arrow"])
def test_a_columnar_text_over_the_cap_is_skipped_by_its_utf8_bytes(tmp_path, layout):
    cap = 1000
    texts = ["short one", "é" * 500, "é" * 501, None, "z" * 5000, "last"]  # "é" is 2 UTF-8 bytes
    table = pa.table({"text": texts})
    path = tmp_path / f"t.{layout}"
    if layout == "parquet":
        pq.write_table(table, path, row_group_size=2)
    else:
        with pa.ipc.new_stream(path, table.schema) as w:
            w.write_table(table, max_chunksize=2)
    reader = ShardReader(path, max_line_bytes=cap)
    assert [t for t, _ in reader.records()] == ["short one", "é" * 500, "last"]
    assert reader.skipped == {"line_too_long": 2, "missing_text": 1}
    assert reader.lines == len(texts)


ENDLESS = 1 << 30  # one line of 1 GiB, a few hundred KiB compressed


def test_reading_an_endless_line_stays_within_the_cap(tmp_path):
    """A shard whose one line is 1 GiB (then one good document): read with an 8 MiB cap in a child
    whose peak RSS is measured against a child that only imports the reader."""
    path = tmp_path / "endless.jsonl.zst"
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as w:
        w.write(b'{"text": "')
        chunk = b"a" * (1 << 24)
        for _ in range(ENDLESS // len(chunk)):
            w.write(chunk)
        w.write(b'"}\n' + doc_line("the one good document") + b"\n")
    cap = 8 << 20
    code = ("import resource, sys, json\nfrom slimtok.reader import ShardReader\n"
            "r = ShardReader(sys.argv[1], max_line_bytes=int(sys.argv[2]))\n"
            "texts = [str(t) for t, _ in r.records()] if sys.argv[1] != '-' else []\n"
            "print(json.dumps([texts, r.skipped, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))\n")
    base = json.loads(subprocess.run([sys.executable, "-c", code, "-", str(cap)], capture_output=True, text=True,
                                     check=True, timeout=120).stdout)
    got = json.loads(subprocess.run([sys.executable, "-c", code, str(path), str(cap)], capture_output=True,
                                    text=True, check=True, timeout=300).stdout)
    assert got[:2] == [["the one good document"], {"line_too_long": 1}]
    grown_mib = (got[2] - base[2]) / 1024
    assert grown_mib < 3 * cap / (1 << 20) + 16, f"reading grew the process by {grown_mib:.0f} MiB"


def test_the_cap_is_pinned_counted_in_done_records_and_a_relaunch_with_another_is_refused(tmp_path, bpe_tokenizer):
    ds = make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=6, holdout_docs=2)
    long_doc = json.dumps({"text": "w " * 3000}).encode()
    shard = ds / "train/chunk1/example_train_0.jsonl.zst"
    lines = zstandard.ZstdDecompressor().stream_reader(shard.read_bytes()).read().splitlines()
    shard.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join([lines[0], long_doc, *lines[1:]]) + b"\n"))
    slimtok("manifest", "--dataset-dir", ds, "--output-dir", tmp_path / "m")
    manifest, root = tmp_path / "m" / "manifest.jsonl", tmp_path / "out"
    tokenize(manifest, root, bpe_tokenizer, "--spawn-workers", 1, "--max-line-bytes", 4096)
    assert json.loads((root / "job.json").read_text())["max_line_bytes"] == 4096
    done = json.loads((root / "done/train/chunk1/example_train_0.json").read_text())
    assert done["skipped"] == {"line_too_long": 1}
    assert done["documents"] == len(lines)
    proc = tokenize(manifest, root, bpe_tokenizer, "--spawn-workers", 1, "--max-line-bytes", 8192, check=False)
    assert proc.returncode != 0
    assert "max_line_bytes: pinned 4096, requested 8192" in proc.stderr


def test_a_root_pinned_before_the_cap_reads_as_the_default(tmp_path):
    from slimtok.protocol import JobSettings
    from slimtok.protocol.records import DEFAULT_MAX_LINE_BYTES

    fields = dict(manifest_sha256="m", shards=1, tokenizer="t", tokenizer_sha256="s", vocab_size=10, eos_token_id=0,
                  eos_token=None, dtype="uint16", text_key="text")
    old = JobSettings.from_dict(json.loads(json.dumps(fields)))
    assert old.max_line_bytes == DEFAULT_MAX_LINE_BYTES
    assert not old.differences(JobSettings(**fields))

