"""The scale section: a whole run (manifest → tokenize → dedup → combine → validate) over GBs of text.

Builds a SlimPajama-layout corpus of ``--scale-gb`` GB of text (per size, under --work/scale-<gb>gb)
from the standard library's sources repeated with variation (scale_corpus), then runs the real
commands as subprocesses (``python -m slimtok …``, this checkout first on PYTHONPATH) and records
for each stage: wall, CPU (user + system of the stage's whole process tree, from
getrusage(RUSAGE_CHILDREN) deltas), bytes read and written (this process's /proc/self/io deltas:
Linux adds a reaped child's I/O counters, and those of the children it reaped, to its parent's, so
the delta over a stage is the stage's tree; the bench itself only samples meanwhile, and the bytes
its sampler reads are subtracted), and peak RSS (VmHWM and RssAnon of every process of the tree,
sampled every 0.1 s: the largest one process reached, and the largest sum of the tree's RSS at one
sample; VmHWM counts mapped file pages, RssAnon does not). Each size's folder is deleted after its run unless
--scale-keep. With several sizes (``--scale-gb 1,10``) the peak RSS of each stage is compared with
the smallest size's (the goal: <= 10 % growth). The table's rows count MB of the corpus's text for
every stage (combine's and validate's own bytes are in the notes).

Combine runs in one process: a parallel combine (issue 26, item 1) does not exist yet.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .corpus import corpus_source
from .harness import PeakSampler, Result, Table, child_env

#: text bytes of one train shard: SlimPajama's 2.4 TB over ~122k shards is ~20 MB a shard
SHARD_TEXT = 20_000_000
#: one document in EXACT_EVERY is written unchanged (an exact duplicate of the pool's text)
EXACT_EVERY = 8
#: shards per train/chunk{c} folder
CHUNK_SHARDS = 100
#: the disk's copy-rate baseline beside combine (not a slimtok stage: left out of the RSS comparison)
CAT = "cat train shards (+sync)"


@dataclass
class Stage:
    """One measured stage of one size."""

    name: str
    wall: float
    cpu: float
    rchar: int  # bytes read through read(2)-like calls (page cache hits included)
    wchar: int
    read_bytes: int  # bytes the tree caused to be fetched from storage
    write_bytes: int  # bytes the tree caused to be sent to storage
    peak_one: int  # the largest VmHWM of one process of the tree (mapped file pages included)
    peak_anon: int  # the largest RssAnon of one process seen by a sample: its own memory, no page cache
    peak_sum: int  # the largest sum of the tree's VmRSS at one sample
    processes: int
    cpu_seen: float  # user + system of the tree's processes at their last sample: a floor under ``cpu``


# -- the corpus ---------------------------------------------------------------------------------

_POOL: list[tuple[str, str]] = []  # (text, source), set before the builders fork


def _variant(text: str, shard: int, j: int) -> str:
    """Document ``j`` of ``shard``: one in EXACT_EVERY unchanged (exact duplicates across shards), the
    others a numbered variant with the paragraphs rotated (near-duplicates, not exact ones)."""
    if (shard * 7919 + j) % EXACT_EVERY == 0:
        return text
    paras = text.split("\n\n")
    k = (shard + j) % len(paras)
    return f"# variant {shard}.{j}\n" + "\n\n".join(paras[k:] + paras[:k])


def _write_shard(job: tuple[str, int, int, int]) -> int:
    """Write the shard ``path`` (index ``shard``) of ~``target`` text bytes starting at pool offset
    ``start``; returns the text bytes written. zstd level 1: the builder must not be the bottleneck."""
    import orjson
    import zstandard

    path, shard, target, start = job
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    written, j = 0, 0
    tmp = dest.with_name(dest.name + ".partial")
    with open(tmp, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as out:
        buf: list[bytes] = []
        while written < target:
            text, source = _POOL[(start + j) % len(_POOL)]
            doc = _variant(text, shard, j)
            buf.append(orjson.dumps({"text": doc, "meta": {"redpajama_set_name": source}}))
            written += len(doc.encode())
            j += 1
            if len(buf) >= 256:
                out.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            out.write(b"\n".join(buf) + b"\n")
    tmp.rename(dest)
    return written


def scale_corpus(out: Path, gb: float, processes: int = 2) -> int:
    """A SlimPajama-layout corpus of ~``gb`` GB of text in SHARD_TEXT shards
    (train/chunk{c}/example_train_{i}.jsonl.zst) plus one validation and one test holdout of 0.25 %
    of it each; returns its text bytes. The holdouts are drawn from the same documents, so the dedup
    finds train documents in them too. A corpus folder that exists is complete (renamed into place)."""
    from slimtok.demo import stdlib_documents

    marker = out / "corpus-bytes"
    if marker.exists():
        return int(marker.read_text())
    global _POOL
    _POOL = [(t, corpus_source(t)) for t in stdlib_documents(10**9)]
    total = int(gb * 1e9)
    shards = max(1, round(total / SHARD_TEXT))
    jobs = [(str(out / f"train/chunk{s // CHUNK_SHARDS + 1}/example_train_{s}.jsonl.zst"), s, total // shards,
             s * 1009) for s in range(shards)]
    holdout = max(1_000_000, total // 400)
    jobs += [(str(out / f"{split}/chunk1/example_holdout_0.jsonl.zst"), shards + k, holdout, (k + 1) * 4999)
             for k, split in enumerate(("validation", "test"))]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        written = sum(pool.imap_unordered(_write_shard, jobs))
    marker.write_text(str(written))
    return written


# -- the measured stages ------------------------------------------------------------------------

def _io() -> dict[str, int]:
    """This process's I/O counters, which include those of every child it reaped (and theirs)."""
    fields = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        fields[key] = int(value)
    return fields


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class _Tree:
    """The process tree under ``pid``: per process its largest VmHWM seen, and the largest sum of
    the tree's VmRSS at one look (``sample`` is PeakSampler's measure). Walks /proc/<pid>/task/*/children
    (not every process of the host), and counts the bytes it reads itself (``read``), which
    /proc/self/io's rchar includes and the stage's figures must not."""

    def __init__(self, pid: int):
        self.pid = pid
        self.hwm: dict[int, int] = {}
        self.peak_anon = 0
        self.peak_sum = 0
        self.read = 0
        self.cpu: dict[int, float] = {}  # utime + stime at the last sample

    def _text(self, path: str) -> str:
        try:
            data = Path(path).read_bytes()
        except (FileNotFoundError, ProcessLookupError):  # exited between listing and reading
            return ""
        self.read += len(data)
        return data.decode()

    def sample(self) -> int:
        pids, now, i = [self.pid], 0, 0
        while i < len(pids):
            pid = pids[i]
            i += 1
            status = self._text(f"/proc/{pid}/status")
            if not status:
                continue
            kb = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
                  if line.startswith(("VmHWM:", "VmRSS:", "RssAnon:"))}
            self.hwm[pid] = max(self.hwm.get(pid, 0), kb.get("VmHWM", 0) * 1024)
            self.peak_anon = max(self.peak_anon, kb.get("RssAnon", 0) * 1024)
            now += kb.get("VmRSS", 0) * 1024
            stat = self._text(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
            if stat:  # fields 14 and 15 (utime, stime), counted from after the command's ")"
                self.cpu[pid] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except FileNotFoundError:
                continue
            for tid in tids:
                pids += [int(c) for c in self._text(f"/proc/{pid}/task/{tid}/children").split()]
        self.peak_sum = max(self.peak_sum, now)
        return self.peak_sum


def run_stage(name: str, command: list[str], log: Path) -> Stage:
    """Run ``command`` to its end and measure its whole process tree."""
    cpu0, io0, w0 = _children_cpu(), _io(), time.time()
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=child_env())
        tree = _Tree(proc.pid)
        with PeakSampler(tree.sample, every=0.1):
            code = proc.wait()
    wall, cpu, io1 = time.time() - w0, _children_cpu() - cpu0, _io()
    if code != 0:
        raise SystemExit(f"scale: `{' '.join(command[:4])} …` exited with {code}; see {log}")
    d = {k: io1[k] - io0[k] for k in ("rchar", "wchar", "read_bytes", "write_bytes")}
    d["rchar"] -= tree.read
    return Stage(name, wall, cpu, d["rchar"], d["wchar"], d["read_bytes"], d["write_bytes"],
                 max(tree.hwm.values(), default=0), tree.peak_anon, tree.peak_sum, len(tree.hwm),
                 sum(tree.cpu.values()))


def scale_run(work: Path, gb: float, tokenizer: Path, workers: int) -> tuple[int, dict, list[Stage]]:
    """Build the corpus of ``gb`` GB, then run and measure every stage; (text bytes, meta.json's train
    split, stages). The corpus build is a stage too (its pool's children; not a slimtok command)."""
    corpus, root = work / "corpus", work / "out"
    c0, w0 = _children_cpu(), time.time()
    text = scale_corpus(corpus, gb, workers)
    build = Stage("build corpus (bench)", time.time() - w0, _children_cpu() - c0, 0, 0, 0,
                  sum(f.stat().st_size for f in corpus.rglob("*.zst")), 0, 0, 0, workers, 0.0)
    log = work / "commands.log"
    stages = [build]
    n = str(workers)
    for name, args in (
        ("manifest", ["manifest", "--dataset-dir", str(corpus), "--output-dir", str(work / "m")]),
        (f"tokenize ({n} workers)", ["tokenize", "--manifest", str(work / "m" / "manifest.jsonl"),
                                     "--output-root", str(root), "--tokenizer", str(tokenizer),
                                     "--spawn-workers", n, "--quiet"]),
        (f"dedup ({n} workers)", ["dedup", "--output-root", str(root), "--spawn-workers", n, "--quiet"]),
        ("combine --dedup", ["combine", "--output-root", str(root), "--dedup", "--quiet"]),
        ("validate", ["validate", "--output-root", str(root)]),
    ):
        stages.append(run_stage(name, [sys.executable, "-m", "slimtok", *args], log))
        print(f"[bench] scale {gb:g} GB: {_row(text, stages[-1])}", file=sys.stderr, flush=True)
    # the disk's own copy rate beside combine's: `cat` of the train shards' data onto the same disk,
    # synced (combine syncs its file too); the page cache is flushed first so no earlier write is paid here
    shards, dest = sorted((root / "shards" / "train").rglob("*.bin")), work / "cat.bin"
    os.sync()
    stages.append(run_stage(CAT, ["sh", "-c", 'cat "$@" > "$0" && sync "$0"', str(dest), *map(str, shards)], log))
    dest.unlink()
    print(f"[bench] scale {gb:g} GB: {_row(text, stages[-1])}", file=sys.stderr, flush=True)
    return text, json.loads((root / "meta.json").read_text())["splits"]["train"], stages


def _row(text: int, s: Stage) -> str:
    return (f"{s.name}: {s.wall:.1f} s wall, {s.cpu:.1f} CPU-s, {text / 1e6 / max(s.cpu, 1e-9):.1f} MB text/CPU-s, "
            f"read {s.rchar / 1e9:.2f} GB ({s.read_bytes / 1e9:.2f} from storage), written {s.wchar / 1e9:.2f} GB "
            f"({s.write_bytes / 1e9:.2f} to storage), peak RSS {s.peak_one / 1e6:.0f} MB one process "
            f"(anonymous {s.peak_anon / 1e6:.0f} MB) / {s.peak_sum / 1e6:.0f} MB the tree, {s.processes} processes; "
            f"CPU seen by sampling {s.cpu_seen:.1f} s")


def bench_scale(table: Table, work: Path, sizes: list[float], tokenizer: Path, workers: int, keep: bool) -> None:
    """Run the whole pipeline at each of ``sizes`` (GB of text); a table of stages per size as notes,
    then each stage's peak RSS against the smallest size's."""
    free = shutil.disk_usage(work).free
    results: dict[float, list[Stage]] = {}
    for gb in sizes:
        folder = work / f"scale-{gb:g}gb"
        if free < gb * 1e9 * 3.5:  # corpus (~1/3), shards (~1.2), train.bin (~1.2), parts
            table.note(f"scale {gb:g} GB: skipped, {free / 1e9:.0f} GB free under {work} (needs ~{gb * 3.5:.0f})")
            continue
        text, train, stages = scale_run(folder, gb, tokenizer, workers)
        results[gb] = stages
        removed = {why: n["documents"] for why, n in train["removed"].items()}
        kept = train["documents"]
        table.note(f"scale {gb:g} GB: {text / 1e9:.2f} GB text in {train['shards']} train shards "
                   f"(+ 2 holdouts), train.bin {train['bytes'] / 1e9:.2f} GB ({kept:,} documents kept; removed by "
                   f"the dedup: {removed}, {sum(removed.values()) / (kept + sum(removed.values())) * 100:.1f} %); "
                   f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
        for s in stages:
            table.note(f"  {_row(text, s)}")
            table.add(Result(f"scale {gb:g} GB: {s.name}", text, s.wall, s.cpu, rss=s.peak_one))
        (work / f"scale-{gb:g}gb.json").write_text(json.dumps(
            {"gb": gb, "text_bytes": text, "train": train, "stages": [asdict(s) for s in stages]},
            indent=1))
        if not keep:
            shutil.rmtree(folder)
    if len(results) > 1:
        base = min(results)
        for gb in sorted(results)[1:]:
            for what, attr in (("peak RSS (VmHWM)", "peak_one"), ("peak anonymous RSS", "peak_anon")):
                pairs = [(a, b) for a, b in zip(results[base], results[gb], strict=True)
                         if getattr(a, attr) and a.name != CAT]
                growth = [f"{a.name} {getattr(a, attr) / 1e6:.0f} -> {getattr(b, attr) / 1e6:.0f} MB "
                          f"({(getattr(b, attr) / getattr(a, attr) - 1) * 100:+.1f} %)" for a, b in pairs]
                flat = all(getattr(b, attr) <= 1.1 * getattr(a, attr) for a, b in pairs)
                table.note(f"scale: {what} of one process, {base:g} GB -> {gb:g} GB: {'; '.join(growth)}; "
                           f"{'FLAT (<= 10 %)' if flat else 'NOT FLAT: a stage grew > 10 %'}")
