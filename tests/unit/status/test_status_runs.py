"""`slimtok status` on a job that stopped and restarted: rates and ETA over the latest run only,
starting workers shown without invented figures, and the disk figures (issue: honest progress)."""

import json
import os
import re
import shutil
import time

import pytest

from helpers.tmpfs import mounted_tmpfs
from slimtok.protocol import Checkpoint, Heartbeat, OutputRoot, worker_name, write_record
from slimtok.status import collect_status, format_status, prometheus_text


@pytest.fixture(scope="module")
def job(tokenized_root, bpe_tokenizer):
    return tokenized_root({"train_shards": 4, "docs_per_shard": 20, "holdout_docs": 6}, bpe_tokenizer,
                          "--dtype", "uint32", "--spawn-workers", "1").root


def _entries(root):
    return {e["id"]: e for e in map(json.loads, (root / "manifest.jsonl").read_text().splitlines())}


def _beat(root, index, state, started_at, updated_at, host="elsewhere", shard=None):
    name = worker_name(host, 0, index)
    write_record(OutputRoot(root).heartbeat(name), Heartbeat(
        worker=name, host=host, pid=4242 + index, process_index=0, worker_index=index, shard=shard, state=state,
        documents=0, tokens=0, text_chars=0, shards_done=0, tokens_per_second=0.0, cpu_percent=0.0,
        rss_bytes=1 << 20, updated_at=updated_at, started_at=started_at, interval=1.0,
        host_cpu_percent=0.0, host_cpus=2))


def _restarted(job, tmp_path, second_run_live):
    """Launch 1: workers 0 and 1 ran [T-3000, T-2985] and finished two shards. Launch 2: worker 0
    alone, started T-30, finished a third shard at T-20, then runs on (live) or stopped at T-19
    (an 11 s run). The other shards are pending again (their done records removed)."""
    root = tmp_path / "root"
    shutil.copytree(job, root)
    shutil.rmtree(root / "status")  # no roll-up, no journals: the done records below are the truth
    shutil.rmtree(root / "heartbeats")
    T = time.time()
    done = sorted((root / "done").rglob("*.json"))
    first, second, third, rest = done[0], done[1], done[2], done[3:]
    for path, finished in ((first, T - 2990), (second, T - 2986), (third, T - 20)):
        record = json.loads(path.read_text())
        record["finished_at"] = finished
        path.write_text(json.dumps(record))
    for path in rest:
        path.unlink()
    _beat(root, 1, "exited", T - 3000, T - 2985)
    if second_run_live:
        _beat(root, 0, "working", T - 30, T - 1, shard="train/chunk1/example_train_0")
    else:
        _beat(root, 0, "exited", T - 30, T - 19)
    records = [json.loads(p.read_text()) for p in (first, second, third)]
    pending = [p.relative_to(root / "done").as_posix()[: -len(".json")] for p in rest]
    return root, T, records, pending


def test_rates_and_eta_come_from_the_running_relaunch_only(job, tmp_path):
    root, T, records, pending = _restarted(job, tmp_path, second_run_live=True)
    sizes = {k: e["size"] for k, e in _entries(root).items()}
    got = collect_status(root)
    tp = got.throughput
    assert tp.running and tp.started_at == pytest.approx(T - 30) and tp.ended_at == got.now
    assert tp.seconds == pytest.approx(got.now - (T - 30))
    third = records[2]
    assert (tp.shards, tp.tokens, tp.bytes_in) == (1, third["tokens"], sizes[third["shard"]])
    left = sum(sizes[p] for p in pending)
    assert got.total.bytes_left == left
    assert got.eta_seconds == pytest.approx(left / (sizes[third["shard"]] / tp.seconds))
    line = next(ln for ln in format_status(got, colour=False).splitlines() if ln.startswith("this run, last "))
    assert " 1 shards · " in line and "once relaunched" not in line


def test_a_stopped_job_measures_the_time_it_ran_not_the_idle_time(job, tmp_path):
    root, T, records, pending = _restarted(job, tmp_path, second_run_live=False)
    sizes = {k: e["size"] for k, e in _entries(root).items()}
    got = collect_status(root)
    tp = got.throughput
    assert not tp.running and (tp.started_at, tp.ended_at) == (pytest.approx(T - 30), pytest.approx(T - 19))
    assert tp.seconds == pytest.approx(11) and tp.shards == 1
    rate = sizes[records[2]["shard"]] / tp.seconds
    assert got.eta_seconds == pytest.approx(sum(sizes[p] for p in pending) / rate)
    assert got.throughput.per_second(tp.tokens) == pytest.approx(records[2]["tokens"] / tp.seconds)
    text = format_status(got, colour=False)
    assert re.search(r"^last run \(0m11s, ended .*; nothing running now\): 1 shards .* once relaunched$", text, re.M)
    # a window shorter than the run: its last 5 s, which still hold the shard finished at T-20
    short = collect_status(root, window=5).throughput
    assert (short.started_at, short.seconds, short.shards) == (pytest.approx(T - 24), pytest.approx(5), 1)
    samples = dict(re.findall(r"^(slimtok_\w+)\{[^}]*\} (\S+)$", prometheus_text(got), re.M))
    assert float(samples["slimtok_running"]) == 0 and float(samples["slimtok_throughput_seconds"]) == tp.seconds


def test_a_starting_worker_shows_no_invented_rates(job, tmp_path):
    root, T, _, _ = _restarted(job, tmp_path, second_run_live=False)
    _beat(root, 2, "starting", T - 1, T - 1)
    got = collect_status(root)
    starting = next(w for w in got.workers if w.heartbeat.worker_index == 2)
    assert starting.health == "ok" and not starting.measured
    text = format_status(got, colour=False)
    row = next(ln for ln in text.splitlines() if ln.startswith("elsewhere") and ln.endswith("starting"))
    assert row.split()[4:7] == ["-", "-", "-"]  # no shard yet; tok/s and cpu% "-", not 0
    assert "host elsewhere: 1 live workers · host cpu not measured yet (workers starting)" in text
    prom = prometheus_text(got)
    assert 'slimtok_worker_cpu_percent{' not in prom and 'slimtok_worker_rss_bytes{' in prom


def test_disk_figures_written_expected_and_free(job, tmp_path):
    with mounted_tmpfs(tmp_path / "fs", "16m") as fs:
        root, _, records, pending = _restarted(job, fs, second_run_live=False)
        entries = _entries(root)
        # one running shard stopped part-way: its checkpoint's bytes count as written
        ckpt_shard = pending[0]
        out = OutputRoot(root)
        write_record(out.checkpoint(ckpt_shard), Checkpoint(
            shard=ckpt_shard, token="t", part="p", lines=3, documents=3, tokens=100, bytes=400))
        collect_status(root)  # writes the roll-up and the probe once
        got = collect_status(root)
        st = os.statvfs(root)
        written = sum(r["bytes"] for r in records) + 400
        ratio = {}
        for split in ("train", "validation", "test"):
            mine = [r for r in records if r["split"] == split]
            if mine:
                ratio[split] = sum(r["tokens"] for r in mine) / sum(entries[r["shard"]]["size"] for r in mine)
        # a split with no done shard: the sample pinned in job.json at its creation, else the others' ratio
        pinned = json.loads((root / "job.json").read_text())["sampled_ratios"]
        overall = sum(r["tokens"] for r in records) / sum(entries[r["shard"]]["size"] for r in records)
        for split, (sampled, _shards) in pinned.items():
            ratio.setdefault(split, sampled)
        expected = sum(ratio.get(entries[p]["split"], overall) * 4 * entries[p]["size"] for p in pending) - 400
        disk = got.disk
        assert disk.written == written
        assert disk.expected.bytes == pytest.approx(expected, abs=1)
        assert (disk.space.free, disk.space.total) == (st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
        d = got.to_dict()["disk"]
        assert (d["written"], d["free"]) == (written, disk.space.free)
        prom = dict(re.findall(r"^(slimtok_disk_\w+\{[^}]*\}) (\S+)$", prometheus_text(got), re.M))
        label = f'root="{got.root}"'
        assert float(prom[f"slimtok_disk_written_bytes{{{label}}}"]) == written
        assert float(prom[f"slimtok_disk_free_bytes{{{label}}}"]) == disk.space.free
        assert float(prom[f'slimtok_disk_expected_bytes{{{label},bound="estimate"}}']) == disk.expected.bytes
        line = next(ln for ln in format_status(got, colour=False).splitlines() if ln.startswith("disk: "))
        assert "still expected (±10%)" in line and "free of" in line
