"""slimtok dedup on real tokenized roots with planted repeats: the drops equal a keep-first
reference computed here from the texts, whatever the worker count, process grid or kills."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import xxhash

from helpers.cli import slimtok
from helpers.corpus import doc_line, sample_documents, write_shard
from helpers.terminal import drain_pty
from slimtok.claims import current_holder
from slimtok.dedup import DropReader, dedup_status, exclusion_for, run_dedup
from slimtok.dedup.units import find_drops
from slimtok.errors import DedupError
from slimtok.progress import display
from slimtok.protocol import (
    DEDUP_DROP_DTYPE,
    DEDUP_REASONS,
    DEDUP_ROW_DTYPE,
    DOC_TABLE_DTYPE,
    SPLITS,
    DoneRecord,
    LockRecord,
    OutputRoot,
    dedup_unit,
    read_record,
    write_record,
)

EOS = 0  # the session BPE's <|endoftext|>


def _texts() -> list[str]:
    pool = list(dict.fromkeys(sample_documents(120, seed=7)))
    assert len(pool) >= 60
    return pool


def _corpus() -> dict[str, list[tuple[str, str]]]:
    """Shard id -> [(text, source)], with planted repeats: within a shard (t0), across shards (t2),
    across chunks (t1), one text under two sources (t3), train vs validation (t7), train vs test
    (t9), repeats inside validation (t13) and test (t9), and validation vs test (t15)."""
    t = _texts()
    filler = iter(t[20:])
    shards = {
        "train/chunk1/example_train_0": [t[0], t[1], t[0], t[2], t[3]],
        "train/chunk1/example_train_1": [t[2], t[4], t[5], t[3], t[6]],
        "train/chunk2/example_train_2": [t[1], t[7], t[8], t[9], t[0]],
        "train/chunk2/example_train_3": [t[7], t[10], t[11], t[12], t[7]],
        "validation/chunk1/example_holdout_0": [t[7], t[13], t[13], t[14], t[15]],
        "test/chunk1/example_holdout_0": [t[9], t[15], t[16], t[9], t[17]],
    }
    out = {}
    for sid, docs in shards.items():
        docs = docs + [next(filler) for _ in range(4)]
        out[sid] = [(text, "alpha" if i % 2 else "beta") for i, text in enumerate(docs)]
    out["train/chunk1/example_train_1"][3] = (t[3], "gamma")  # same text as shard 0's, another source
    return out


def _check_tables(root: Path, corpus: dict[str, list[tuple[str, str]]]) -> None:
    """The worker's document tables hold, per shard, the texts this test wrote: their hashes,
    sources and token counts (documents end at eos, exact for this corpus)."""
    out = OutputRoot(root)
    for sid, docs in corpus.items():
        record = read_record(out.done(sid), DoneRecord)
        tokens = np.fromfile(out.resolve(record.file), dtype=record.dtype)
        ends = np.flatnonzero(tokens == EOS) + 1
        assert len(ends) == len(docs) == record.documents
        table = np.fromfile(out.resolve(record.table), dtype=DOC_TABLE_DTYPE)
        assert table["tokens"].tolist() == np.diff(np.r_[0, ends]).tolist()
        assert [record.source_names[i] for i in table["source"]] == [source for _, source in docs]
        digests = [xxhash.xxh3_128_intdigest(text.encode("utf-8")) for text, _ in docs]
        assert [(int(h) << 64) | int(lo) for h, lo in zip(table["hash_hi"], table["hash_lo"], strict=True)] == digests


def _reference(manifest: Path, corpus: dict[str, list[tuple[str, str]]]) -> dict[str, list[tuple[int, str]]]:
    """Keep-first over the texts in manifest order, train before validation before test; a train
    text that occurs in validation or test is contamination (the holdout keeps it)."""
    ids = [json.loads(line) for line in manifest.read_text().splitlines()]
    ids = [e["id"] for s in SPLITS for e in ids if e["split"] == s]
    holdout = {text for sid in ids if not sid.startswith("train/") for text, _ in corpus[sid]}
    seen: dict[str, set[str]] = {s: set() for s in SPLITS}
    drops: dict[str, list[tuple[int, str]]] = {}
    for sid in ids:
        split = sid.split("/")[0]
        drops[sid] = []
        for k, (text, _) in enumerate(corpus[sid]):
            if split == "train" and text in holdout:
                drops[sid].append((k, "contamination"))
            elif text in seen[split]:
                drops[sid].append((k, "duplicate"))
            seen[split].add(text)
    return drops


def _drops(root: Path, corpus) -> dict[str, list[tuple[int, str]]]:
    reader = DropReader(root)
    got = {}
    for sid in corpus:
        indices, reasons, labels = reader.drops(sid)
        assert indices.dtype == np.int64 and np.all(np.diff(indices) > 0)
        got[sid] = [(int(i), labels[r]) for i, r in zip(indices, reasons, strict=True)]
    return got


def _write_corpus(folder: Path) -> None:
    for sid, docs in _corpus().items():
        write_shard(folder / f"{sid}.jsonl.zst", [doc_line(text, source) for text, source in docs])


@pytest.fixture(scope="module")
def tokenized(tokenized_root, bpe_tokenizer):
    """A tokenized root (with tables) of the planted corpus; tests dedup copies of it."""
    root = tokenized_root(_write_corpus, bpe_tokenizer, "--dtype", "uint32", "--quiet", "--spawn-workers", "1").root
    corpus = _corpus()
    _check_tables(root, corpus)
    return root, corpus, _reference(root / "manifest.jsonl", corpus)


def _copy(tokenized, tmp_path: Path, name: str = "copy") -> Path:
    copy = tmp_path / name
    shutil.copytree(tokenized[0], copy)
    return copy


def _dedup_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in (root / "dedup").rglob("*")
            if p.is_file() and p.suffix in (".rows", ".drops")}


def test_reference_has_every_kind_of_repeat(tokenized):
    _, _, ref = tokenized
    reasons = [r for rows in ref.values() for _, r in rows]
    assert reasons.count("contamination") == 4 and reasons.count("duplicate") == 7


def test_drops_equal_the_keep_first_reference(tokenized, tmp_path):
    _, corpus, ref = tokenized
    root = _copy(tokenized, tmp_path)
    job = run_dedup(root, buckets=8, unit_shards=2)
    assert _drops(root, corpus) == ref
    counted = {name: sum(r == name for rows in ref.values() for _, r in rows) for name in DEDUP_REASONS[1:]}
    assert job.dropped == counted and job.documents == sum(map(len, corpus.values()))
    status = dedup_status(root)
    assert status["finished"] and all(p["done"] == p["units"] and p["pending"] == 0
                                      for p in status["phases"].values())
    assert status["phases"]["bucket"]["units"] == 8 and status["phases"]["scatter"]["units"] == 3


def test_exclusion_for_names_reasons_and_skips_shards_without_drops(tokenized, tmp_path):
    _, corpus, ref = tokenized
    root = _copy(tokenized, tmp_path)
    run_dedup(root, buckets=4)
    exclude = exclusion_for(root)
    for sid in corpus:
        got = exclude(read_record(OutputRoot(root).done(sid), DoneRecord))
        want = ref[sid]
        if not want:
            assert got is None
        else:
            assert [(int(i), r) for i, r in zip(got.indices, got.reasons, strict=True)] == want


def test_identical_for_1_2_workers_and_3_processes(tokenized, tmp_path):
    _, corpus, ref = tokenized
    one, two, three = (_copy(tokenized, tmp_path, n) for n in ("one", "two", "three"))
    run_dedup(one, buckets=16, unit_shards=1)
    run_dedup(two, buckets=16, unit_shards=1, workers=2)
    code = ("import sys; from slimtok.dedup import run_dedup; "
            "run_dedup(sys.argv[1], buckets=16, unit_shards=1, process_index=int(sys.argv[2]), process_count=3)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(three), str(i)], stderr=subprocess.PIPE)
             for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    for root in (one, two, three):
        assert _drops(root, corpus) == ref
    assert _dedup_files(two) == _dedup_files(one) == _dedup_files(three)
    jobs = [json.loads(OutputRoot(r).dedup_job.read_text()) for r in (one, two, three)]
    assert all({k: v for k, v in j.items() if k != "finished_at"} ==
               {k: v for k, v in jobs[0].items() if k != "finished_at"} for j in jobs)


@pytest.mark.slow  # kill -9 at random moments, several runs
def test_kill_9_of_dedup_workers_then_relaunch_resumes(tokenized, tmp_path):
    _, corpus, ref = tokenized
    root = _copy(tokenized, tmp_path)
    code = ("import sys; from slimtok.dedup import run_dedup; "
            "run_dedup(sys.argv[1], buckets=64, unit_shards=1, workers=2)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], start_new_session=True)
    done_dir = root / "dedup" / "done"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if done_dir.is_dir() and sum(1 for p in done_dir.rglob("*.json")) >= 3:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not OutputRoot(root).dedup_job.exists()  # killed after 3 of its 76 units
    before = {p: p.stat().st_mtime_ns for p in (root / "dedup").rglob("*") if p.suffix in (".rows", ".drops")
              and (done_dir / p.parent.relative_to(root / "dedup").as_posix().replace("drops", "gather")
                   / f"{p.stem}.json").exists()}
    run_dedup(root, buckets=64, unit_shards=1, workers=2)
    assert _drops(root, corpus) == ref
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished units were not redone
    fresh = _copy(tokenized, tmp_path, "fresh")
    run_dedup(fresh, buckets=64, unit_shards=1)
    assert _dedup_files(root) == _dedup_files(fresh)


def test_a_killed_dedup_worker_is_named_replaced_and_the_run_completes_identically(tokenized, tmp_path):
    _, corpus, ref = tokenized
    root = _copy(tokenized, tmp_path)
    code = ("import sys; from slimtok.dedup import run_dedup; "
            "run_dedup(sys.argv[1], buckets=64, unit_shards=1, workers=2)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stderr=subprocess.PIPE, text=True)
    done_dir = root / "dedup" / "done"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (done_dir.is_dir() and any(done_dir.rglob("*.json"))):
        time.sleep(0.01)
    victim = next(c for c in psutil.Process(proc.pid).children()  # not spawn's resource tracker
                  if "resource_tracker" not in " ".join(c.cmdline()))
    victim.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    named = re.findall(rf"^slimtok-dedup-\d \(pid {victim.pid}\) was killed by SIGKILL (while holding dedup/\w+/\d+|"
                       r"holding no claim); replaced by pid \d+ \(replacement 1 of at most 2 in this launch\)$",
                       err, re.M)
    assert len(named) == 1 and err.count("was killed by") == 1, err
    assert _drops(root, corpus) == ref
    fresh = _copy(tokenized, tmp_path, "fresh")
    run_dedup(fresh, buckets=64, unit_shards=1)
    assert _dedup_files(root) == _dedup_files(fresh)


def test_a_unit_held_by_a_dead_worker_with_a_torn_file_is_taken_over(tokenized, tmp_path):
    _, corpus, ref = tokenized
    root = _copy(tokenized, tmp_path)
    out = OutputRoot(root)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = current_holder(0, 0)
    lock = LockRecord(me.host, me.boot_id, dead.pid, me.pid_started, 0, 0, dedup_unit("scatter", 0), "deadbeef",
                      time.time())
    write_record(out.lock(dedup_unit("scatter", 0)), lock)
    torn = out.dedup_unit_data("scatter", 0)
    torn.parent.mkdir(parents=True)
    torn.write_bytes(b"\x01" * 7)  # what a killed writer could leave before its rename
    run_dedup(root, buckets=8, stale_after=300)
    assert _drops(root, corpus) == ref
    assert torn.stat().st_size % DEDUP_ROW_DTYPE.itemsize == 0 and not out.lock(dedup_unit("scatter", 0)).exists()


def test_root_without_tables_is_refused_naming_the_shard(tokenized, tmp_path):
    root = _copy(tokenized, tmp_path)
    out = OutputRoot(root)
    sid = "train/chunk2/example_train_2"
    record = read_record(out.done(sid), DoneRecord)
    record.table = ""
    write_record(out.done(sid), record)
    with pytest.raises(DedupError) as err:
        run_dedup(root)
    assert sid in str(err.value) and "no document table" in str(err.value) and "tokenize again" in str(err.value)
    assert not (root / "dedup").exists()


def test_changed_shards_or_settings_are_refused_after_a_dedup(tokenized, tmp_path):
    root = _copy(tokenized, tmp_path)
    run_dedup(root, buckets=8)
    with pytest.raises(DedupError, match="--buckets 8"):
        run_dedup(root, buckets=16)
    out = OutputRoot(root)
    sid = "test/chunk1/example_holdout_0"
    record = read_record(out.done(sid), DoneRecord)
    record.table_sha256 = "0" * 64
    write_record(out.done(sid), record)
    with pytest.raises(DedupError, match="shards changed"):
        exclusion_for(root)
    with pytest.raises(DedupError, match="shards changed"):
        run_dedup(root, buckets=8)


def test_find_drops_equals_a_dict_reference_on_colliding_hashes():
    rng = np.random.default_rng(3)
    n = 20_000
    rows = np.zeros(n, DEDUP_ROW_DTYPE)
    rows["hash_hi"] = rng.integers(0, 40, n, dtype=np.uint64) << np.uint64(40)
    rows["hash_lo"] = rng.integers(0, 50, n, dtype=np.uint64)
    split = rng.choice(3, n, p=[0.9, 0.05, 0.05]).astype(np.uint64)
    rows["order"] = (split << np.uint64(62)) | np.arange(n, dtype=np.uint64)
    holdout = {(int(r["hash_hi"]), int(r["hash_lo"])) for r in rows if r["order"] >> 62}
    seen: set = set()
    want = []
    for r in sorted(rows.tolist(), key=lambda r: r[2]):
        key, s = (r[0], r[1]), r[2] >> 62
        if s == 0 and key in holdout:
            want.append((r[2], 2))
        elif (key, s) in seen:
            want.append((r[2], 1))
        seen.add((key, s))
    got = find_drops(rows[rng.permutation(n)])
    assert got.dtype == DEDUP_DROP_DTYPE and got.tolist() == want


def test_the_command_reports_counts_and_refuses_a_non_root(tokenized, tmp_path):
    _, _, ref = tokenized
    root = _copy(tokenized, tmp_path)
    done = slimtok("dedup", "--output-root", root, "--spawn-workers", 1, "--buckets", 4, "--quiet")
    dropped = sum(map(len, ref.values()))
    assert done.stdout.splitlines() == [f"dedup: {sum(map(len, tokenized[1].values()))} documents in 6 shards; "
                                        f"dropped 4 contamination, {dropped - 4} duplicate"]
    (tmp_path / "nothing").mkdir()
    refused = slimtok("dedup", "--output-root", tmp_path / "nothing", "--spawn-workers", 1, check=False)
    assert refused.returncode == 2 and "job.json is missing" in refused.stderr and not refused.stdout


def test_a_bucket_task_holds_only_its_bucket(tmp_path):
    """Peak traced memory of one bucket task ≤ 64 MB per 100 M documents of the job."""
    import tracemalloc

    from slimtok.dedup.plan import make_plan, read_inputs
    from slimtok.dedup.run import DedupWorker, pin_plan
    from slimtok.dedup.units import bucket_rows
    from slimtok.testing import synthetic_root

    root = synthetic_root(tmp_path / "synthetic", shards=200, docs_per_shard=2000)
    inputs = read_inputs(root)
    plan = pin_plan(root, make_plan(inputs, buckets=256))
    DedupWorker(root, plan, inputs, 300.0, 0, 1, 0, 1)._phase("scatter")
    budget = 64e6 * plan.documents / 100e6
    for b in (0, 77, 255):
        tracemalloc.start()
        drops = find_drops(bucket_rows(root, plan, b))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert 0 < len(drops) and peak <= budget, (b, peak, budget)


def _rss(key: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def test_a_bucket_task_maps_no_scatter_file_and_refuses_a_short_one(tmp_path):
    """RSS (not just traced memory) of a bucket task stays near its rows' bytes: reading its slices
    must not map the scatter files (a mapped file's pages count whole folios). A scatter file
    shorter than its record promises is refused, naming it."""
    from slimtok.dedup.plan import make_plan, read_inputs
    from slimtok.dedup.run import DedupWorker, pin_plan
    from slimtok.dedup.units import bucket_rows
    from slimtok.testing import synthetic_root

    root = synthetic_root(tmp_path / "synthetic", shards=100, docs_per_shard=2000)
    inputs = read_inputs(root)
    plan = pin_plan(root, make_plan(inputs, buckets=256))
    DedupWorker(root, plan, inputs, 300.0, 0, 1, 0, 1)._phase("scatter")
    find_drops(bucket_rows(root, plan, 1))  # one-time costs (first use of each numpy path)
    Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from the current RSS
    before = _rss("VmRSS")
    rows = bucket_rows(root, plan, 200)
    grown = _rss("VmHWM") - before
    assert 0 < rows.nbytes < 40_000 and grown < 512 * 1024, grown
    scatter = root.dedup_unit_data("scatter", 1)
    os.truncate(scatter, scatter.stat().st_size - DEDUP_ROW_DTYPE.itemsize)
    with pytest.raises(DedupError, match="bytes where its done record promises") as e:
        bucket_rows(root, plan, 255)
    assert str(scatter) in str(e.value)


def test_sigterm_stops_the_workers_with_75_and_a_relaunch_completes(tokenized, tmp_path):
    _, corpus, ref = tokenized
    root = _copy(tokenized, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "slimtok", "dedup", "--output-root", str(root), "--spawn-workers",
                             "2", "--buckets", "64"], stderr=subprocess.PIPE, text=True)
    done_dir = root / "dedup" / "done"
    while proc.poll() is None and not (done_dir.is_dir() and any(done_dir.rglob("*.json"))):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75 and "stopped on a signal" in err and "again to resume" in err
    assert not OutputRoot(root).dedup_job.exists()
    run_dedup(root, buckets=64)
    assert _drops(root, corpus) == ref


def test_combine_dedup_writes_exactly_the_kept_documents_and_counts_them(tokenized, tmp_path):
    root, corpus, reference = tokenized
    copy = _copy(tokenized, tmp_path)
    slimtok("dedup", "--output-root", copy, "--spawn-workers", 1, "--buckets", 8)
    status = json.loads(slimtok("status", "--output-root", copy, "--json").stdout)
    [stage] = [s for s in status["stages"] if s["name"] == "dedup"]
    assert stage["done"] == stage["total"] > 0 and stage["detail"].endswith("finished")
    slimtok("combine", "--output-root", copy, "--dedup")
    out = OutputRoot(copy)
    manifest = [json.loads(line) for line in (copy / "manifest.jsonl").read_text().splitlines()]
    meta = json.loads((copy / "meta.json").read_text())
    for split, name in (("train", "train.bin"), ("validation", "val.bin"), ("test", "test.bin")):
        want, removed = [], {}
        for entry in (e for e in manifest if e["split"] == split):
            record = read_record(out.done(entry["id"]), DoneRecord)
            tokens = np.fromfile(out.resolve(record.file), dtype=record.dtype)
            ends = np.cumsum(np.fromfile(out.resolve(record.table), dtype=DOC_TABLE_DTYPE)["tokens"].astype(np.int64))
            dropped = dict(reference[entry["id"]])
            for k, (start, end) in enumerate(zip(np.r_[0, ends[:-1]], ends, strict=True)):
                if k in dropped:
                    counts = removed.setdefault(dropped[k], [0, 0])
                    counts[0], counts[1] = counts[0] + 1, counts[1] + int(end - start)
                else:
                    want.append(tokens[start:end])
        got = np.fromfile(copy / name, dtype=meta["dtype"])
        assert np.array_equal(got, np.concatenate(want))
        info = meta["splits"][split]
        assert {r: [c["documents"], c["tokens"]] for r, c in info.get("removed", {}).items()
                if isinstance(c, dict) and "documents" in c} == removed
    plain = _copy(tokenized, tmp_path, "plain")
    slimtok("combine", "--output-root", plain)
    total = sum(read_record(out.done(e["id"]), DoneRecord).bytes for e in manifest if e["split"] == "train")
    assert (plain / "train.bin").stat().st_size == total  # without --dedup nothing is left out


def test_progress_on_a_terminal_under_quiet_is_plain_lines_of_units_and_documents(tokenized, tmp_path):
    """``quiet`` on a terminal: plain lines (no bar) over all three phases' units; the last line
    counts every unit (2 units of 64 shards + the buckets) and the gather phase's documents."""
    _, corpus, _ = tokenized
    root = _copy(tokenized, tmp_path)
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        run_dedup(root, buckets=8, workers=2,
                  progress=display("dedup", unit="units", quiet=True, stream=tty, every=0))
        text = drain_pty(master)
    os.close(master)
    lines = text.replace("\r\n", "\n").splitlines()
    documents = sum(map(len, corpus.values()))
    assert "%|" not in text and lines[0].startswith("dedup scatter: units 0/10 · 0 docs · ")
    assert lines[-1].startswith(f"dedup gather: units 10/10 · {documents} docs · "), lines
    done = [int(line.split("units ")[1].split("/")[0]) for line in lines]
    assert done == sorted(done) and all(line.startswith("dedup ") for line in lines)


def test_dedup_command_takes_quiet(tokenized, tmp_path):
    root = _copy(tokenized, tmp_path)
    done = subprocess.run([sys.executable, "-m", "slimtok", "dedup", "--output-root", str(root), "--spawn-workers", "1",
                           "--buckets", "2", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1].startswith("dedup gather: units 4/4 · ")
    assert done.stdout.startswith(f"dedup: {sum(map(len, tokenized[1].values()))} documents in 6 shards")


def test_auto_buckets_follow_the_job_size_and_a_relaunch_keeps_the_pinned_count(tokenized, tmp_path, monkeypatch):
    from slimtok.dedup import plan as dedup_plan
    from slimtok.protocol import DedupPlan

    _, corpus, ref = tokenized
    documents = sum(map(len, corpus.values()))
    small = _copy(tokenized, tmp_path, "small")
    run_dedup(small)  # a job of a few dozen documents: one bucket, three units in all
    assert read_record(OutputRoot(small).dedup_plan, DedupPlan).buckets == 1
    assert _drops(small, corpus) == ref
    monkeypatch.setattr(dedup_plan, "ROWS_PER_BUCKET", 7)
    sized = _copy(tokenized, tmp_path, "sized")
    run_dedup(sized)
    assert read_record(OutputRoot(sized).dedup_plan, DedupPlan).buckets == -(-documents // 7)
    assert _drops(sized, corpus) == ref
    explicit = _copy(tokenized, tmp_path, "explicit")
    run_dedup(explicit, buckets=5)
    files = _dedup_files(explicit)
    run_dedup(explicit)  # a relaunch without --buckets takes the pinned 5
    assert _dedup_files(explicit) == files
    with pytest.raises(DedupError, match="--buckets 5"):
        run_dedup(explicit, buckets=6)
