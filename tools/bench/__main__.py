#!/usr/bin/env python3
"""Benchmark slimtok against its own raw encoder, its backends, `cat`, and (with --peers) its peers.

    python3 tools/bench.py --work /tmp/slimtok-bench [--mb 20] [--runs 3] [--only raw,pipeline,...]

Builds (or takes with --corpus/--tokenizer) the offline Qwen3 tokenizer (``slimtok.demo``) and a
SlimPajama-layout corpus of real text, the Python standard library's sources on this machine split
into several ``meta.redpajama_set_name`` sources (see build_corpus), then runs, side by side in one
invocation and ``--runs`` times each (medians are printed):

  raw        each backend's Encoder.encode on the train documents already in memory; with the raw
             section also a bare fastokens encode_batch_flat and gigatoken (one thread), ids compared
  read       what every .jsonl.zst tokenizer pays before encoding, in-process: zstd decompression of
             the train shards alone, then slimtok's reader (decompress, split, JSON parse) alone,
             then the fastest exact text-field parse (simdjson) on lines in memory; with raw, this
             gives the floor (decompress + parse + bare encode) the 1-worker pipeline is held to
  pipeline   one worker per backend from .jsonl.zst to shards/*.bin (ids checked equal to raw)
  tables     the document table's work alone (xxh3-128 of each text + ShardTask._rows) per MB, as
             a share of the pipeline row's CPU per MB in the same run (target <= 2%)
  ceiling    read + encode in memory (nothing written) in 1 process and in 2 at once: what the
             machine gives two such processes during the run, the ceiling for scaling
  scaling    2 workers vs 1 (fastokens if available)
  memory     peak RSS of one worker on a small and on a large shard, and on one huge document
  startup    CPU of a fresh python that only loads tokenizer.json (L), and as ratios to L: `slimtok
             tokenize` of a 1-shard job on a new output root (whole, and to its first batch), its
             relaunch, one worker's start (forked by the launcher, and spawned)
  combine    `slimtok combine` vs `cat` of the same shard files onto the same disk
  claims     no-op tokenization of an N-shard manifest by W worker processes; then `slimtok status`
  growth     claims and status per shard at --growth-shards sizes (10k, 100k), super-linear steps flagged
  dedup      a dedup bucket task's peak RSS (child process) at --dedup-docs job sizes of synthetic
             tables; dedup CPU vs tokenize CPU on the bench corpus; its fsyncs' share of the wall
  mix        slimtok.mix.bench_mix over three roots of the bench corpus, shuffle none and document,
             vs `cat` of the same shard files (+fsync)
  consume    peak extra disk of `combine --consume` vs a copying combine (root sampled every 20 ms)
  stages     combine, dedup (planning, whole run) and mix planning per shard over synthetic roots
             of --growth-shards sizes, super-linear steps flagged (dedup alone runs it for dedup)
  peers      (--peers) datatrove DocumentTokenizer and a nanoGPT-style datasets.map prepare, installed
             into a separate venv under --work; with --megatron-dir, Megatron-LM's
             tools/preprocess_data.py and preprocess_data_fast.py (with and without --use-gigatoken)

Every contender's ids are compared with the raw encoder's. CPU seconds and peak RSS of worker
processes come from wait4(2) of each child, so they cover exactly that process.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

SECTIONS = ("raw", "read", "pipeline", "tables", "ceiling", "scaling", "memory", "startup", "combine", "claims",
            "growth", "dedup", "mix", "consume", "stages", "peers")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Result:
    """One measured run of one contender."""

    name: str
    text_bytes: int
    wall: float
    cpu: float
    tokens: int = 0
    rss: int = 0  # peak resident bytes of the measured process
    ids_sha256: str = ""


@dataclass
class Table:
    """Runs grouped by contender; medians and ratios are taken here."""

    runs: dict[str, list[Result]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, r: Result) -> None:
        """Keep ``r`` and show it at once on stderr (the table comes at the end, on stdout)."""
        self.runs.setdefault(r.name, []).append(r)
        cpu = f", {r.text_bytes / 1e6 / r.cpu:,.1f} MB/CPU-s" if r.cpu else ""
        print(f"[bench] {r.name} (run {len(self.runs[r.name])}): {r.text_bytes / 1e6 / max(r.wall, 1e-9):,.1f} "
              f"MB/wall-s{cpu}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """Keep a note for the end of the table and show it at once on stderr."""
        self.notes.append(text)
        print(f"[bench] {text}", file=sys.stderr, flush=True)

    def median(self, name: str, attr: str) -> float:
        rs = self.runs[name]
        if attr == "mb_wall":
            return statistics.median(r.text_bytes / 1e6 / r.wall for r in rs)
        if attr == "mb_cpu":
            return statistics.median(r.text_bytes / 1e6 / max(r.cpu, 1e-9) for r in rs)
        if attr == "tok_s":
            return statistics.median(r.tokens / r.wall for r in rs)
        return statistics.median(getattr(r, attr) for r in rs)

    def ratio(self, a: str, b: str, attr: str = "mb_cpu") -> str:
        if a not in self.runs or b not in self.runs:
            return "n/a"
        return f"{self.median(a, attr) / self.median(b, attr):.2f}"

    def render(self) -> str:
        head = f"{'contender':34} {'runs':>4} {'MB/wall-s':>10} {'MB/CPU-s':>9} {'tokens/s':>12} {'peak RSS':>9}"
        rows = [head, "-" * len(head)]
        for name, rs in self.runs.items():
            rss = self.median(name, "rss")
            tok_s = f"{self.median(name, 'tok_s'):,.0f}" if rs[0].tokens else "-"
            rows.append(f"{name:34} {len(rs):>4} {self.median(name, 'mb_wall'):>10.1f} "
                        f"{self.median(name, 'mb_cpu') if rs[0].cpu else float('nan'):>9.1f} "
                        f"{tok_s:>12} {(f'{rss / 1e6:.0f} MB' if rss else '-'):>9}")
        return "\n".join(rows + [""] + self.notes)


# -- setup ------------------------------------------------------------------------------------

def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """(corpus folder, tokenizer folder), built under --work unless given."""
    from slimtok.demo import write_qwen3_tokenizer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = Path(args.tokenizer) if args.tokenizer else work / "qwen3"
    if not (tokenizer / "tokenizer.json").exists():
        write_qwen3_tokenizer(tokenizer)
    corpus = Path(args.corpus) if args.corpus else work / f"corpus-{args.mb:g}mb"
    if not corpus.exists():
        build_corpus(corpus, args.mb)
    return corpus, tokenizer


def corpus_source(text: str) -> str:
    """The ``redpajama_set_name`` a stdlib document gets: tests, runnable scripts, or library code."""
    if "import unittest" in text or "from test" in text:
        return "stdlib-tests"
    if "if __name__ ==" in text:
        return "stdlib-scripts"
    return "stdlib-library"


def build_corpus(out: Path, mb: float, chunks: int = 2, shards_per_chunk: int = 4) -> None:
    """A SlimPajama-layout corpus of ~``mb`` MB of text: train/chunk{c}/example_train_{i}.jsonl.zst
    plus one validation and one test holdout, documents dealt round-robin over the shards.

    The text is the standard library's sources (``slimtok.demo.stdlib_documents``); above their
    total size (~30 MB) the documents are repeated, so hashes of a larger corpus have duplicates.
    """
    import orjson
    import zstandard

    from slimtok.demo import stdlib_documents

    pool = stdlib_documents(int(mb * 1e6))
    if not pool:
        raise SystemExit("no standard-library sources found to build a corpus from; pass --corpus")
    docs, size = [], 0
    while size < mb * 1e6:
        for text in pool:
            docs.append(text)
            size += len(text.encode())
            if size >= mb * 1e6:
                break
    paths = [f"train/chunk{c}/example_train_{i}.jsonl.zst" for c in range(1, chunks + 1) for i in range(shards_per_chunk)]
    paths += ["validation/chunk1/example_holdout_0.jsonl.zst", "test/chunk1/example_holdout_0.jsonl.zst"]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cctx = zstandard.ZstdCompressor(level=3)
    for k, rel in enumerate(paths):
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        lines = [orjson.dumps({"text": t, "meta": {"redpajama_set_name": corpus_source(t)}}) for t in docs[k::len(paths)]]
        dest.write_bytes(cctx.compress(b"\n".join(lines) + b"\n"))
    tmp.rename(out)  # a corpus folder that exists is complete


def manifest_of(corpus: Path, out: Path, splits: tuple[str, ...] = ("train",)) -> Path:
    """A manifest of ``corpus`` restricted to ``splits``."""
    from slimtok.manifest import build_manifest, write_manifest

    root, entries = build_manifest(corpus, ("*.jsonl.zst",))
    path, _ = write_manifest([e for e in entries if e.split in splits], out, root)
    return path


def documents(manifest: Path) -> list[str]:
    from slimtok.manifest import read_manifest
    from slimtok.reader import ShardReader

    return [t for e in read_manifest(manifest) for t in ShardReader(e.path).documents()]


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


# -- worker processes measured with wait4 -----------------------------------------------------

def settings_for(manifest: Path, root: Path, tokenizer: Path, backend: str, workers: int = 1, **kw):
    from slimtok.job import TokenizeSettings

    return TokenizeSettings(manifest=str(manifest), output_root=str(root), tokenizer=str(tokenizer),
                            backend=backend, workers=workers, **kw)


def run_workers(settings, workers: int) -> list[tuple[float, float, int]]:
    """Pin the job, run ``workers`` worker processes together; (wall, cpu, peak rss) of each.

    Wall and CPU cover Worker.run() only (start-up is its own section): every child builds its
    Worker, then waits at a barrier until all are built, so the workers run side by side from the
    same moment instead of one starting while another still loads its tokenizer. Peak RSS is the
    child's VmHWM, which unlike wait4's ru_maxrss does not inherit the forking parent's peak.
    """
    from dataclasses import asdict

    from slimtok.job import pin_job

    pin_job(settings)
    spec = json.dumps(asdict(settings))
    runs = start_together(Path(settings.output_root), [["_worker", spec, str(i)] for i in range(workers)])
    # Job wall: first run() start to the last done record, not to the exit of workers that idle-poll
    # for shards held by others (they notice completion only at their next poll).
    done = [json.loads(f.read_text())["finished_at"] for f in (Path(settings.output_root) / "done").rglob("*.json")]
    wall = max(done) - min(r[0] for r in runs)
    return [(wall, r[1], r[2]) for r in runs]


def start_together(folder: Path, commands: list[list[str]]) -> list[list[float]]:
    """Run ``bench.py <command> <report>`` children; each gets ready, waits for the others, then
    runs its timed part and writes its report (a JSON list). Returns the reports in order."""
    folder.mkdir(parents=True, exist_ok=True)
    reports = [folder / f"bench-{i}.json" for i in range(len(commands))]
    go = folder / "bench-go"
    go.unlink(missing_ok=True)
    procs = [subprocess.Popen([sys.executable, __file__, *cmd, str(report)]) for cmd, report in zip(commands, reports)]
    while not all(r.with_suffix(".ready").exists() for r in reports):
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a child exited during start-up; see {folder}")
        time.sleep(0.01)
    go.touch()
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a child exited with {p.returncode}; see {folder}")
    return [json.loads(r.read_text()) for r in reports]


def _ready_then_wait(report: str) -> None:
    """The child's half of start_together's barrier."""
    Path(report).with_suffix(".ready").touch()
    go = Path(report).with_name("bench-go")
    while not go.exists():
        time.sleep(0.002)


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _worker_child(spec: str, index: str, report: str) -> None:
    """A production Worker, timed around run(): writes [start time, cpu, peak rss] to ``report``."""
    from slimtok.job import TokenizeSettings
    from slimtok.worker import Worker

    data = json.loads(spec)
    data["splits"] = tuple(data["splits"])
    worker = Worker(TokenizeSettings(**data), int(index))
    worker.encoder  # loaded lazily at the first claim: load it here, outside the timed part
    _ready_then_wait(report)
    c0, w0 = cpu_now(), time.time()
    code = worker.run()
    Path(report).write_text(json.dumps([w0, cpu_now() - c0, _vm_hwm()]))
    sys.exit(code)


def shard_ids(root: Path, manifest: Path) -> tuple[str, int]:
    """sha256 and token count of all done shards' data, in manifest order."""
    from slimtok.manifest import read_manifest
    from slimtok.protocol import OutputRoot

    r = OutputRoot(root)
    h = hashlib.sha256()
    size = 0
    for e in read_manifest(manifest):
        data = r.data(e.id).read_bytes()
        h.update(data)
        size += len(data)
    return h.hexdigest(), size // 4


# -- sections ---------------------------------------------------------------------------------

def worker_batches(texts: Iterable[str]) -> Iterator[list[str]]:
    """``texts`` in the batches a worker hands its encoder (the worker's own batching rule)."""
    from slimtok.worker import batched

    for batch, _marks in batched((text, None) for text in texts):
        yield batch


RAW_FLAT = "raw encode_batch_flat (bare)"
GIGATOKEN = "raw encode (gigatoken, 1 thread)"


def _timed(fn, batches: list[list[str]]) -> tuple[list, float, float]:
    """(outputs of ``fn`` per batch, wall, cpu) of one pass over ``batches``."""
    c0, w0 = cpu_now(), time.time()
    outputs = [fn(b) for b in batches]
    return outputs, time.time() - w0, cpu_now() - c0


def _sha(flats: Iterable[np.ndarray]) -> str:
    h = hashlib.sha256()
    for flat in flats:
        h.update(np.ascontiguousarray(flat, dtype=np.uint32).data)
    return h.hexdigest()


def _with_eos(ids: np.ndarray, ends: np.ndarray, eos: int) -> np.ndarray:
    """A flat id array with ``eos`` inserted after each document ending at ``ends`` (exclusive)."""
    return np.insert(ids, ends.astype(np.int64), eos)


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
        enc = Encoder(loaded.tokenizer, loaded.policy, "uint32", backend)
        outputs, wall, cpu = _timed(lambda b: enc.encode(b)[0], batches)
        digests[backend] = _sha(outputs)  # outside the timed part: the raw row is the encoder alone
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
    ids = np.concatenate([_with_eos(np.frombuffer(raw, np.uint32), np.frombuffer(ends, np.uint64)[1:], eos)
                          for raw, ends in outputs])
    table.add(Result(RAW_FLAT, nbytes, wall, cpu, int(ids.size), ids_sha256=_sha([ids])))
    if not np.array_equal(ids, ours):
        table.note(f"IDS DIFFER: {RAW_FLAT} vs the Encoder")
    try:
        import awkward as ak
        import gigatoken
    except ImportError as exc:
        table.note(f"gigatoken: no row ({exc}; pip install gigatoken)")
        return
    giga = gigatoken.Tokenizer(str(tokenizer / "tokenizer.json"))
    outputs, wall, cpu = _timed(lambda b: giga.encode_batch(b, parallel=False), batches)
    ids, ends, base = [], [], 0
    for docs in outputs:  # an awkward array of id lists per batch
        counts = np.asarray(ak.num(docs), np.int64)
        ids.append(_with_eos(np.asarray(ak.flatten(docs), np.uint32), np.cumsum(counts), eos))
        ends.append(base + np.cumsum(counts + 1))
        base += int(counts.sum()) + counts.size
    stream, ends = np.concatenate(ids), np.concatenate(ends)
    table.add(Result(GIGATOKEN, nbytes, wall, cpu, int(stream.size)))
    from tokenizers import Tokenizer

    text_tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    text_tok.encode_special_tokens = True
    table.note(f"raw gigatoken {_dist_version('gigatoken')}: "
                       f"{compare_streams(stream, ends, ours, eos, text_tok)}")


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


PARSE_FLOOR = "parse: text field (simdjson)"


def bench_parse(table: Table, paths: list[Path], nbytes: int, docs: int) -> None:
    """The fastest exact access to the text field measured here (pysimdjson's lazy parse, the text
    copied out as a str) over the decompressed lines already in memory: the floor's parse term."""
    import simdjson
    import zstandard

    lines = [line for path in paths for line in zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read()
             .split(b"\n") if line.strip()]
    parser = simdjson.Parser()

    def text(line: bytes) -> str:
        return parser.parse(line).get("text")  # the parsed object dies here, before the next parse

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
                                 [["_ceiling", str(manifest), str(tokenizer), backend, f"{i}/{n}"] for i in range(n)])
        wall = max(r[2] for r in reports) - min(r[0] for r in reports)
        table.add(Result(f"ceiling: read + encode, {n} process{'es' if n > 1 else ''}", nbytes, wall,
                         sum(r[1] for r in reports)))


def _ceiling_child(manifest: str, tokenizer: str, backend: str, part: str, report: str) -> None:
    """Read and encode shards ``i::n`` of the manifest in the worker's batch sizes; report
    [start, cpu, end]."""
    from slimtok.manifest import read_manifest
    from slimtok.reader import ShardReader
    from slimtok.tokenizer import Encoder, load_tokenizer

    i, n = map(int, part.split("/"))
    loaded = load_tokenizer(tokenizer)
    enc = Encoder(loaded.tokenizer, loaded.policy, "uint32", backend)
    paths = [e.path for e in read_manifest(Path(manifest))][i::n]
    _ready_then_wait(report)
    c0, w0 = cpu_now(), time.time()
    for batch in worker_batches(str(text) for path in paths for text, _source in ShardReader(path).records()):
        enc.encode(batch)
    Path(report).write_text(json.dumps([w0, cpu_now() - c0, time.time()]))


def read_bound(table: Table, raw: str, read: str) -> str:
    """pipeline/raw per CPU-s if the pipeline did nothing but ``read`` besides encoding."""
    if raw not in table.runs or read not in table.runs:
        return "n/a"
    raw_s, read_s = 1 / table.median(raw, "mb_cpu"), 1 / table.median(read, "mb_cpu")
    return f"{raw_s / (raw_s + read_s):.2f}"


def bench_pipeline(table: Table, work: Path, manifest: Path, tokenizer: Path, backend: str, nbytes: int,
                   workers: int, label: str, run: int, **kw) -> tuple[str, int]:
    root = work / f"out-{label.replace(' ', '_')}-{run}"
    shutil.rmtree(root, ignore_errors=True)
    stats = run_workers(settings_for(manifest, root, tokenizer, backend, workers, **kw), workers)
    digest, tokens = shard_ids(root, manifest)
    table.add(Result(label, nbytes, max(s[0] for s in stats), sum(s[1] for s in stats), tokens,
                     max(s[2] for s in stats), digest))
    return digest, tokens


def big_shard(src: list[str], path: Path, target_bytes: int, single: bool = False) -> int:
    """Write a shard of about ``target_bytes`` text from ``src`` (one document if ``single``)."""
    import orjson
    import zstandard

    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as out:
        if single:
            parts, size = [], 0
            while size < target_bytes:
                for t in src:
                    parts.append(t)
                    size += len(t.encode()) + 2
                    if size >= target_bytes:
                        break
            text = "\n\n".join(parts)
            out.write(orjson.dumps({"text": text}) + b"\n")
            return len(text.encode())
        while written < target_bytes:
            for t in src:
                out.write(orjson.dumps({"text": t}) + b"\n")
                written += len(t.encode())
                if written >= target_bytes:
                    break
    return written


def bench_memory(table: Table, work: Path, texts: list[str], tokenizer: Path, backend: str, sizes: list[int],
                 huge: int) -> None:
    from slimtok.manifest import ShardEntry, write_manifest

    for size in sizes + ([huge] if huge else []):
        single = size == huge
        name = f"huge-{size >> 20}mb-doc" if single else f"shard-{size >> 20}mb"
        path = work / "memory" / "train" / "chunk1" / f"{name}.jsonl.zst"
        nbytes = big_shard(texts, path, size, single) if not path.exists() else size
        man_dir = work / "memory" / f"m-{name}"
        entry = ShardEntry(id=f"train/chunk1/{name}", split="train", chunk=1, index=0, path=str(path),
                           size=path.stat().st_size)
        manifest, _ = write_manifest([entry], man_dir, work / "memory")
        label = f"memory {name} ({backend})"
        root = work / f"out-{name}"
        shutil.rmtree(root, ignore_errors=True)
        stats = run_workers(settings_for(manifest, root, tokenizer, backend), 1)
        digest, tokens = shard_ids(root, manifest)
        table.add(Result(label, nbytes, stats[0][0], stats[0][1], tokens, stats[0][2], digest))
        if single:
            table.note(f"huge document: ids {'identical' if _whole_doc_digest(path, tokenizer) == digest else 'DIFFERENT'} "
                               "to one whole-document fastokens encode (separate process)")


def _whole_doc_digest(path: Path, tokenizer: Path) -> str:
    """sha256 of tokens(doc)+[eos] for the one document in ``path``, encoded in one call, in a child."""
    code = ("import sys,hashlib,numpy as np,orjson,zstandard,fastokens;"
            "t=orjson.loads(zstandard.ZstdDecompressor().stream_reader(open(sys.argv[1],'rb')).read())['text'];"
            "f=fastokens.Tokenizer.from_file(sys.argv[2]);ids,_=f.encode_batch_flat([t],False,True);"
            "a=np.append(np.frombuffer(ids,np.uint32),np.uint32(int(sys.argv[3])));"
            "print(hashlib.sha256(a.tobytes()).hexdigest())")
    from slimtok.tokenizer import load_tokenizer

    eos = load_tokenizer(str(tokenizer)).eos_token_id
    return subprocess.run([sys.executable, "-c", code, str(path), str(tokenizer / "tokenizer.json"), str(eos)],
                          check=True, capture_output=True, text=True).stdout.strip()


def child_cpu(command: list[str]) -> float:
    """CPU seconds (user + system) of ``command`` and every descendant it waited for."""
    import resource

    def used() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    c0 = used()
    subprocess.run(command, check=True, capture_output=True)
    return used() - c0


#: Runs `slimtok tokenize` (argv[2:]) in this fresh python, the command's own code unchanged, and
#: writes to argv[1] + ".first" two CPU times as JSON: the launcher's own until it starts its
#: workers, and its forked worker's from the fork (a new process's CPU clock starts at zero) to
#: the end of its first encoded batch. A spawned worker would not run the patch: no file.
_FIRST_BATCH_DRIVER = """
import os, sys, time
from slimtok import launch
mark = sys.argv[1] + ".first"
launcher = []
real_start = launch._start
def start(*args, **kwargs):
    launcher.append(time.process_time())
    # patched only now: importing the encoder (numpy) earlier would change how the launcher starts
    from slimtok.tokenizer import encoder
    real_encode = encoder.Encoder.encode
    def encode(self, texts):
        ids = real_encode(self, texts)
        if not os.path.exists(mark):
            with open(mark, "w") as f:
                f.write(repr([launcher[0], time.process_time()]))
        return ids
    encoder.Encoder.encode = encode
    return real_start(*args, **kwargs)
launch._start = start
sys.argv = ["slimtok", *sys.argv[2:]]
from slimtok.cli import main
main()
"""


def bench_startup(table: Table, work: Path, manifest: Path, tokenizer: Path, backend: str, runs: int) -> None:
    """Issue 15 target 1, each as a ratio to L = CPU of a fresh python that only loads tokenizer.json.

    Each run times L; the two loads a worker can do on the job's own tokenizer copy (tokenizers,
    fastokens), each alone in a fresh python; `slimtok tokenize` of a 1-shard job of one small
    document on a new output root: the whole run, and up to the end of its first encoded batch
    (:data:`_FIRST_BATCH_DRIVER`), once per backend; the launcher's own share, `pin_job` alone in a
    fresh python on another new root; the same command relaunched, all shards done. A worker's
    start is measured both ways a launcher starts one: forked (the first-batch run's worker share)
    and spawned (a fresh python builds the Worker and encodes its first batch).
    """
    from dataclasses import asdict

    from slimtok.manifest import ShardEntry, read_manifest, write_manifest
    from slimtok.reader import ShardReader

    base = work / "startup"
    shutil.rmtree(base, ignore_errors=True)
    one = base / "data" / "train" / "chunk1" / "example_train_0.jsonl"
    one.parent.mkdir(parents=True)
    first = next(iter(read_manifest(manifest)))
    text = next(t for t, _ in ShardReader(first.path).records())
    one.write_bytes(json.dumps({"text": str(text)[:2000]}).encode() + b"\n")
    tiny, _ = write_manifest([ShardEntry(id="train/chunk1/example_train_0", split="train", chunk=1, index=0,
                                         path=str(one), size=one.stat().st_size)], base / "m", base / "data")
    load_code = "import sys; from tokenizers import Tokenizer; Tokenizer.from_file(sys.argv[1])"
    fast_code = "import sys, fastokens; fastokens.Tokenizer.from_file(sys.argv[1])"
    settings_code = "import sys,json;from slimtok.job import TokenizeSettings;d=json.loads(sys.argv[1]);" \
                    "d['splits']=tuple(d['splits']);s=TokenizeSettings(**d);"
    pin_code = settings_code + "from slimtok.job import pin_job;pin_job(s)"
    worker_code = settings_code + "from slimtok.worker import Worker;w=Worker(s,0);w.encoder.encode(['The first batch.'])"
    # What a user gets by default (--backend auto: the worker starts on the reference and loads
    # fastokens once its encoding has paid for it), and each backend asked for explicitly.
    backends = ["auto", *dict.fromkeys([backend, "tokenizers"])]
    rows: dict[str, list[float]] = {k: [] for k in ("L", "load tokenizers", "load fastokens", "new", "pin",
                                                    "relaunch", *(f"{k} {b}" for k in ("first", "forked", "spawned")
                                                                  for b in backends))}
    if backend == "tokenizers":
        del rows["load fastokens"]

    def tokenize(root: Path, b: str) -> list[str]:
        return ["tokenize", "--manifest", str(tiny), "--output-root", str(root), "--tokenizer", str(tokenizer),
                "--spawn-workers", "1", "--backend", b, "--quiet"]

    for run in range(runs):
        rows["L"].append(child_cpu([sys.executable, "-c", load_code, str(tokenizer / "tokenizer.json")]))
        root = base / f"out-{run}"
        command = [sys.executable, "-m", "slimtok", *tokenize(root, "auto")]
        rows["new"].append(child_cpu(command))
        rows["relaunch"].append(child_cpu(command))
        copy = str(root / "tokenizer" / "tokenizer.json")  # the form a worker loads
        rows["load tokenizers"].append(child_cpu([sys.executable, "-c", load_code, copy]))
        if "load fastokens" in rows:
            rows["load fastokens"].append(child_cpu([sys.executable, "-c", fast_code, copy]))
        wroot = base / f"worker-{run}"
        spec = json.dumps(asdict(settings_for(tiny, wroot, tokenizer, "auto")))
        rows["pin"].append(child_cpu([sys.executable, "-c", pin_code, spec]))
        for b in backends:
            spec = json.dumps(asdict(settings_for(tiny, wroot, tokenizer, b)))
            rows[f"spawned {b}"].append(child_cpu([sys.executable, "-c", worker_code, spec]))
            froot = base / f"first-{b}-{run}"
            child_cpu([sys.executable, "-c", _FIRST_BATCH_DRIVER, str(froot), *tokenize(froot, b)])
            launcher, worker = _first_batch_cpu(froot)
            rows[f"first {b}"].append(launcher + worker)
            rows[f"forked {b}"].append(worker)
    med = {k: statistics.median(v) for k, v in rows.items()}
    table.note(f"startup: L (fresh python, tokenizers loads tokenizer.json) {med['L']:.2f} CPU-s "
               f"(median of {runs})")
    for key, what, target in (("load tokenizers", "fresh python, tokenizers loads the job's copy", None),
                              ("load fastokens", "fresh python, fastokens loads the job's copy", None),
                              ("new", "`slimtok tokenize` (--backend auto), 1-shard job, new output root, whole run",
                               None),
                              ("pin", "the launcher's share: pin_job alone on a new root", None),
                              *((f"first {b}", f"new job to the end of its first encoded batch (--backend {b})",
                                 2 if b == "auto" else None) for b in backends),
                              ("relaunch", "relaunch, all shards done", 1),
                              *((f"forked {b}", f"one forked worker ({b}): from its fork to its first encoded batch",
                                 1.5) for b in backends),
                              *((f"spawned {b}", f"one spawned worker ({b}): fresh python, Worker() + first encoded "
                                 "batch", 1.5) for b in backends)):
        if key not in med:
            continue
        ratio = med[key] / med["L"]
        verdict = f" (target <= {target}: {'met' if ratio <= target else 'NOT met'})" if target else ""
        table.note(f"startup: {what}: {med[key]:.2f} CPU-s = {ratio:.2f} x L{verdict}; "
                   f"runs {[round(x, 2) for x in rows[key]]}")


def _first_batch_cpu(root: Path) -> tuple[float, float]:
    """(the launcher's CPU until it started its workers, its forked worker's until the end of the
    first encoded batch), as :data:`_FIRST_BATCH_DRIVER` wrote them beside ``root``."""
    mark = Path(f"{root}.first")
    if not mark.exists():
        raise RuntimeError(f"{root}: no first-batch mark; the launcher did not fork its worker (see its log)")
    launcher, worker = json.loads(mark.read_text())
    return launcher, worker


def bench_tables(table: Table, manifest: Path, tokenizer: Path, backend: str, nbytes: int) -> None:
    """The document table's work alone, as a worker does it, over the train documents in memory.

    Timed: xxh3-128 of each document's UTF-8 text and ``ShardTask._rows`` (the production code,
    on a task holding only what it reads), batch by batch in the worker's batch sizes. The token
    counts come from one encode done before the timed part; the timed loop repeats for ~1 CPU-s.
    """
    from slimtok.manifest import read_manifest
    from slimtok.reader import ShardReader
    from slimtok.tokenizer import Encoder, load_tokenizer
    from slimtok.worker import ShardTask, batched
    from slimtok.worker.task import Progress

    import xxhash

    records = ((str(t), s) for e in read_manifest(manifest)
               for t, s in ShardReader(e.path, source_key="meta.redpajama_set_name").records())
    loaded = load_tokenizer(str(tokenizer))
    enc = Encoder(loaded.tokenizer, loaded.policy, "uint32", backend)
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


def timed_cat(files: list[Path], dest: Path) -> float:
    """Wall seconds of `cat` of ``files`` into a fresh ``dest``, fsync included (the page cache
    flushed first, so no earlier write is paid for here)."""
    dest.unlink(missing_ok=True)
    os.sync()
    w0 = time.time()
    with open(dest, "wb") as out:
        subprocess.run(["cat", *map(str, files)], stdout=out, check=True)
        os.fsync(out.fileno())
    return time.time() - w0


def bench_combine(table: Table, work: Path, root: Path, runs: int) -> None:
    from slimtok.combine import combine
    from slimtok.protocol import OutputRoot

    r = OutputRoot(root)
    files = sorted(r.root.joinpath("shards").rglob("*.bin"))
    nbytes = sum(f.stat().st_size for f in files)
    for _ in range(runs):
        dest = work / "cat.bin"
        table.add(Result("cat shards (+fsync)", nbytes, timed_cat(files, dest), 0.0))
        for verify in (False, True):
            r.combined("train").unlink(missing_ok=True)
            os.sync()
            c0, w0 = cpu_now(), time.time()
            combine(root, ["train"], verify=verify, log=lambda s: None)
            table.add(Result(f"combine ({'sha256 verify' if verify else '--no-verify'})", nbytes,
                             time.time() - w0, cpu_now() - c0))
    if r.combined("train").read_bytes() != dest.read_bytes():
        raise SystemExit("combine output differs from cat of the shards")


def bench_claims(table: Table, work: Path, shards: int, workers: int) -> tuple[Path, float]:
    """No-op tokenization of ``shards`` one-line shards by ``workers`` processes; (output root left, CPU-s).

    Per shard: the wall seconds inside a worker from claim to release (claim, read, commit, done
    record), and the CPU of all worker processes (start-up included) divided by the shard count;
    with more processes than cores the wall figure is mostly waiting for a core.
    """
    from dataclasses import asdict

    from slimtok.manifest import ShardEntry, write_manifest
    from slimtok.job import pin_job

    base = work / "claims"
    shutil.rmtree(base, ignore_errors=True)
    (base / "data").mkdir(parents=True)
    entries = []
    for i in range(shards):  # one file per shard: a manifest naming one file twice is refused
        path = base / "data" / f"{i}.jsonl"
        path.write_bytes(b'{"text": "x"}\n')
        entries.append(ShardEntry(id=f"train/chunk{1 + i // 6000}/example_train_{i}", split="train",
                                  chunk=1 + i // 6000, index=i, path=str(path), size=path.stat().st_size))
    manifest, _ = write_manifest(entries, base / "m", base / "data")
    tok = base / "tok"
    _tiny_tokenizer(tok)
    root = base / "out"
    settings = settings_for(manifest, root, tok, "tokenizers", workers)
    pin_job(settings)
    spec = json.dumps(asdict(settings))
    w0 = time.time()
    procs = [subprocess.Popen([sys.executable, __file__, "_noop_worker", spec, str(i), str(base / f"t{i}.json")])
             for i in range(workers)]
    cpu = 0.0
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"no-op worker {p.args[4]} failed; see its traceback above")
    wall = time.time() - w0
    per = [x for i in range(workers) for x in json.loads((base / f"t{i}.json").read_text())]
    done = sum(1 for _ in (root / "done").rglob("*.json"))
    table.note(f"claims: {shards} shards, {workers} processes: {done} done in {wall:.1f} s wall, "
                       f"{cpu:.1f} CPU-s in all = {cpu / shards * 1e3:.2f} ms CPU per shard; per shard "
                       f"claim+bookkeeping wall median {statistics.median(per) * 1e3:.2f} ms, "
                       f"p90 {statistics.quantiles(per, n=10)[-1] * 1e3:.2f} ms ({len(per)} timed)")
    return root, cpu


def bench_status(table: Table, root: Path, shards: int) -> float:
    """`slimtok status` over an output root of ``shards`` done shards: first with no roll-up cache, then
    warm; returns the cold wall seconds."""
    seconds = []
    for attempt in ("cold", "warm"):
        w0 = time.time()
        subprocess.run([sys.executable, "-m", "slimtok", "status", "--output-root", str(root)], check=True,
                       capture_output=True)
        seconds.append(time.time() - w0)
        table.note(f"status over {shards} shards ({attempt} roll-up): {seconds[-1]:.2f} s "
                           "including interpreter start")
    return seconds[0]


def bench_growth(table: Table, work: Path, sizes: list[int], workers: int) -> None:
    """Issue 15 target 4: claims and cold `slimtok status` per shard at each manifest size; a step
    whose per-shard cost grows more than 1.5x is flagged super-linear."""
    costs: dict[str, list[float]] = {"claims CPU": [], "status wall": []}
    for shards in sizes:
        root, cpu = bench_claims(table, work, shards, workers)
        costs["claims CPU"].append(cpu / shards)
        costs["status wall"].append(bench_status(table, root, shards) / shards)
    for what, per in costs.items():
        table.note(growth_note(f"{what} per shard ({workers} workers)", sizes, per))


def growth_note(what: str, sizes: list[int], per: list[float]) -> str:
    """One line of per-shard costs (seconds) at each size, flagging any step that grows > 1.5x."""
    steps = [f"{n:,}: {c * 1e3:.3f} ms" for n, c in zip(sizes, per)]
    flags = [f"{n0:,} -> {n1:,} x{c1 / c0:.2f}" for n0, n1, c0, c1 in zip(sizes, sizes[1:], per, per[1:])
             if c1 > 1.5 * c0]
    return (f"growth: {what} {'; '.join(steps)}; "
            f"{'SUPER-LINEAR: ' + ', '.join(flags) if flags else 'no super-linear step'}")


def _tiny_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"x": 0, "<unk>": 1, "<|endoftext|>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}')


def _noop_worker_child(spec: str, index: str, out: str) -> None:
    """A real Worker whose encoder is trivial; records the seconds of every shard it processed."""
    from slimtok.job import TokenizeSettings
    from slimtok.worker import loop as wmod

    class NoopEncoder:
        report = None
        backend = "none"
        chars = {"tokenizers": 0, "fastokens": 0}

        def __init__(self, *a, **k):
            self.report = type("R", (), {"requested": "none", "backend": "none", "verification": "no-op"})()

        def encode(self, texts):
            return np.full(len(texts), 2, dtype=np.uint32), [1] * len(texts)

    wmod.Encoder = NoopEncoder
    data = json.loads(spec)
    data["splits"] = tuple(data["splits"])
    w = wmod.Worker(TokenizeSettings(**data), int(index))
    times: list[float] = []
    process = w._process

    def timed(entry, claim):
        process(entry, claim)
        times.append(time.perf_counter() - w._t0)

    attempt = w._attempt

    def timed_attempt(entry):
        w._t0 = time.perf_counter()
        return attempt(entry)

    w._process, w._attempt = timed, timed_attempt
    code = w.run()
    Path(out).write_text(json.dumps(times))
    sys.exit(code)


# -- dedup, mix, consume and the stages' cost growth (issues 15, 16, 17, 18) --------------------

def tree_bytes(folder: Path) -> int:
    """Bytes allocated to the files under ``folder`` (st_blocks: what the filesystem really holds)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:  # moved or deleted between listing and stat
                pass
    return total


class PeakSampler:
    """Calls ``measure()`` every ``every`` seconds on a thread while in the ``with`` block; keeps the
    largest value and the number of samples."""

    def __init__(self, measure, every: float = 0.02):
        import threading

        self.measure, self.every = measure, every
        self.peak, self.samples = measure(), 1
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            self.peak, self.samples = max(self.peak, self.measure()), self.samples + 1

    def __enter__(self) -> "PeakSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak, self.samples = max(self.peak, self.measure()), self.samples + 1


def tokenized_root(work: Path, name: str, corpus: Path, tokenizer: Path, backend: str,
                   entries=None, splits: tuple[str, ...] = ("train",), fresh: bool = False) -> tuple[Path, float]:
    """An output root of ``entries`` (default: the corpus's ``splits``) tokenized by 1 worker, made once
    per --work unless ``fresh``; (root, the worker's CPU seconds, 0.0 when an earlier run made it)."""
    from slimtok.manifest import build_manifest, write_manifest

    root = work / f"out-{name}"
    if (root / "bench-made").exists() and not fresh:
        return root, 0.0
    shutil.rmtree(root, ignore_errors=True)
    if entries is None:
        _, found = build_manifest(corpus, ("*.jsonl.zst",))
        entries = [e for e in found if e.split in splits]
    manifest, _ = write_manifest(entries, work / f"m-{name}", corpus)
    runs = run_workers(settings_for(manifest, root, tokenizer, backend), 1)
    (root / "bench-made").touch()
    return root, runs[0][1]


def fsync_seconds(folder: Path, n: int = 20) -> float:
    """Median seconds of one small write + fsync in ``folder`` (the disk dedup's units write to)."""
    path, times = folder / "bench-fsync", []
    with open(path, "wb") as f:
        for _ in range(n):
            f.write(b"x" * 512)
            t0 = time.perf_counter()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t0)
    path.unlink()
    return statistics.median(times)


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _bucket_task_child(root: str, bucket: str, report: str) -> None:
    """One bucket unit's work (the production bucket_rows + find_drops) in a fresh process, after
    what a dedup worker holds anyway (its inputs); reports the peak RSS the task adds."""
    from slimtok.dedup.plan import read_inputs, unit_count
    from slimtok.dedup.units import bucket_rows, find_drops
    from slimtok.protocol import DedupPlan, DedupUnitRecord, OutputRoot, dedup_plan_path, dedup_unit_done, read_record

    r = OutputRoot(root)
    plan = read_record(dedup_plan_path(r), DedupPlan)
    assert plan is not None, "the bench runs the dedup before measuring a bucket"
    inputs = read_inputs(r)
    b = int(bucket)
    # a worker does bucket after bucket: one task first pays one-time costs (lazy imports, allocator
    # arenas); the figure is the next one's, and the first one's is reported beside it
    first = _task_growth(lambda: find_drops(bucket_rows(r, plan, (b + 1) % plan.buckets)))
    base = _proc_status("VmRSS")
    grown = _task_growth(lambda: find_drops(bucket_rows(r, plan, b)))  # rows die inside find_drops, as in a worker
    peak = _proc_status("VmHWM")
    scatter = [read_record(dedup_unit_done(r, "scatter", k), DedupUnitRecord) for k in range(unit_count(plan, "scatter"))]
    rows = sum(s.offsets[b + 1] - s.offsets[b] for s in scatter if s is not None)
    Path(report).write_text(json.dumps({"base": base, "peak": peak, "grown": grown, "first": first, "rows": rows,
                                        "shards": len(inputs.entries)}))


def _task_growth(task: Callable[[], object]) -> int:
    """Bytes by which ``task`` raises this process's peak RSS above its RSS at the start."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the current RSS
    base = _proc_status("VmRSS")
    task()
    return _proc_status("VmHWM") - base


def bench_dedup_scale(table: Table, work: Path, sizes: list[int], docs_per_shard: int, buckets: int | None) -> None:
    """Issue 18: a bucket task's peak RSS at jobs of ``sizes`` documents (synthetic tables), each
    measured in a child process on three buckets; the target is <= 64 MB per 100 M documents."""
    from slimtok.dedup import run_dedup
    from slimtok.dedup.bench import synthetic_root

    for docs in sizes:
        folder = work / f"dedup-{docs}"
        shutil.rmtree(folder, ignore_errors=True)
        w0 = time.time()
        root = synthetic_root(folder, max(1, docs // docs_per_shard), docs_per_shard)
        built = time.time() - w0
        c0, w0 = cpu_now(), time.time()
        job = run_dedup(root.root, buckets, 1)
        wall, cpu = time.time() - w0, cpu_now() - c0
        count = job.buckets  # the pinned count (--buckets auto picks it from the job's size)
        grown = []
        for b in dict.fromkeys((0, count // 2, count - 1)):
            report = folder / f"bucket-{b}.json"
            subprocess.run([sys.executable, __file__, "_bucket_task", str(folder), str(b), str(report)], check=True)
            grown.append(json.loads(report.read_text()))
        worst = max(grown, key=lambda g: g["grown"])
        task = worst["grown"]
        budget = 64e6 * job.documents / 100e6
        disk = tree_bytes(folder)
        table.note(
            f"dedup scale: {job.documents:,} docs in {job.shards:,} shards ({docs_per_shard:,}/shard), {count} "
            f"buckets: built {built:.0f} s, dedup 1 worker {wall:.1f} s wall {cpu:.1f} CPU-s "
            f"({cpu / job.documents * 1e9:.0f} ns CPU/doc), {disk / 1e9:.2f} GB on disk; bucket task (worst of 3, "
            f"{worst['rows']:,} rows) adds {task / 1e6:.1f} MB peak RSS over the worker's "
            f"{worst['base'] / 1e6:.0f} MB (process peak {worst['peak'] / 1e6:.0f} MB; the worker's first bucket "
            f"task adds {max(g['first'] for g in grown) / 1e6:.1f} MB) = "
            f"{task / job.documents * 100e6 / 1e6:.1f} MB per 100 M docs (target <= 64: "
            f"{'met' if task <= budget else 'NOT met'})")
        shutil.rmtree(folder)  # 48 bytes a document of tables and scatter files


def bench_dedup_cost(table: Table, work: Path, corpus: Path, tokenizer: Path, backend: str, buckets: int) -> None:
    """Issue 18: dedup's CPU against tokenize's on the bench corpus (all splits), same run, with
    ``buckets`` and with 4 buckets (fewer units: the per-unit fixed cost is what a small job pays);
    and how much of dedup's wall its fsyncs (4 per unit) can explain."""
    from slimtok.dedup import run_dedup
    from slimtok.dedup.plan import unit_count
    from slimtok.protocol import DedupPlan, OutputRoot, dedup_plan_path, read_record

    root, tok_cpu = tokenized_root(work, "dedup-all", corpus, tokenizer, backend, splits=("train", "validation", "test"),
                                   fresh=True)  # tokenize is timed in this run
    fsync = fsync_seconds(root)
    for b in dict.fromkeys((None, buckets, 4)):  # None: --buckets auto
        shutil.rmtree(root / "dedup", ignore_errors=True)
        c0, w0 = time.process_time(), time.time()  # not os.times: its 10 ms ticks are too coarse here
        job = run_dedup(root, b, 1)
        wall, cpu = time.time() - w0, time.process_time() - c0
        plan = read_record(dedup_plan_path(OutputRoot(root)), DedupPlan)
        assert plan is not None
        units = sum(unit_count(plan, phase) for phase in ("scatter", "bucket", "gather"))
        label = f"{plan.buckets} buckets" + (" (auto)" if b is None else "")
        table.notes += [
            f"dedup cost, {label}: bench corpus {job.documents:,} docs in {job.shards} shards; tokenize 1 worker "
            f"{tok_cpu:.2f} CPU-s (Worker.run); dedup in-process {cpu:.3f} CPU-s ({wall:.2f} s wall, {units} units, "
            f"{cpu / units * 1e3:.2f} ms CPU per unit) = {cpu / tok_cpu:.1%} of tokenize (target <= 5%: "
            f"{'met' if cpu <= 0.05 * tok_cpu else 'NOT met'})",
            f"dedup fsyncs, {label}: {units} units x 4 fsyncs x {fsync * 1e3:.2f} ms (median small fsync on this "
            f"disk) = {units * 4 * fsync:.2f} s of the {wall:.2f} s wall ({units * 4 * fsync / wall:.0%})"]
    shutil.rmtree(root / "dedup")
    command = child_cpu([sys.executable, "-m", "slimtok", "dedup", "--output-root", str(root), "--spawn-workers", "1",
                         "--quiet"])
    table.note(f"dedup cost: the `slimtok dedup --spawn-workers 1` command (--buckets auto) with its "
                       f"interpreter: {command:.2f} CPU-s = {command / tok_cpu:.1%} of tokenize")


def bench_stage_growth(table: Table, work: Path, sizes: list[int], stages: tuple[str, ...]) -> None:
    """Issue 15 target 4 / issue 18: per-shard cost of combine, dedup (planning; the whole run, i.e.
    claiming and doing every unit) and mix planning over synthetic roots of ``sizes`` shards of
    10 documents; a step whose per-shard cost grows more than 1.5x is flagged super-linear."""
    from slimtok.combine import combine
    from slimtok.dedup import run_dedup
    from slimtok.dedup.bench import synthetic_root
    from slimtok.dedup.plan import make_plan, read_inputs
    from slimtok.mix import load_spec, mix

    costs: dict[str, list[float]] = {}
    for shards in sizes:
        folder = work / f"stages-{shards}"
        shutil.rmtree(folder, ignore_errors=True)
        root = synthetic_root(folder / "root", shards, 10, data="combine" in stages)
        timed: list[tuple[str, Callable[[], object]]] = []
        if "combine" in stages:
            timed.append(("combine (sha256 verify)", lambda: combine(root.root, verify=True, log=lambda s: None)))
        if "dedup" in stages:
            timed += [("dedup planning", lambda: make_plan(read_inputs(root), 256)),
                      ("dedup run (plan, claim and do every unit)", lambda: run_dedup(root.root, 256, 1))]
        if "mix" in stages:
            spec = folder / "mix.yaml"
            spec.write_text(f"seed: 1\nshuffle: document\nsources:\n  - {{name: s, root: {root.root}, "
                            f"tokens: {shards * 500}}}\n")
            timed.append(("mix planning", lambda: mix(load_spec(spec), None)))
        for what, run in timed:
            c0, w0 = cpu_now(), time.time()
            run()
            wall, cpu = time.time() - w0, cpu_now() - c0
            costs.setdefault(what, []).append(cpu / shards)
            table.note(f"stages: {what} over {shards:,} shards: {wall:.2f} s wall, {cpu:.2f} CPU-s")
        shutil.rmtree(folder)
    for what, per in costs.items():
        table.note(growth_note(f"{what} CPU per shard", sizes, per))


def bench_mix_section(table: Table, work: Path, corpus: Path, tokenizer: Path, backend: str, runs: int,
                      worker_counts: list[int]) -> None:
    """Issue 17: `slimtok.mix.bench_mix` over three roots tokenized from the bench corpus (its train
    shards dealt round-robin), every document taken once, with `shuffle: none` and `document`, with
    each of ``worker_counts``, against `cat` of the same shard files onto the same disk (+fsync).
    Chunks of 1/8 of the documents, so that workers have chunks to share (a SlimPajama-sized mix
    has thousands of its default 65,536-document chunks)."""
    from slimtok.manifest import build_manifest
    from slimtok.mix import bench_mix
    from slimtok.protocol import DoneRecord, read_record

    _, found = build_manifest(corpus, ("*.jsonl.zst",))
    train = [e for e in found if e.split == "train"]
    roots = [tokenized_root(work, f"mix-{i}", corpus, tokenizer, backend, train[i::3])[0] for i in range(3)]
    records = [[read_record(p, DoneRecord) for p in sorted((r / "done").rglob("*.json"))] for r in roots]
    files = [r / rec.file for r, recs in zip(roots, records) for rec in recs]
    nbytes = sum(f.stat().st_size for f in files)
    sources = "".join(f"  - {{name: part{i}, root: {r}, tokens: {sum(rec.tokens for rec in recs)}}}\n"
                      for i, (r, recs) in enumerate(zip(roots, records)))
    chunk = max(1, sum(rec.documents for recs in records for rec in recs) // 8)
    for _ in range(runs):
        table.add(Result("cat of the mix's shards (+fsync)", nbytes, timed_cat(files, work / "mix-cat.bin"), 0.0))
        for shuffle in ("none", "document"):
            spec = work / f"mix-{shuffle}.yaml"
            spec.write_text(f"seed: 7\nshuffle: {shuffle}\nchunk_documents: {chunk}\nsources:\n{sources}")
            for workers in worker_counts:
                out_root = work / f"mix-out-{shuffle}-{workers}"
                shutil.rmtree(out_root, ignore_errors=True)
                os.sync()
                c0 = cpu_now()
                got = bench_mix(spec, out_root, workers)
                if got["bytes"] != nbytes:
                    raise SystemExit(f"mix wrote {got['bytes']} bytes, the shards hold {nbytes}: not every document "
                                     "was taken once")
                table.add(Result(f"mix shuffle: {shuffle} ({workers} workers)", got["bytes"], got["seconds"],
                                 cpu_now() - c0))
    for shuffle, target in (("none", 0.8), ("document", 0.5)):
        for workers in worker_counts:
            ratio = table.ratio(f"mix shuffle: {shuffle} ({workers} workers)", "cat of the mix's shards (+fsync)",
                                "mb_wall")
            table.note(f"ratio mix shuffle: {shuffle} ({workers} workers) / cat per wall-s: {ratio} over "
                               f"{nbytes / 1e6:.1f} MB (target >= {target}: "
                               f"{'met' if float(ratio) >= target else 'NOT met'})")


def bench_consume(table: Table, work: Path, corpus: Path, tokenizer: Path, backend: str) -> None:
    """Issue 16: the peak extra disk of `combine --consume` against a copying combine, each on its own
    copy of one tokenized root, sampling the root's allocated bytes every 20 ms."""
    from slimtok.combine import combine

    source, _ = tokenized_root(work, "consume", corpus, tokenizer, backend)
    shards = sorted((source / "shards").rglob("*.bin"))
    largest, split = max(f.stat().st_size for f in shards), sum(f.stat().st_size for f in shards)
    combined = {}
    for consume in (False, True):
        root = work / f"consume-{'move' if consume else 'copy'}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(source, root)
        os.sync()
        before = tree_bytes(root)
        w0 = time.time()
        with PeakSampler(lambda: tree_bytes(root)) as sampled:
            combine(root, ["train"], consume=consume, log=lambda s: None)
        wall = time.time() - w0
        combined[consume] = hashlib.sha256((root / "train.bin").read_bytes()).hexdigest()
        table.note(
            f"consume: combine {'--consume' if consume else '(copying)'} of {len(shards)} shards, {split / 1e6:.1f} MB "
            f"(largest shard {largest / 1e6:.2f} MB): peak extra disk {(sampled.peak - before) / 1e6:.2f} MB = "
            f"{(sampled.peak - before) / largest:.2f} x the largest shard, {(sampled.peak - before) / split:.2f} x the "
            f"split; after: {(tree_bytes(root) - before) / 1e6:+.2f} MB; {wall:.2f} s, {sampled.samples} samples")
    if combined[False] != combined[True]:
        raise SystemExit("combine --consume wrote another train.bin than the copying combine")


# -- peers: datatrove and a nanoGPT-style prepare, in a venv of their own -----------------------

PEER_PROCS = 2  # processes each peer gets; the same as the slimtok row it is compared with
PEER_TIMEOUT = 1800  # seconds one peer run may take
PEER_PACKAGES = ("datatrove", "datasets", "zstandard", "orjson")

# Shared by both drivers: read the job, time the peer's work, report wall, CPU (this process and
# every descendant it has reaped, i.e. the pool workers) and the peak RSS of the largest of them.
# The driver's own peak is its VmHWM: its ru_maxrss would start from the bench's RSS at the fork
# that launched it (Linux keeps the larger across exec); its children's ru_maxrss is their own.
PEER_PRELUDE = """
import json, resource, sys, time
from pathlib import Path
job = json.loads(Path(sys.argv[1]).read_text())

def own_peak():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0

def usage():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime, max(own_peak(), c.ru_maxrss * 1024)

def report(wall, cpu0):
    cpu, rss = usage()
    Path(job["report"]).write_text(json.dumps({"wall": wall, "cpu": cpu - cpu0, "rss": rss}))
"""

# datatrove: JsonlReader over the given shards -> DocumentTokenizer (eos appended by its post-processor,
# no shuffling), one task per process; "fork" so pool workers are this process's children.
DATATROVE_DRIVER = PEER_PRELUDE + """
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer

Path(job["paths_file"]).write_text("\\n".join(job["relative_paths"]) + "\\n")
steps = [JsonlReader(job["data_folder"], paths_file=job["paths_file"], doc_progress=False),
         DocumentTokenizer(job["out"], tokenizer_name_or_path=job["tokenizer_json"], eos_token=job["eos_token"],
                           save_filename="tokens", shuffle_documents=False)]
executor = LocalPipelineExecutor(steps, tasks=job["procs"], workers=job["procs"], logging_dir=job["logs"],
                                 start_method="fork")
cpu0, _ = usage()
t0 = time.time()
executor.run()
report(time.time() - t0, cpu0)
"""

# nanoGPT-style prepare: datasets' json loader (it decompresses .zst itself), map(num_proc) with
# tokens + eos per document, then one uint32 memmap filled slice by slice. The tokenizer treats
# special-token strings in text as text, like tiktoken's encode_ordinary in nanoGPT.
NANOGPT_DRIVER = PEER_PRELUDE + """
import numpy as np
from datasets import load_dataset
from tokenizers import Tokenizer

tok = Tokenizer.from_file(job["tokenizer_json"])
tok.encode_special_tokens = True
eos = job["eos_id"]

def tokenize(row):
    ids = tok.encode(row["text"], add_special_tokens=False).ids
    ids.append(eos)
    return {"ids": ids, "n": len(ids)}

cpu0, _ = usage()
t0 = time.time()
ds = load_dataset("json", data_files=job["files"], split="train", cache_dir=job["cache"], num_proc=job["procs"])
ds = ds.map(tokenize, remove_columns=ds.column_names, num_proc=job["procs"])
out = np.memmap(job["out"], dtype=np.uint32, mode="w+", shape=(int(np.sum(ds["n"], dtype=np.int64)),))
at, parts = 0, 32
for i in range(parts):
    piece = ds.shard(num_shards=parts, index=i, contiguous=True).with_format("numpy")
    flat = np.concatenate(list(piece["ids"]))
    out[at:at + flat.size] = flat
    at += flat.size
out.flush()
report(time.time() - t0, cpu0)
"""


# Megatron-LM's tools/preprocess_data.py and preprocess_data_fast.py, from the user's checkout
# (--megatron-dir), run by their own main() after their imports (untimed, like the other peers').
MEGATRON_DRIVER = PEER_PRELUDE + """
import importlib.util
sys.path.insert(0, job["megatron_dir"])
spec = importlib.util.spec_from_file_location("megatron_preprocess", job["script"])
tool = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = tool  # its pool workers unpickle its Encoder by module name
spec.loader.exec_module(tool)
sys.argv = [job["script"], *job["args"]]
cpu0, _ = usage()
t0 = time.time()
tool.main()
report(time.time() - t0, cpu0)
"""
#: What the checkout needs beyond this environment: its megatron.core imports triton, its
#: preprocess_data_fast.py returns awkward arrays from gigatoken.
MEGATRON_PACKAGES = ("triton", "awkward", "gigatoken", "typing_extensions")
# The checkout's megatron.training uses typing.override (Python 3.12); the only torch wheel here
# is for 3.11, so its venv takes the identical decorator from typing_extensions.
MEGATRON_SITECUSTOMIZE = """import typing
if not hasattr(typing, "override"):
    import typing_extensions
    typing.override = typing_extensions.override
"""
#: Megatron's .idx dtype codes (megatron.core.datasets.indexed_dataset.DType).
MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
MEGATRON_RUNS = (  # (row, script, extra arguments)
    (f"Megatron preprocess_data ({PEER_PROCS} procs)", "tools/preprocess_data.py", ["--workers", str(PEER_PROCS)]),
    (f"Megatron preprocess_data +giga ({PEER_PROCS})", "tools/preprocess_data.py",
     ["--workers", str(PEER_PROCS), "--use-gigatoken"]),
    ("Megatron _fast --use-gigatoken", "tools/preprocess_data_fast.py", ["--use-gigatoken"]),
    ("Megatron _fast (no gigatoken)", "tools/preprocess_data_fast.py", []),
)


def megatron_python(work: Path) -> Path:
    """A venv under ``work`` on this interpreter with this environment's packages (torch,
    megatron-core's dependencies, tokenizers) plus MEGATRON_PACKAGES."""
    import site

    python = work / "megatron-venv" / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(python.parents[1])], check=True)
    if subprocess.run([str(python), "-c", "import triton, awkward, gigatoken"], capture_output=True).returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *MEGATRON_PACKAGES], check=True)
    packages = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert packages != site.getsitepackages()[0], "the venv must not write into this environment"
    (Path(packages) / "sitecustomize.py").write_text(MEGATRON_SITECUSTOMIZE)
    return python


def megatron_stream(prefix: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ids of a Megatron ``<prefix>.bin``/``.idx`` pair (one sequence per document) and each
    document's end offset."""
    idx = (prefix.parent / (prefix.name + ".idx")).read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00", f"{prefix}.idx: not a Megatron index"
    dtype = MEGATRON_DTYPES[idx[17]]
    sequences = int(np.frombuffer(idx, np.uint64, 1, 18)[0])
    lengths = np.frombuffer(idx, np.int32, sequences, 34).astype(np.int64)
    stream = np.fromfile(prefix.parent / (prefix.name + ".bin"), dtype=dtype).astype(np.uint32)
    return stream, np.cumsum(lengths)


def bench_megatron(table: Table, work: Path, megatron_dir: Path, tokenizer: Path, entries, nbytes: int,
                   ours: np.ndarray, eos: int, text_tok, runs: int) -> dict[str, str]:
    """Megatron's preprocessing scripts on the train shards as one plain .jsonl (both read only
    plain JSON lines; decompressed here, untimed, in manifest order); verdicts by row."""
    import zstandard

    python = megatron_python(work)
    base = work / "megatron"
    base.mkdir(parents=True, exist_ok=True)
    plain = base / "train.jsonl"
    with open(plain, "wb") as out:
        for e in entries:
            with open(e.path, "rb") as f:
                zstandard.ZstdDecompressor().copy_stream(f, out)
    verdicts: dict[str, str] = {}
    for _ in range(runs):
        for row, script, extra in MEGATRON_RUNS:
            folder = base / row.replace(" ", "_").replace("-", "")
            args = ["--input", str(plain), "--output-prefix", str(folder / "out"), "--json-keys", "text",
                    "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tokenizer), "--append-eod",
                    *extra]
            job = {"megatron_dir": str(megatron_dir), "script": str(megatron_dir / script), "args": args}
            try:
                rep = run_peer(python, MEGATRON_DRIVER, job, folder)
            except SystemExit as exc:  # a script that cannot run here: say why, keep the others
                last = [line for line in str(exc).splitlines() if line.strip()][-1:]
                verdicts[row] = f"DID NOT RUN: {last[0] if last else exc}"
                continue
            stream, ends = megatron_stream(folder / "out_text_document")
            verdicts[row] = compare_streams(stream, ends, ours, eos, text_tok)
            table.add(Result(row, nbytes, rep["wall"], rep["cpu"], int(stream.size), rep["rss"]))
    return verdicts


def peers_python(work: Path) -> Path:
    """The python of a venv under ``work`` that holds the peers, created and filled when missing.

    The venv's tokenizers is pinned to the version slimtok runs with, so both encode with the same code.
    """
    from importlib.metadata import version

    python = work / "peers-venv" / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(python.parents[1])], check=True)
    if subprocess.run([str(python), "-c", "import datatrove, datasets, zstandard"], capture_output=True).returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES,
                        f"tokenizers=={version('tokenizers')}"], check=True)
    return python


def run_peer(python: Path, driver: str, job: dict, folder: Path) -> dict:
    """Run one peer driver in the venv; its report (wall, cpu, rss of the peer's own work)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    script, spec = folder / "driver.py", folder / "job.json"
    script.write_text(driver)
    job = {**job, "report": str(folder / "report.json")}
    spec.write_text(json.dumps(job))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DATATROVE_COLORIZE_LOGS": "0"}
    try:  # a peer whose pool worker died can wait for it forever
        done = subprocess.run([str(python), str(script), str(spec)], env=env, capture_output=True, text=True,
                              timeout=PEER_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(f"peer driver {script} did not finish in {PEER_TIMEOUT} s") from exc
    if done.returncode:
        raise SystemExit(f"peer driver {script} failed:\n{done.stderr[-3000:]}")
    return json.loads((folder / "report.json").read_text())


def stream_documents(stream: np.ndarray, ends: np.ndarray) -> list[bytes]:
    """The token stream cut into documents at ``ends`` (exclusive token offsets), as bytes."""
    starts = np.concatenate([[0], ends[:-1]])
    return [stream[a:b].tobytes() for a, b in zip(starts, ends)]


def compare_streams(peer: np.ndarray, peer_ends: np.ndarray, ours: np.ndarray, eos: int, tokenizer) -> str:
    """How the peer's ids relate to slimtok's, document by document, and in which order.

    A peer document with no equal in slimtok's output is decoded and encoded again the way slimtok
    encodes (special-token strings in text as text); if it then matches, the two differ only in how
    literal special-token strings in the text were treated.
    """
    from collections import Counter

    ours_docs = stream_documents(ours, np.flatnonzero(ours == eos) + 1)
    peer_docs = stream_documents(peer, peer_ends)
    known = set(ours_docs)
    as_ours = [d if d in known else _as_slimtok_encodes(d, tokenizer, eos) for d in peer_docs]
    changed = sum(a != b for a, b in zip(peer_docs, as_ours))
    if as_ours == ours_docs:
        order = "same document order"
    elif Counter(as_ours) == Counter(ours_docs):
        order = "documents in another order (compared as multisets)"
    else:
        unmatched = sum((Counter(as_ours) - Counter(ours_docs)).values())
        return f"IDS DIFFER: {unmatched} of {len(peer_docs)} documents have no equal in slimtok's output"
    if not changed:
        return f"identical ids, {order}"
    return (f"{len(peer_docs) - changed} of {len(peer_docs)} documents identical, {order}; the other {changed} "
            "contain literal special-token strings, which the peer encodes as special ids and slimtok as text: "
            "decoded and encoded slimtok's way they are identical too")


def _as_slimtok_encodes(doc: bytes, tokenizer, eos: int) -> bytes:
    """A peer document's ids decoded to text and encoded again with special-token strings as text, + eos."""
    text = tokenizer.decode(np.frombuffer(doc, np.uint32)[:-1].tolist(), skip_special_tokens=False)
    return np.array(tokenizer.encode(text, add_special_tokens=False).ids + [eos], np.uint32).tobytes()


def datatrove_stream(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """datatrove's .ds files (uint32 here) in rank order, with document ends from their .ds.index files."""
    streams, ends, base = [], [], 0
    for ds in sorted(out.glob("*.ds")):
        tokens = np.fromfile(ds, dtype=np.uint32)
        ends.append(np.fromfile(f"{ds}.index", dtype=np.uint64).astype(np.int64) + base)
        streams.append(tokens)
        base += tokens.size
    return np.concatenate(streams), np.concatenate(ends)


def bench_peers(table: Table, work: Path, manifest: Path, tokenizer: Path, nbytes: int, ours_root: Path,
                ours_label: str, runs: int, megatron_dir: Path | None = None) -> None:
    """datatrove and a nanoGPT-style prepare on the manifest's shards, ids checked against ``ours_root``.

    Wall and CPU cover each peer's processing (reading shards to written tokens), not the interpreter
    start or imports; CPU includes every pool worker. Ratios are slimtok ÷ peer.
    """
    from slimtok.manifest import read_manifest
    from slimtok.tokenizer import load_tokenizer

    python = peers_python(work)
    entries = read_manifest(manifest)
    loaded = load_tokenizer(str(tokenizer))
    text_tok = loaded.tokenizer
    text_tok.encode_special_tokens = True
    ours = np.frombuffer(b"".join(Path(p).read_bytes() for p in _data_files(ours_root, entries)), np.uint32)
    data_folder = Path(os.path.commonpath([e.path for e in entries]))
    base = work / "peers"
    job = {"tokenizer_json": str(tokenizer / "tokenizer.json"), "eos_token": loaded.eos_token,
           "eos_id": loaded.eos_token_id, "procs": PEER_PROCS, "files": [e.path for e in entries],
           "data_folder": str(data_folder), "relative_paths": [str(Path(e.path).relative_to(data_folder)) for e in entries]}
    verdicts: dict[str, str] = {}
    for _ in range(runs):
        folder = base / "datatrove"
        rep = run_peer(python, DATATROVE_DRIVER, {**job, "out": str(folder / "out"), "logs": str(folder / "logs"),
                                                  "paths_file": str(folder / "paths.txt")}, folder)
        stream, ends = datatrove_stream(folder / "out")
        verdicts["datatrove"] = compare_streams(stream, ends, ours, loaded.eos_token_id, text_tok)
        table.add(Result(f"datatrove DocumentTokenizer ({PEER_PROCS} procs)", nbytes, rep["wall"], rep["cpu"],
                         int(stream.size), rep["rss"]))
        folder = base / "nanogpt"
        rep = run_peer(python, NANOGPT_DRIVER, {**job, "out": str(folder / "train.bin"), "cache": str(folder / "hf")},
                       folder)
        stream = np.fromfile(folder / "train.bin", dtype=np.uint32)
        verdicts["nanoGPT-style"] = compare_streams(stream, np.flatnonzero(stream == loaded.eos_token_id) + 1, ours,
                                                    loaded.eos_token_id, text_tok)
        table.add(Result(f"nanoGPT-style datasets.map ({PEER_PROCS} procs)", nbytes, rep["wall"], rep["cpu"],
                         int(stream.size), rep["rss"]))
    peers = [f"datatrove DocumentTokenizer ({PEER_PROCS} procs)", f"nanoGPT-style datasets.map ({PEER_PROCS} procs)"]
    if megatron_dir is not None:
        verdicts.update(bench_megatron(table, work, megatron_dir, tokenizer, entries, nbytes, ours,
                                       loaded.eos_token_id, text_tok, runs))
        peers += [row for row, _, _ in MEGATRON_RUNS if row in table.runs]
    else:
        table.note("Megatron-LM: not run (give a checkout with --megatron-dir)")
    for name, verdict in verdicts.items():
        table.note(f"peer {name}: {verdict}")
    for peer in peers:
        table.note(f"ratio {ours_label} / {peer}: {table.ratio(ours_label, peer, 'mb_wall')} per wall-s, "
                           f"{table.ratio(ours_label, peer)} per CPU-s")
    fastest = max(peers, key=lambda p: table.median(p, "mb_cpu"))
    ratio = table.median(ours_label, "mb_cpu") / table.median(fastest, "mb_cpu")
    table.note(f"fastest peer per CPU-s: {fastest}; {ours_label} / it = {ratio:.2f} "
                       f"(target >= 2: {'met' if ratio >= 2 else 'NOT met'})")


def _data_files(root: Path, entries) -> list[Path]:
    from slimtok.protocol import OutputRoot

    r = OutputRoot(root)
    return [r.data(e.id) for e in entries]


# -- main -------------------------------------------------------------------------------------

def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        return _worker_child(*sys.argv[2:5])
    if len(sys.argv) > 1 and sys.argv[1] == "_ceiling":
        return _ceiling_child(*sys.argv[2:7])
    if len(sys.argv) > 1 and sys.argv[1] == "_noop_worker":
        return _noop_worker_child(*sys.argv[2:5])
    if len(sys.argv) > 1 and sys.argv[1] == "_bucket_task":
        return _bucket_task_child(*sys.argv[2:5])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/slimtok-bench", help="scratch folder (corpus, outputs)")
    ap.add_argument("--corpus", help="an existing SlimPajama-layout corpus (default: build one)")
    ap.add_argument("--tokenizer", help="a tokenizer folder (default: build the offline Qwen3)")
    ap.add_argument("--mb", type=float, default=20, help="MB of text of the corpus to build")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(s for s in SECTIONS if s != "peers"),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--peers", action="store_true", help="also run the peers (installs them into a venv)")
    ap.add_argument("--megatron-dir", type=Path,
                    help="a Megatron-LM checkout (its tools/ and megatron/): the peers section also runs its "
                         "tools/preprocess_data.py and preprocess_data_fast.py (with and without --use-gigatoken)")
    ap.add_argument("--reference-mb", type=float, default=6,
                    help="text MB the slow tokenizers backend is measured on")
    ap.add_argument("--memory-mb", default="20,1024", help="shard sizes (MB of text) for the memory section")
    ap.add_argument("--huge-mb", type=int, default=200, help="size of the single huge document (0: skip)")
    ap.add_argument("--claims-shards", default="60000",
                    help="manifest sizes for the claims section, comma-separated (flat per-shard cost = no O(N^2)); "
                         "status runs over the last")
    ap.add_argument("--claims-workers", type=int, default=64)
    ap.add_argument("--growth-shards", default="10000,100000", help="manifest sizes for the growth section")
    ap.add_argument("--growth-workers", type=int, default=2)
    ap.add_argument("--dedup-docs", default="10000000,30000000,100000000",
                    help="job sizes (documents) at which the dedup section measures a bucket task's peak RSS")
    ap.add_argument("--dedup-docs-per-shard", type=int, default=10_000)
    ap.add_argument("--buckets", type=int, default=256, help="dedup buckets measured beside --buckets auto")
    ap.add_argument("--mix-workers", default="1,2", help="worker counts of the mix section, comma-separated")
    args = ap.parse_args()
    only = set(args.only.split(",")) | ({"peers"} if args.peers else set())
    corpus, tokenizer = prepare(args)
    work = Path(args.work)
    manifest = manifest_of(corpus, work / "m-train")
    texts = documents(manifest)
    nbytes = sum(len(t.encode()) for t in texts)
    fast = "fastokens" if importlib.util.find_spec("fastokens") is not None else "tokenizers"
    # The slow reference backend is measured on a few shards only, so a run stays minutes long.
    from slimtok.manifest import read_manifest, write_manifest

    entries = read_manifest(manifest)
    small, size = [], 0
    for e in entries:
        if size >= args.reference_mb * 1e6 / 4:  # compressed size ~ 1/4 of text
            break
        small.append(e)
        size += e.size
    small_manifest, _ = write_manifest(small, work / "m-small", corpus)
    small_texts = documents(small_manifest)
    small_bytes = sum(len(t.encode()) for t in small_texts)
    table = Table()
    scaled = f"pipeline {PEER_PROCS} workers ({fast})"
    load = os.getloadavg()
    table.note(f"machine: {os.cpu_count()} cores, load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
                       f"corpus {nbytes / 1e6:.1f} MB text in {len(entries)} train shards; "
                       f"reference set {small_bytes / 1e6:.1f} MB in {len(small)} shards")
    for run in range(args.runs):
        if "raw" in only or "pipeline" in only:
            raw = bench_raw(table, texts, tokenizer, [fast], contenders="raw" in only)
            raw_small = bench_raw(table, small_texts, tokenizer, ["tokenizers", fast], ", small set") \
                if fast != "tokenizers" else {}
        if "read" in only:
            bench_read(table, manifest, nbytes)
        if "pipeline" in only:
            d, _ = bench_pipeline(table, work, manifest, tokenizer, fast, nbytes, 1, f"pipeline 1 worker ({fast})", run)
            _check(table, d, raw[fast], f"pipeline ({fast})")
            d, _ = bench_pipeline(table, work, small_manifest, tokenizer, "tokenizers", small_bytes, 1,
                                  "pipeline 1 worker (tokenizers, small)", run)
            if raw_small:
                _check(table, d, raw_small["tokenizers"], "pipeline (tokenizers)")
                _check(table, raw_small[fast], raw_small["tokenizers"], "raw fastokens vs tokenizers")
        if "tables" in only:
            bench_tables(table, manifest, tokenizer, fast, nbytes)
        if "ceiling" in only:
            bench_ceiling(table, work, manifest, tokenizer, fast, nbytes, PEER_PROCS, run)
        if "scaling" in only or "peers" in only:  # the peers are compared with this row
            d, _ = bench_pipeline(table, work, manifest, tokenizer, fast, nbytes, PEER_PROCS, scaled, run)
            if "raw" in only or "pipeline" in only:
                _check(table, d, raw[fast], "2 workers")
    if "memory" in only:
        bench_memory(table, work, texts, tokenizer, fast, [int(x) << 20 for x in args.memory_mb.split(",")],
                     args.huge_mb << 20)
    if "startup" in only:
        bench_startup(table, work, manifest, tokenizer, fast, args.runs)
    if "combine" in only:
        root = work / "out-combine"
        if not root.exists():
            run_workers(settings_for(manifest, root, tokenizer, fast), 1)
        bench_combine(table, work, root, args.runs)
    if "claims" in only:
        sizes = [int(n) for n in args.claims_shards.split(",")]
        cpus = []
        for shards in sizes:
            root, cpu = bench_claims(table, work, shards, args.claims_workers)
            cpus.append(cpu)
        for (n0, c0), (n1, c1) in zip(zip(sizes, cpus), zip(sizes[1:], cpus[1:])):
            table.note(f"claims: marginal CPU per shard from {n0} to {n1} shards (worker start-up cancels): "
                               f"{(c1 - c0) / (n1 - n0) * 1e3:.2f} ms")
        bench_status(table, root, sizes[-1])
    if "growth" in only:
        bench_growth(table, work, [int(n) for n in args.growth_shards.split(",")], args.growth_workers)
    if "dedup" in only:
        bench_dedup_scale(table, work, [int(n) for n in args.dedup_docs.split(",") if n], args.dedup_docs_per_shard,
                          None)  # the default, --buckets auto
        bench_dedup_cost(table, work, corpus, tokenizer, fast, args.buckets)
        if "stages" not in only:  # stages measures dedup's planning growth with the others
            bench_stage_growth(table, work, [int(n) for n in args.growth_shards.split(",")], ("dedup",))
    if "stages" in only:
        bench_stage_growth(table, work, [int(n) for n in args.growth_shards.split(",")], ("combine", "dedup", "mix"))
    if "mix" in only:
        bench_mix_section(table, work, corpus, tokenizer, fast, args.runs, [int(w) for w in args.mix_workers.split(",")])
    if "consume" in only:
        bench_consume(table, work, corpus, tokenizer, fast)
    if "peers" in only:
        bench_peers(table, work, manifest, tokenizer, nbytes, work / f"out-{scaled.replace(' ', '_')}-0", scaled,
                    args.runs, args.megatron_dir)
    table.notes += [
        f"ratio pipeline/raw per CPU-s ({fast}): {table.ratio(f'pipeline 1 worker ({fast})', f'raw encode ({fast})')}",
        f"bound on pipeline/raw per CPU-s ({fast}) from decompression alone: "
        f"{read_bound(table, f'raw encode ({fast})', 'read: zstd decompress only')}; "
        f"from the reader alone: {read_bound(table, f'raw encode ({fast})', 'read: decompress + parse (reader)')}",
        f"tables: {tables_share(table, f'pipeline 1 worker ({fast})')}",
        *floor_notes(table, f"pipeline 1 worker ({fast})"),
        f"ratio pipeline/raw per CPU-s (tokenizers): "
        f"{table.ratio('pipeline 1 worker (tokenizers, small)', 'raw encode (tokenizers, small set)')}",
        f"ratio fastokens/tokenizers raw per CPU-s: "
        f"{table.ratio('raw encode (fastokens, small set)', 'raw encode (tokenizers, small set)')}",
        f"ratio {PEER_PROCS} workers/1 worker per wall-s: {table.ratio(scaled, f'pipeline 1 worker ({fast})', 'mb_wall')}"
        f" (machine ceiling, read + encode in memory: "
        f"{table.ratio(f'ceiling: read + encode, {PEER_PROCS} processes', 'ceiling: read + encode, 1 process', 'mb_wall')})",
        f"ratio combine --no-verify / cat per wall-s: {table.ratio('combine (--no-verify)', 'cat shards (+fsync)', 'mb_wall')}",
        f"load average at end {os.getloadavg()[0]:.2f}",
    ]
    print(table.render())


def _check(table: Table, got: str, want: str, what: str) -> None:
    if got != want:
        table.note(f"IDS DIFFER: {what}")
        raise SystemExit(f"ids differ: {what}\n" + table.render())


if __name__ == "__main__":
    main()
