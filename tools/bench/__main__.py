"""Benchmark slimtok against its own raw encoder, its backends, `cat`, and (with --peers) its peers.

    python3 -m tools.bench --work /tmp/slimtok-bench [--mb 20] [--runs 3] [--only raw,pipeline,...]

(from the checkout's root). Builds (or takes with --corpus/--tokenizer) the offline Qwen3 tokenizer
(``slimtok.demo``) and a SlimPajama-layout corpus of real text, the Python standard library's
sources on this machine split into several ``meta.redpajama_set_name`` sources (see
corpus.build_corpus), then runs, side by side in one invocation and ``--runs`` times each (medians
are printed):

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
  mix        a timed mix over three roots of the bench corpus, shuffle none and document, vs `cat`
             of the same shard files (+fsync)
  exports    each `slimtok export` target of the combine section's root vs `cat` of the same bytes (+fsync)
  consume    peak extra disk of `combine --consume` vs a copying combine (root sampled every 20 ms)
  stages     combine, dedup (planning, whole run) and mix planning per shard over synthetic roots
             of --growth-shards sizes, super-linear steps flagged (dedup alone runs it for dedup)
  combine-plan (only when named in --only) combine's planning (plan_combine, with and without
             --dedup) in a fresh python over deduplicated synthetic roots of --combine-plan-shards
             sizes (kept under --work/combine-plan), growth per shard flagged
  mix-plan   (only when named in --only) a mix plan's wall, CPU and peak RSS per selected document
             over 4 synthetic roots of --mix-plan-documents documents in all, in a fresh python
  integrity  (only when named in --only) each checked read's cost beside the work it guards, over a
             synthetic root of --integrity-mb MB of tokens: a mix's source check, export's data check
             (all / sample), the checked .idx and document-table reads against bare reads
  prepend-huge  (only when named in --only) a Llama-2-style (Prepend normalizer) tokenizer on one
             --prepend-mb document on one line: the Encoder's pieces vs one whole-document encode
             (what it got before its cut rule), wall, CPU, peak RSS growth, ids compared
  planning   (only when named in --only) status (first call, warm), `mix --plan` and a worker's start
             over synthetic finished roots of --planning-shards sizes (tools/bench/planning.py)
  scale      (only when named in --only) a whole run over --scale-gb GB of varied real text (comma-separated
             sizes: each stage's peak RSS is compared with the smallest's): manifest, tokenize and dedup
             (--scale-workers), combine --dedup (1 process), validate as subprocesses; wall, CPU, bytes
             read/written, peak RSS per stage (tools/bench/scale.py)
  peers      (--peers) datatrove DocumentTokenizer and a nanoGPT-style datasets.map prepare, installed
             into a separate venv under --work; with --megatron-dir, Megatron-LM's
             tools/preprocess_data.py and preprocess_data_fast.py (with and without --use-gigatoken)

Every contender's ids are compared with the raw encoder's. CPU seconds and peak RSS of worker
processes come from wait4(2) of each child, so they cover exactly that process.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .combine_plan import bench_combine_plan
from .corpus import documents, manifest_of, prepare
from .dedup import bench_dedup_cost, bench_dedup_scale
from .encode import bench_ceiling, bench_raw, bench_read, bench_tables, check_ids, floor_notes, read_bound, tables_share
from .exports import bench_exports
from .harness import Table, run_workers, settings_for
from .integrity import bench_integrity
from .mix import bench_mix_plan, bench_mix_section
from .peers.section import PEER_PROCS, bench_peers
from .pipeline import bench_combine, bench_consume, bench_memory, bench_pipeline, bench_prepend_huge
from .planning import bench_planning
from .scale import bench_scale
from .stages import bench_claims, bench_growth, bench_stage_growth, bench_status
from .startup import bench_startup


@dataclass
class Context:
    """What the sections share in one invocation: the inputs, the table, and the ids of the raw
    section's current run that the pipeline and scaling rows are checked against."""

    args: argparse.Namespace
    only: set[str]
    work: Path
    corpus: Path
    tokenizer: Path
    manifest: Path  # the corpus's train split
    shards: int
    texts: list[str]
    nbytes: int
    fast: str  # fastokens when installed, else tokenizers
    small_manifest: Path  # the first shards, --reference-mb of text: what the slow backend gets
    small_shards: int
    small_texts: list[str]
    small_bytes: int
    table: Table = field(default_factory=Table)
    raw: dict[str, str] = field(default_factory=dict)
    raw_small: dict[str, str] = field(default_factory=dict)

    @property
    def scaled(self) -> str:
        """The scaling row, which the peers are compared with."""
        return f"pipeline {PEER_PROCS} workers ({self.fast})"


@dataclass(frozen=True)
class Section:
    """A benchmark section: ``run(ctx, run)`` once per --runs (``repeated``; the repeated sections
    take turns within each run), or ``run(ctx, -1)`` once, after them, when ``repeated`` is False."""

    run: Callable[[Context, int], None]
    repeated: bool = False


def _int_list(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n]


# -- the sections, in the order they run ------------------------------------------------------

def raw(ctx: Context, run: int) -> None:
    ctx.raw = bench_raw(ctx.table, ctx.texts, ctx.tokenizer, [ctx.fast], contenders="raw" in ctx.only)
    ctx.raw_small = bench_raw(ctx.table, ctx.small_texts, ctx.tokenizer, ["tokenizers", ctx.fast], ", small set") \
        if ctx.fast != "tokenizers" else {}


def read(ctx: Context, run: int) -> None:
    bench_read(ctx.table, ctx.manifest, ctx.nbytes)


def pipeline(ctx: Context, run: int) -> None:
    fast, table = ctx.fast, ctx.table
    d, _ = bench_pipeline(table, ctx.work, ctx.manifest, ctx.tokenizer, fast, ctx.nbytes, 1,
                          f"pipeline 1 worker ({fast})", run)
    check_ids(table, d, ctx.raw[fast], f"pipeline ({fast})")
    d, _ = bench_pipeline(table, ctx.work, ctx.small_manifest, ctx.tokenizer, "tokenizers", ctx.small_bytes, 1,
                          "pipeline 1 worker (tokenizers, small)", run)
    if ctx.raw_small:
        check_ids(table, d, ctx.raw_small["tokenizers"], "pipeline (tokenizers)")
        check_ids(table, ctx.raw_small[fast], ctx.raw_small["tokenizers"], "raw fastokens vs tokenizers")


def tables(ctx: Context, run: int) -> None:
    bench_tables(ctx.table, ctx.manifest, ctx.tokenizer, ctx.fast, ctx.nbytes)


def ceiling(ctx: Context, run: int) -> None:
    bench_ceiling(ctx.table, ctx.work, ctx.manifest, ctx.tokenizer, ctx.fast, ctx.nbytes, PEER_PROCS, run)


def scaling(ctx: Context, run: int) -> None:
    d, _ = bench_pipeline(ctx.table, ctx.work, ctx.manifest, ctx.tokenizer, ctx.fast, ctx.nbytes, PEER_PROCS,
                          ctx.scaled, run)
    if ctx.raw:
        check_ids(ctx.table, d, ctx.raw[ctx.fast], "2 workers")


def memory(ctx: Context, run: int) -> None:
    bench_memory(ctx.table, ctx.work, ctx.texts, ctx.tokenizer, ctx.fast,
                 [int(x) << 20 for x in ctx.args.memory_mb.split(",")], ctx.args.huge_mb << 20)


def prepend(ctx: Context, run: int) -> None:
    bench_prepend_huge(ctx.table, ctx.work, ctx.texts, ctx.args.prepend_mb)


def startup(ctx: Context, run: int) -> None:
    bench_startup(ctx.table, ctx.work, ctx.manifest, ctx.tokenizer, ctx.fast, ctx.args.runs)


def combine(ctx: Context, run: int) -> None:
    root = ctx.work / "out-combine"
    if not root.exists():
        run_workers(settings_for(ctx.manifest, root, ctx.tokenizer, ctx.fast), 1)
    bench_combine(ctx.table, ctx.work, root, ctx.args.runs)


def exports(ctx: Context, run: int) -> None:
    root = ctx.work / "out-combine"
    if not root.exists():
        run_workers(settings_for(ctx.manifest, root, ctx.tokenizer, ctx.fast), 1)
    bench_exports(ctx.table, ctx.work, root, ctx.args.runs)


def claims(ctx: Context, run: int) -> None:
    sizes = _int_list(ctx.args.claims_shards)
    cpus = []
    for shards in sizes:
        root, cpu = bench_claims(ctx.table, ctx.work, shards, ctx.args.claims_workers)
        cpus.append(cpu)
    for (n0, c0), (n1, c1) in itertools.pairwise(zip(sizes, cpus, strict=True)):
        ctx.table.note(f"claims: marginal CPU per shard from {n0} to {n1} shards (worker start-up cancels): "
                       f"{(c1 - c0) / (n1 - n0) * 1e3:.2f} ms")
    bench_status(ctx.table, root, sizes[-1])


def growth(ctx: Context, run: int) -> None:
    bench_growth(ctx.table, ctx.work, _int_list(ctx.args.growth_shards), ctx.args.growth_workers)


def dedup(ctx: Context, run: int) -> None:
    bench_dedup_scale(ctx.table, ctx.work, _int_list(ctx.args.dedup_docs), ctx.args.dedup_docs_per_shard,
                      None)  # the default, --buckets auto
    bench_dedup_cost(ctx.table, ctx.work, ctx.corpus, ctx.tokenizer, ctx.fast, ctx.args.buckets)
    if "stages" not in ctx.only:  # stages measures dedup's planning growth with the others
        bench_stage_growth(ctx.table, ctx.work, _int_list(ctx.args.growth_shards), ("dedup",))


def stages(ctx: Context, run: int) -> None:
    bench_stage_growth(ctx.table, ctx.work, _int_list(ctx.args.growth_shards), ("combine", "dedup", "mix"))


def mix(ctx: Context, run: int) -> None:
    bench_mix_section(ctx.table, ctx.work, ctx.corpus, ctx.tokenizer, ctx.fast, ctx.args.runs,
                      _int_list(ctx.args.mix_workers))


def consume(ctx: Context, run: int) -> None:
    bench_consume(ctx.table, ctx.work, ctx.corpus, ctx.tokenizer, ctx.fast)


def integrity(ctx: Context, run: int) -> None:
    bench_integrity(ctx.table, ctx.work, ctx.args.integrity_mb, ctx.args.runs)


def mix_plan(ctx: Context, run: int) -> None:
    bench_mix_plan(ctx.table, ctx.work, _int_list(ctx.args.mix_plan_documents), ctx.args.mix_plan_shards)


def combine_plan(ctx: Context, run: int) -> None:
    bench_combine_plan(ctx.table, ctx.work, _int_list(ctx.args.combine_plan_shards), ctx.args.runs)


def planning(ctx: Context, run: int) -> None:
    bench_planning(ctx.table, ctx.work, _int_list(ctx.args.planning_shards))


def scale(ctx: Context, run: int) -> None:
    bench_scale(ctx.table, ctx.work, [float(x) for x in ctx.args.scale_gb.split(",") if x], ctx.tokenizer,
                ctx.args.scale_workers, ctx.args.scale_keep)


def peers(ctx: Context, run: int) -> None:
    bench_peers(ctx.table, ctx.work, ctx.manifest, ctx.tokenizer, ctx.nbytes,
                ctx.work / f"out-{ctx.scaled.replace(' ', '_')}-0", ctx.scaled, ctx.args.runs, ctx.args.megatron_dir)


SECTIONS: dict[str, Section] = {
    "raw": Section(raw, repeated=True), "read": Section(read, repeated=True),
    "pipeline": Section(pipeline, repeated=True), "tables": Section(tables, repeated=True),
    "ceiling": Section(ceiling, repeated=True), "scaling": Section(scaling, repeated=True),
    "memory": Section(memory), "startup": Section(startup), "combine": Section(combine), "exports": Section(exports),
    "claims": Section(claims),
    "growth": Section(growth), "dedup": Section(dedup), "stages": Section(stages), "mix": Section(mix),
    "consume": Section(consume), "mix-plan": Section(mix_plan), "peers": Section(peers),
    "combine-plan": Section(combine_plan),
    "integrity": Section(integrity),
    "prepend-huge": Section(prepend),
    "planning": Section(planning),
    "scale": Section(scale),
}
#: sections run only when asked for: peers with --peers (or in --only); the others here only in --only
OPT_IN = ("mix-plan", "peers", "combine-plan", "integrity", "prepend-huge", "planning", "scale")
#: sections that run when another one runs: (needed, needed by), e.g. the pipeline checks its ids
#: against the raw section's, and the peers are compared with the scaling row
NEEDED = (("raw", "pipeline"), ("scaling", "peers"))


def to_run(only: set[str]) -> list[str]:
    """The sections ``only`` selects plus the ones they need, in the registry's order."""
    unknown = only - SECTIONS.keys()
    if unknown:
        raise SystemExit(f"--only: no section {', '.join(sorted(unknown))}; the sections are {', '.join(SECTIONS)}")
    wanted = only | {needed for needed, by in NEEDED if by in only}
    return [name for name in SECTIONS if name in wanted]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/slimtok-bench", help="scratch folder (corpus, outputs)")
    ap.add_argument("--corpus", help="an existing SlimPajama-layout corpus (default: build one)")
    ap.add_argument("--tokenizer", help="a tokenizer folder (default: build the offline Qwen3)")
    ap.add_argument("--mb", type=float, default=20, help="MB of text of the corpus to build")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(s for s in SECTIONS if s not in OPT_IN),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--peers", action="store_true", help="also run the peers (installs them into a venv)")
    ap.add_argument("--megatron-dir", type=Path,
                    help="a Megatron-LM checkout (its tools/ and megatron/): the peers section also runs its "
                         "tools/preprocess_data.py and preprocess_data_fast.py (with and without --use-gigatoken)")
    ap.add_argument("--reference-mb", type=float, default=6,
                    help="text MB the slow tokenizers backend is measured on")
    ap.add_argument("--memory-mb", default="20,1024", help="shard sizes (MB of text) for the memory section")
    ap.add_argument("--huge-mb", type=int, default=200, help="size of the single huge document (0: skip)")
    ap.add_argument("--prepend-mb", type=int, default=32,
                    help="size of the prepend-huge section's one-line document (Llama-2-style tokenizer)")
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
    ap.add_argument("--mix-plan-documents", default="10000000,100000000",
                    help="documents in all (over 4 synthetic roots) at which the mix-plan section plans")
    ap.add_argument("--combine-plan-shards", default="10000,60000,122000",
                    help="shard counts of the synthetic roots the combine-plan section plans over")
    ap.add_argument("--integrity-mb", type=int, default=300,
                    help="MB of tokens in the synthetic root the integrity section checks")
    ap.add_argument("--planning-shards", default="10000,60000,122000",
                    help="synthetic root sizes (shards) of the planning section")
    ap.add_argument("--scale-gb", default="10",
                    help="GB of text of the scale section's corpus; comma-separated for several sizes")
    ap.add_argument("--scale-workers", type=int, default=2,
                    help="--spawn-workers of the scale section's tokenize and dedup")
    ap.add_argument("--scale-keep", action="store_true", help="keep the scale section's corpus and root")
    ap.add_argument("--mix-plan-shards", type=int, default=250,
                    help="shards per synthetic root of the mix-plan section; with fewer than inputs.PIECE_ROWS "
                         "rows a shard, the streaming pieces (a constant) are smaller at the smaller sizes and "
                         "look like a per-document cost")
    return ap.parse_args(argv)


def context(args: argparse.Namespace, only: set[str]) -> Context:
    """Build or find the corpus and tokenizer, and read the train documents (and the reference set:
    the slow backend is measured on a few shards only, so a run stays minutes long)."""
    from slimtok.manifest import read_manifest, write_manifest

    corpus, tokenizer = prepare(args)
    work = Path(args.work)
    manifest = manifest_of(corpus, work / "m-train")
    texts = documents(manifest)
    entries = read_manifest(manifest)
    small, size = [], 0
    for e in entries:
        if size >= args.reference_mb * 1e6 / 4:  # compressed size ~ 1/4 of text
            break
        small.append(e)
        size += e.size
    small_manifest, _ = write_manifest(small, work / "m-small", corpus)
    small_texts = documents(small_manifest)
    fast = "fastokens" if importlib.util.find_spec("fastokens") is not None else "tokenizers"
    return Context(args, only, work, corpus, tokenizer, manifest, len(entries), texts,
                   sum(len(t.encode()) for t in texts), fast, small_manifest, len(small), small_texts,
                   sum(len(t.encode()) for t in small_texts))


def summary_notes(ctx: Context) -> list[str]:
    """The ratios between sections' rows, "n/a" where a section did not run."""
    table, fast, scaled = ctx.table, ctx.fast, ctx.scaled
    one = f"pipeline 1 worker ({fast})"
    ceiling_n = f"ceiling: read + encode, {PEER_PROCS} processes"
    return [
        f"ratio pipeline/raw per CPU-s ({fast}): {table.ratio(one, f'raw encode ({fast})')}",
        f"bound on pipeline/raw per CPU-s ({fast}) from decompression alone: "
        f"{read_bound(table, f'raw encode ({fast})', 'read: zstd decompress only')}; "
        f"from the reader alone: {read_bound(table, f'raw encode ({fast})', 'read: decompress + parse (reader)')}",
        f"tables: {tables_share(table, one)}",
        *floor_notes(table, one),
        f"ratio pipeline/raw per CPU-s (tokenizers): "
        f"{table.ratio('pipeline 1 worker (tokenizers, small)', 'raw encode (tokenizers, small set)')}",
        f"ratio fastokens/tokenizers raw per CPU-s: "
        f"{table.ratio('raw encode (fastokens, small set)', 'raw encode (tokenizers, small set)')}",
        f"ratio {PEER_PROCS} workers/1 worker per wall-s: {table.ratio(scaled, one, 'mb_wall')}"
        f" (machine ceiling, read + encode in memory: "
        f"{table.ratio(ceiling_n, 'ceiling: read + encode, 1 process', 'mb_wall')})",
        f"ratio combine --no-verify / cat per wall-s: "
        f"{table.ratio('combine (--no-verify)', 'cat shards (+fsync)', 'mb_wall')}",
        f"load average at end {os.getloadavg()[0]:.2f}",
    ]


def main(argv: list[str] | None = None) -> None:
    # before any tokenizer library is loaded, here and in every child (they inherit the environment)
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    only = set(args.only.split(",")) | ({"peers"} if args.peers else set())
    names = to_run(only)
    ctx = context(args, only)
    load = os.getloadavg()
    ctx.table.note(f"machine: {os.cpu_count()} cores, load average at start {load[0]:.2f} {load[1]:.2f} "
                   f"{load[2]:.2f}; corpus {ctx.nbytes / 1e6:.1f} MB text in {ctx.shards} train shards; "
                   f"reference set {ctx.small_bytes / 1e6:.1f} MB in {ctx.small_shards} shards")
    for run in range(args.runs):
        for name in names:
            if SECTIONS[name].repeated:
                SECTIONS[name].run(ctx, run)
    for name in names:
        if not SECTIONS[name].repeated:
            SECTIONS[name].run(ctx, -1)
    ctx.table.notes += summary_notes(ctx)
    print(ctx.table.render())


if __name__ == "__main__":
    main()
