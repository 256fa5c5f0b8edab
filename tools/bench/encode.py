"""Encoding and reading in memory: the raw, read, tables and ceiling sections and their notes.

Reads the bench corpus's train shards (through its manifest) and the tokenizer; writes nothing
but the ceiling children's reports. Every contender's ids are compared with the Encoder's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .corpus import worker_batches
from .harness import Result, Table, cpu_now, start_together
from .ids import compare_streams, sha, with_eos

RAW_FLAT = "raw encode_batch_flat (bare)"
GIGATOKEN = "raw encode (gigatoken, 1 thread)"
PARSE_FLOOR = "parse: text field (simdjson)"


def _timed(fn, batches: list[list[str]]) -> tuple[list, float, float]:
    """(outputs of ``fn`` per batch, wall, cpu) of one pass over ``batches``."""
    c0, w0 = cpu_now(), time.time()
    outputs = [fn(b) for b in batches]
    return outputs, time.time() - w0, cpu_now() - c0


def bench_raw(table: Table, texts: list[str], tokenizer: Path, backends: list[str], suffix: str = "",
              contenders: bool = False) -> dict[str, str]:
    """Encoder.encode over the documents in memory, in the worker's batch sizes.

    With ``contenders`` (fastokens only), the same batches also go through a bare fastokens
    tokenizer's ``encode_batch_flat`` (no template: the floor the Encoder is held to) and through
    gigatoken's ``encode_batch`` on one thread, each timed right after the Encoder. Every row is
    one pass of a tokenizer loaded for it, as a worker meets new text: fastokens caches words,
    and a second pass over the same texts runs ~3x faster, which no worker sees. Their ids, with
    eos placed after each document outside the timed part, are compared with the Encoder's.
    """
    from slimtok.tokenizer import Encoder, load_tokenizer

    loaded = load_tokenizer(str(tokenizer))
    nbytes = sum(len(t.encode()) for t in texts)
    batches = list(worker_batches(texts))
    digests = {}
    for backend in backends:
        enc = Encoder(loaded.parsed(), loaded.policy, "uint32", backend)
        outputs, wall, cpu = _timed(lambda b, enc=enc: enc.encode(b)[0], batches)
        digests[backend] = sha(outputs)  # outside the timed part: the raw row is the encoder alone
        table.add(Result(f"raw encode ({backend}{suffix})", nbytes, wall, cpu, sum(f.size for f in outputs),
                         ids_sha256=digests[backend]))
        if contenders and backend == "fastokens":
            _raw_contenders(table, batches, tokenizer, loaded, nbytes, np.concatenate(outputs))
        del outputs
    return digests


def _raw_contenders(table: Table, batches: list[list[str]], tokenizer: Path, loaded, nbytes: int,
                    ours: np.ndarray) -> None:
    """Bare fastokens encode_batch_flat and gigatoken on ``batches``; ids compared with ``ours``."""
    import fastokens

    policy, eos = loaded.policy, loaded.policy.eos_id
    bare = fastokens.Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    bare.no_padding()
    bare.no_truncation()
    outputs, wall, cpu = _timed(lambda b: bare.encode_batch_flat(b, False, policy.literal), batches)
    flat = np.concatenate([with_eos(np.frombuffer(raw, np.uint32), np.frombuffer(ends, np.uint64)[1:], eos)
                           for raw, ends in outputs])
    table.add(Result(RAW_FLAT, nbytes, wall, cpu, int(flat.size), ids_sha256=sha([flat])))
    if not np.array_equal(flat, ours):
        table.note(f"IDS DIFFER: {RAW_FLAT} vs the Encoder")
    try:
        import awkward as ak
        import gigatoken
    except ImportError as exc:
        table.note(f"gigatoken: no row ({exc}; pip install gigatoken)")
        return
    giga = gigatoken.Tokenizer(str(tokenizer / "tokenizer.json"))
    outputs, wall, cpu = _timed(lambda b: giga.encode_batch(b, parallel=False), batches)
    ids: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    base = 0
    for docs in outputs:  # an awkward array of id lists per batch
        counts = np.asarray(ak.num(docs), np.int64)
        ids.append(with_eos(np.asarray(ak.flatten(docs), np.uint32), np.cumsum(counts), eos))
        ends.append(base + np.cumsum(counts + 1))
        base += int(counts.sum()) + counts.size
    stream, stream_ends = np.concatenate(ids), np.concatenate(ends)
    table.add(Result(GIGATOKEN, nbytes, wall, cpu, int(stream.size)))
    from tokenizers import Tokenizer

    text_tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    text_tok.encode_special_tokens = True
    table.note(f"raw gigatoken {_dist_version('gigatoken')}: "
                       f"{compare_streams(stream, stream_ends, ours, eos, text_tok)}")


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def bench_read(table: Table, manifest: Path, nbytes: int) -> None:
    """Decompression alone, then the reader alone, over the train shards (in this process)."""
    import zstandard

    from slimtok.manifest import read_manifest
    from slimtok.reader import ShardReader

    paths = [Path(e.path) for e in read_manifest(manifest)]
    c0, w0 = cpu_now(), time.time()
    for path in paths:  # the CLI's way: one stream, large reads, output discarded
        with open(path, "rb") as f:
            reader = zstandard.ZstdDecompressor().stream_reader(f, read_size=1 << 20)
            while reader.read(1 << 20):
                pass
    table.add(Result("read: zstd decompress only", nbytes, time.time() - w0, cpu_now() - c0))
    c0, w0 = cpu_now(), time.time()
    docs = sum(1 for path in paths for _ in ShardReader(path).records())
    table.add(Result("read: decompress + parse (reader)", nbytes, time.time() - w0, cpu_now() - c0))
    assert docs, "no documents read"
    bench_parse(table, paths, nbytes, docs)


def bench_parse(table: Table, paths: list[Path], nbytes: int, docs: int) -> None:
    """The fastest exact access to the text field measured here (pysimdjson's lazy parse, the text
    copied out as a str) over the decompressed lines already in memory: the floor's parse term."""
    import simdjson
    import zstandard

    lines = [line for path in paths for line in zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read()
             .split(b"\n") if line.strip()]
    parser = simdjson.Parser()

    def text(line: bytes) -> str:
        # the parsed object dies here, before the next parse; every corpus line is an object with a
        # "text" string, and a check of it would be timed with the parse
        return parser.parse(line).get("text")  # type: ignore[union-attr,return-value]

    c0, w0 = cpu_now(), time.time()
    got = sum(1 for line in lines if text(line))
    table.add(Result(PARSE_FLOOR, nbytes, time.time() - w0, cpu_now() - c0))
    assert got == docs, f"simdjson found {got} texts, the reader {docs}"


def floor_notes(table: Table, pipeline: str) -> list[str]:
    """The steady-state floor (decompression + the parse floor + bare encode_batch_flat, per CPU-s)
    and the pipeline's and the Encoder's ratios to it (issue 15 target 2)."""
    parts = ("read: zstd decompress only", PARSE_FLOOR, RAW_FLAT)
    if not all(p in table.runs for p in (*parts, pipeline)):
        return ["floor: n/a (needs the raw, read and pipeline sections)"]
    floor = 1 / sum(1 / table.median(p, "mb_cpu") for p in parts)
    ratio = table.median(pipeline, "mb_cpu") / floor
    enc = table.ratio("raw encode (fastokens)", RAW_FLAT)
    return [f"floor (decompress + {PARSE_FLOOR.split(':')[0]} + bare encode_batch_flat): {floor:.1f} MB/CPU-s; "
            f"{pipeline} / floor = {ratio:.2f} (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})",
            f"Encoder / bare encode_batch_flat per CPU-s = {enc} (target >= 0.95: "
            f"{'met' if enc != 'n/a' and float(enc) >= 0.95 else 'NOT met'})",
            f"ratio gigatoken / bare fastokens per CPU-s: {table.ratio(GIGATOKEN, RAW_FLAT)}"]


def bench_ceiling(table: Table, work: Path, manifest: Path, tokenizer: Path, backend: str, nbytes: int,
                  procs: int, run: int) -> None:
    """The same in-memory work (read + encode, nothing written) in 1 process and in ``procs`` at once.

    Its ratio is what this machine gives ``procs`` CPU-bound processes of this kind at the moment
    of the run (shared caches, memory bandwidth, neighbours), the ceiling for the scaling row.
    """
    for n in (1, procs):
        reports = start_together(work / f"ceiling-{n}-{run}",
                                 [["ceiling", str(manifest), str(tokenizer), backend, f"{i}/{n}"] for i in range(n)])
        wall = max(r[2] for r in reports) - min(r[0] for r in reports)
        table.add(Result(f"ceiling: read + encode, {n} process{'es' if n > 1 else ''}", nbytes, wall,
                         sum(r[1] for r in reports)))


def read_bound(table: Table, raw: str, read: str) -> str:
    """pipeline/raw per CPU-s if the pipeline did nothing but ``read`` besides encoding."""
    if raw not in table.runs or read not in table.runs:
        return "n/a"
    raw_s, read_s = 1 / table.median(raw, "mb_cpu"), 1 / table.median(read, "mb_cpu")
    return f"{raw_s / (raw_s + read_s):.2f}"


def bench_tables(table: Table, manifest: Path, tokenizer: Path, backend: str, nbytes: int) -> None:
    """The document table's work alone, as a worker does it, over the train documents in memory.

    Timed: xxh3-128 of each document's UTF-8 text and ``ShardTask._rows`` (the production code,
    on a task holding only what it reads), batch by batch in the worker's batch sizes. The token
    counts come from one encode done before the timed part; the timed loop repeats for ~1 CPU-s.
    """
    import xxhash

    from slimtok.manifest import read_manifest
    from slimtok.reader import ShardReader
    from slimtok.tokenizer import Encoder, load_tokenizer
    from slimtok.worker import ShardTask, batched
    from slimtok.worker.task import Progress

    records = ((str(t), s) for e in read_manifest(manifest)
               for t, s in ShardReader(e.path, source_key="meta.redpajama_set_name").records())
    loaded = load_tokenizer(str(tokenizer))
    enc = Encoder(loaded.parsed(), loaded.policy, "uint32", backend)
    batches = [(texts, sources, enc.encode(texts)[1]) for texts, sources in batched(records)]
    task = object.__new__(ShardTask)
    task.source_index, task.progress = {}, Progress()
    # Passes over the same batches until ~1 CPU-s: one pass over a small corpus is a few ms.
    passes, c0, w0 = 0, time.process_time(), time.time()
    while time.process_time() - c0 < 1.0:
        for texts, sources, lengths in batches:
            task._rows(lengths, sources, b"".join(xxhash.xxh3_128_digest(t.encode()) for t in texts))
        passes += 1
    table.add(Result("tables: xxh3-128 + ShardTask._rows", nbytes * passes, time.time() - w0,
                     time.process_time() - c0))


def tables_share(table: Table, pipeline: str) -> str:
    """The table work's CPU per MB as a share of the whole pipeline's CPU per MB (same run)."""
    rows = "tables: xxh3-128 + ShardTask._rows"
    if rows not in table.runs or pipeline not in table.runs:
        return "n/a (needs the tables and pipeline sections)"
    share = table.median(pipeline, "mb_cpu") / table.median(rows, "mb_cpu")
    return (f"{1e3 / table.median(rows, 'mb_cpu'):.2f} ms/MB vs pipeline {1e3 / table.median(pipeline, 'mb_cpu'):.2f}"
            f" ms/MB = {share:.1%} of one worker's CPU (target <= 2%: {'met' if share <= 0.02 else 'NOT met'})")


def check_ids(table: Table, got: str, want: str, what: str) -> None:
    if got != want:
        table.note(f"IDS DIFFER: {what}")
        raise SystemExit(f"ids differ: {what}\n" + table.render())


