"""The bench's child processes: ``python -m tools.bench.children <name> <argument>… <report>``.

Each child does one measured piece of work in a fresh process, so that its CPU and peak RSS are its
own, and writes its report (JSON) to the path given last; the children started together by
harness.start_together first wait at its barrier. Module level imports only the standard library:
what a child loads (slimtok, numpy, a tokenizer) is part of what it measures or is loaded before
its timed part.

  worker <settings json> <index> <report>           a production Worker around run(): [start, cpu, peak rss]
  ceiling <manifest> <tokenizer> <backend> <i/n> <report>   read + encode shards i::n: [start, cpu, end]
  noop-worker <settings json> <index> <report>      a Worker with a trivial encoder: seconds per shard
  bucket-task <root> <bucket> <report>              one dedup bucket task's peak RSS growth
  whole-doc <shard> <tokenizer.json> <eos> <report> sha256 of one whole-document fastokens encode + eos
  mix-plan <spec> <report>                          one mix plan: wall, CPU, RSS before and peak
  huge-doc <tokenizer.json> <text file> <mode> <report>  one huge document by the Encoder (pieces) or
                                                    tokenizers in one call (whole): wall, CPU, RSS growth, ids
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .harness import cpu_now, proc_status, ready_then_wait


def worker(spec: str, index: str, report: str) -> None:
    """A production Worker, timed around run(): writes [start time, cpu, peak rss] to ``report``."""
    from slimtok.job import TokenizeSettings, open_job
    from slimtok.worker import Worker

    data = json.loads(spec)
    data["splits"] = tuple(data["splits"])
    w = Worker(open_job(TokenizeSettings(**data)), int(index))
    _ = w.encoder  # loaded lazily at the first claim: load it here, outside the timed part
    ready_then_wait(report)
    c0, w0 = cpu_now(), time.time()
    code = w.run()
    Path(report).write_text(json.dumps([w0, cpu_now() - c0, proc_status("VmHWM")]))
    sys.exit(code)


def ceiling(manifest: str, tokenizer: str, backend: str, part: str, report: str) -> None:
    """Read and encode shards ``i::n`` of the manifest in the worker's batch sizes; report
    [start, cpu, end]."""
    from slimtok.manifest import read_manifest
    from slimtok.reader import ShardReader
    from slimtok.tokenizer import Encoder, load_tokenizer

    from .corpus import worker_batches

    i, n = map(int, part.split("/"))
    loaded = load_tokenizer(tokenizer)
    enc = Encoder(loaded.parsed(), loaded.policy, "uint32", backend)
    paths = [e.path for e in read_manifest(Path(manifest))][i::n]
    ready_then_wait(report)
    c0, w0 = cpu_now(), time.time()
    for batch in worker_batches(str(text) for path in paths for text, _source in ShardReader(path).records()):
        enc.encode(batch)
    Path(report).write_text(json.dumps([w0, cpu_now() - c0, time.time()]))


def noop_worker(spec: str, index: str, out: str) -> None:
    """A real Worker whose encoder is trivial; records the seconds of every shard it processed."""
    import numpy as np

    from slimtok import executor
    from slimtok.job import TokenizeSettings, open_job
    from slimtok.worker import loop as wmod

    class NoopEncoder:
        report = None
        backend = "none"
        chars = {"tokenizers": 0, "fastokens": 0}

        def __init__(self, *a, **k):
            self.report = type("R", (), {"requested": "none", "backend": "none", "verification": "no-op"})()

        def encode(self, texts):
            return np.full(len(texts), 2, dtype=np.uint32), [1] * len(texts)

    wmod.Encoder = NoopEncoder  # type: ignore[misc,assignment]  # duck-typed: what the worker uses of one
    data = json.loads(spec)
    data["splits"] = tuple(data["splits"])
    w = wmod.Worker(open_job(TokenizeSettings(**data)), int(index))
    times: list[float] = []
    attempt = executor.attempt

    def timed_attempt(claimer, unit, settled, work):
        """One look at a shard, timed when it was claimed and processed."""
        t0 = time.perf_counter()
        result = attempt(claimer, unit, settled, work)
        if result is executor.Attempt.PROCESSED:
            times.append(time.perf_counter() - t0)
        return result

    executor.attempt = timed_attempt  # run_units looks it up in its module at each unit
    code = w.run()
    Path(out).write_text(json.dumps(times))
    sys.exit(code)


def bucket_task(root: str, bucket: str, report: str) -> None:
    """One bucket unit's work (the production bucket_rows + find_drops) in a fresh process, after
    what a dedup worker holds anyway (its inputs); reports the peak RSS the task adds."""
    from slimtok.dedup.plan import read_inputs, unit_count
    from slimtok.dedup.units import bucket_rows, find_drops
    from slimtok.protocol import DedupPlan, DedupUnitRecord, OutputRoot, read_record

    r = OutputRoot(root)
    plan = read_record(r.dedup_plan, DedupPlan)
    assert plan is not None, "the bench runs the dedup before measuring a bucket"
    inputs = read_inputs(r)
    b = int(bucket)
    # a worker does bucket after bucket: one task first pays one-time costs (lazy imports, allocator
    # arenas); the figure is the next one's, and the first one's is reported beside it
    first = _task_growth(lambda: find_drops(bucket_rows(r, plan, (b + 1) % plan.buckets)))
    base = proc_status("VmRSS")
    grown = _task_growth(lambda: find_drops(bucket_rows(r, plan, b)))  # rows die inside find_drops, as in a worker
    peak = proc_status("VmHWM")
    scatter = [read_record(r.dedup_unit_done("scatter", k), DedupUnitRecord)
               for k in range(unit_count(plan, "scatter"))]
    rows = sum(s.offsets[b + 1] - s.offsets[b] for s in scatter if s is not None)
    Path(report).write_text(json.dumps({"base": base, "peak": peak, "grown": grown, "first": first, "rows": rows,
                                        "shards": len(inputs.entries)}))


def _task_growth(task: Callable[[], object]) -> int:
    """Bytes by which ``task`` raises this process's peak RSS above its RSS at the start."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the current RSS
    base = proc_status("VmRSS")
    task()
    return proc_status("VmHWM") - base


def whole_doc(path: str, tokenizer_json: str, eos: str, report: str) -> None:
    """sha256 of tokens(doc)+[eos] for the one document in the shard ``path``, encoded in one call."""
    import hashlib

    import fastokens
    import numpy as np
    import orjson
    import zstandard

    with open(path, "rb") as f:
        text = orjson.loads(zstandard.ZstdDecompressor().stream_reader(f).read())["text"]
    ids, _ = fastokens.Tokenizer.from_file(tokenizer_json).encode_batch_flat([text], False, True)
    stream = np.append(np.frombuffer(ids, np.uint32), np.uint32(int(eos)))
    Path(report).write_text(json.dumps(hashlib.sha256(stream.tobytes()).hexdigest()))


def mix_plan(spec_path: str, report: str) -> None:
    """One plan of the mix spec: wall and CPU seconds of it, this process's peak RSS before it
    (imports done) and after, the documents it selected and those available."""
    import resource

    from slimtok.mix import load_spec, make_plan
    from slimtok.mix.inputs import load_sources

    def usage() -> tuple[float, int]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime, proc_status("VmHWM")

    cpu0, rss0 = usage()
    began = time.perf_counter()
    spec = load_spec(spec_path)
    plan = make_plan(spec, load_sources(spec)[0])
    seconds = time.perf_counter() - began
    cpu1, rss1 = usage()
    Path(report).write_text(json.dumps({
        "seconds": seconds, "cpu_seconds": cpu1 - cpu0, "rss_before": rss0, "peak_rss": rss1,
        "selected": sum(len(p) for p in plan.splits.values()),
        "available_documents": sum(r.candidates for r in plan.sources)}))


def huge_doc(tokenizer_json: str, text_file: str, mode: str, report: str) -> None:
    """The document in ``text_file`` (UTF-8), encoded by the Encoder with the reference (``pieces``:
    cut where the tokenizer's cut rule allows) or by tokenizers in one call (``whole``: what every
    document of a tokenizer without an exact cut got). Reports wall and CPU of the encode, peak RSS
    growth over the process with the document loaded, and sha256 of ids + eos."""
    import hashlib

    import numpy as np

    from slimtok.tokenizer import Encoder, load_tokenizer

    loaded = load_tokenizer(tokenizer_json)
    text = Path(text_file).read_text()
    enc = Encoder(loaded.parsed(), loaded.policy, "uint32", "tokenizers")
    enc.encode(["warm up " * 100])
    rss0, c0, w0 = proc_status("VmHWM"), cpu_now(), time.time()
    if mode == "pieces":
        ids = enc.encode([text])[0]
    else:
        ids = np.array(loaded.parsed().encode(text, add_special_tokens=False).ids + [loaded.eos_token_id],
                       dtype=np.uint32)
        if loaded.policy.bos_id is not None:
            ids = np.concatenate([np.array([loaded.policy.bos_id], dtype=np.uint32), ids])
    wall, cpu = time.time() - w0, cpu_now() - c0
    Path(report).write_text(json.dumps({"wall": wall, "cpu": cpu, "rss_growth": proc_status("VmHWM") - rss0,
                                        "tokens": int(ids.size), "sha256": hashlib.sha256(ids.tobytes()).hexdigest()}))


CHILDREN: dict[str, Callable[..., None]] = {
    "worker": worker, "ceiling": ceiling, "noop-worker": noop_worker, "bucket-task": bucket_task,
    "whole-doc": whole_doc, "mix-plan": mix_plan, "huge-doc": huge_doc}


if __name__ == "__main__":
    CHILDREN[sys.argv[1]](*sys.argv[2:])
