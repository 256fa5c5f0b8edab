"""Workers say what bounds them (issue 26, item 2): each worker's phases, CPU time and bytes in its
heartbeat, and status's per-node and job verdict, checked by throttling one phase at a time in an
in-process worker run and by the accounting rules on hand-made heartbeats."""

import json
import re
import time

import pytest

from helpers import cli
from helpers.corpus import make_dataset
from slimtok.protocol import Heartbeat, OutputRoot, read_record, worker_name, write_record
from slimtok.protocol.records import PHASES
from slimtok.status import collect_status, format_status, prometheus_text
from slimtok.status.model import SATURATED
from slimtok.worker import stats as stats_mod

#: Seconds each throttled call waits (or spins): large beside the real work of these tiny shards.
DELAY = 0.4


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    work = tmp_path_factory.mktemp("bounds")
    dataset = make_dataset(work / "ds", train_shards=2, docs_per_shard=60, holdout_docs=2)
    return cli.manifest(work, dataset)


def _run_worker(manifest, tokenizer, root):
    """One worker over the train split, in this process (so the throttles below apply)."""
    from slimtok.job import TokenizeSettings, pin_job
    from slimtok.worker import Worker

    settings = TokenizeSettings(dtype="uint32", manifest=str(manifest), output_root=str(root),
                                tokenizer=str(tokenizer), splits=("train",), backend="tokenizers")
    job = pin_job(settings)
    worker = Worker(job, 0)
    assert worker.run() == 0
    return read_record(OutputRoot(root).heartbeat(worker.name), Heartbeat)


def _counted(monkeypatch, owner, name, action):
    """Replace ``owner.name`` by a call that does ``action()`` first; returns the list of calls made."""
    real = getattr(owner, name)
    calls = []

    def throttled(*args, **kwargs):
        calls.append(action())
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, throttled)
    return calls


def _sleep():
    time.sleep(DELAY)
    return DELAY


def _spin():
    """Busy CPU for DELAY seconds of CPU time; returns the CPU seconds it used."""
    start = time.process_time()
    while time.process_time() - start < DELAY:
        pass
    return time.process_time() - start


def _slow_blocks(monkeypatch):
    """Every decompressed input block arrives DELAY late; returns the delays."""
    import slimtok.reader as reader_mod

    real = reader_mod.data_blocks
    delays = []

    def slow(*args, **kwargs):
        for block in real(*args, **kwargs):
            time.sleep(DELAY)
            delays.append(DELAY)
            yield block

    monkeypatch.setattr(reader_mod, "data_blocks", slow)
    return delays


def _throttle(kind, monkeypatch):
    from slimtok.claims import Claimer
    from slimtok.tokenizer import Encoder
    from slimtok.worker.files import PartFile

    if kind == "read":
        return _slow_blocks(monkeypatch)
    if kind == "write":
        return _counted(monkeypatch, PartFile, "write", _sleep)
    if kind == "claim_wait":
        return _counted(monkeypatch, Claimer, "try_claim", _sleep)
    return _counted(monkeypatch, Encoder, "encode", _spin)  # "encode": the CPU is the limit


@pytest.mark.parametrize(("kind", "verdict"), [("read", "read-bound"), ("write", "write-bound"),
                                               ("claim_wait", "claim-bound"), ("encode", "encoder-bound")])
def test_throttling_one_phase_makes_it_the_verdict(kind, verdict, manifest, bpe_tokenizer, tmp_path, monkeypatch):
    root = tmp_path / "out"
    injected = _throttle(kind, monkeypatch)
    hb = _run_worker(manifest, bpe_tokenizer, root)
    monkeypatch.undo()
    assert injected, f"the {kind} throttle was never called"
    wall = hb.updated_at - hb.started_at
    assert set(hb.phases) == set(PHASES)
    # the phases never overlap: their sum fits in the worker's wall time (a beat rounds to 1 ms each)
    assert sum(hb.phases.values()) <= wall + 0.01
    # every injected wait or spin is charged to the throttled phase
    assert hb.phases[kind] >= sum(injected) - 0.01
    assert max(PHASES, key=hb.phases.__getitem__) == kind
    if kind == "encode":  # the spin is CPU time of this worker's process
        assert hb.cpu_seconds >= sum(injected) - 0.01
    else:  # sleeping is no CPU time: the worker is not saturated, its largest phase decides
        assert hb.cpu_seconds / wall < SATURATED
    # bytes: every input shard was read whole, every output file was written
    inputs = [json.loads(line) for line in manifest.read_text().splitlines()]
    read = sum(e["size"] for e in inputs if e["split"] == "train")
    written = sum(p.stat().st_size for folder in ("shards", "documents") for p in (root / folder).rglob("*")
                  if p.is_file())
    assert hb.bytes_read >= read and hb.bytes_written >= written

    status = collect_status(root)
    assert status.bounds.verdict == verdict == status.node_bounds[hb.host].verdict
    doc = status.to_dict()
    [worker] = doc["workers"]
    assert worker["phases"] == hb.phases and worker["cpu_seconds"] == hb.cpu_seconds
    assert worker["cpu_saturation"] == pytest.approx(hb.cpu_seconds / wall)
    assert (worker["bytes_read"], worker["bytes_written"]) == (hb.bytes_read, hb.bytes_written)
    job = doc["bounds"]["job"]
    assert job["verdict"] == verdict and job["phases"] == hb.phases
    assert job["read_bytes_per_s"] == pytest.approx(hb.bytes_read / wall)
    assert job["write_bytes_per_s"] == pytest.approx(hb.bytes_written / wall)
    assert doc["bounds"]["nodes"][hb.host] == job
    assert f"bounds, all workers (1 worker): {verdict} · " in format_status(status, colour=False)
    assert re.search(rf'slimtok_verdict{{root="[^"]*",scope="job",host="",verdict="{verdict}"}} 1\n',
                     prometheus_text(status))


def test_phases_charge_each_interval_to_the_phase_current_then(monkeypatch):
    """Nested phases and timed iteration, on a clock the test moves by hand."""
    clock = [100.0]
    monkeypatch.setattr(stats_mod.time, "perf_counter", lambda: clock[0])
    phases = stats_mod.Phases()

    def tick(seconds):
        clock[0] += seconds

    def blocks():
        for _ in range(3):
            tick(2.0)  # producing each block: read
            yield b"x"

    tick(50.0)  # before any phase: charged to none
    with phases.phase("parse"):
        tick(1.0)
        for _ in phases.timed("read", blocks()):
            tick(0.5)  # the consumer's time between blocks stays parse
            with phases.phase("write"):
                tick(0.25)
        tick(1.0)
    tick(7.0)  # after: none again
    with phases.phase("encode"):
        tick(3.0)
        assert phases.totals()["encode"] == 3.0  # the current phase counts up to now
    assert phases.totals() == {"read": 6.0, "parse": 1.0 + 3 * 0.5 + 1.0, "encode": 3.0, "write": 0.75,
                               "claim_wait": 0.0}


def _beat(root, host, index, started_at, updated_at, phases, cpu, read, written, state="exited"):
    name = worker_name(host, 0, index)
    write_record(OutputRoot(root).heartbeat(name), Heartbeat(
        worker=name, host=host, pid=4000 + index, process_index=0, worker_index=index, shard=None, state=state,
        documents=0, tokens=0, text_chars=0, shards_done=0, tokens_per_second=0.0, cpu_percent=0.0,
        rss_bytes=1 << 20, updated_at=updated_at, started_at=started_at, interval=1.0, host_cpu_percent=0.0,
        host_cpus=2, phases=phases, cpu_seconds=cpu, bytes_read=read, bytes_written=written))


def _phases(**seconds):
    return {name: float(seconds.get(name, 0.0)) for name in PHASES}


@pytest.fixture(scope="module")
def finished(tokenized_root, bpe_tokenizer):
    return tokenized_root({"train_shards": 2, "docs_per_shard": 10, "holdout_docs": 2}, bpe_tokenizer,
                          "--spawn-workers", "1").root


def test_nodes_and_job_sum_their_workers_and_apply_the_rule(finished, tmp_path):
    """Host a: two saturated workers; host b: one worker waiting on writes. The job weighs them by
    time; an earlier launch's worker (its beat before the latest run) counts nowhere."""
    import shutil

    root = tmp_path / "root"
    shutil.copytree(finished, root)
    shutil.rmtree(root / "heartbeats")
    T = time.time() - 1000
    _beat(root, "a", 0, T, T + 100, _phases(read=5, parse=10, encode=80, write=3, claim_wait=1), 95, 10**9, 4 * 10**8)
    _beat(root, "a", 1, T + 10, T + 100, _phases(read=4, parse=8, encode=70, write=3, claim_wait=2), 85, 9 * 10**8,
          3 * 10**8)
    _beat(root, "b", 0, T, T + 50, _phases(read=2, parse=4, encode=10, write=30, claim_wait=1), 15, 10**8, 10**9)
    _beat(root, "c", 0, T - 5000, T - 4000, _phases(claim_wait=1000), 1, 0, 0)  # the launch before a gap
    status = collect_status(root)
    a, b = status.node_bounds["a"], status.node_bounds["b"]
    assert set(status.node_bounds) == {"a", "b"}
    assert (a.workers, a.wall_seconds, a.cpu_seconds, a.span) == (2, 190, 180, 100)
    assert a.phases == _phases(read=9, parse=18, encode=150, write=6, claim_wait=3)
    assert a.cpu_saturation == pytest.approx(180 / 190) and a.verdict == "encoder-bound"
    assert a.rate(a.bytes_read) == pytest.approx(1.9e9 / 100)
    assert b.cpu_saturation == pytest.approx(15 / 50) and b.verdict == "write-bound"
    assert b.rate(b.bytes_written) == pytest.approx(1e9 / 50)
    job = status.bounds
    assert (job.workers, job.wall_seconds, job.cpu_seconds, job.span) == (3, 240, 195, 100)
    assert job.shares["write"] == pytest.approx(36 / 240)
    assert job.verdict == "encoder-bound"  # 195 / 240 >= SATURATED
    assert job.rate(job.bytes_written) == pytest.approx(1.7e9 / 100)
    doc = status.to_dict()["bounds"]
    for group in (doc["job"], *doc["nodes"].values()):
        assert {"phases", "cpu_saturation", "verdict", "read_bytes_per_s", "write_bytes_per_s"} <= group.keys()
    assert doc["nodes"]["b"]["verdict"] == "write-bound"
    text = format_status(status, colour=False)
    assert "bounds, host b (1 worker): write-bound · cpu 30% of wall · read 4% parse 8% encode 20% write 60% " \
           "claim 2% · read 2.0 MB/s · write 20.0 MB/s" in text
    prom = prometheus_text(status)
    assert re.search(r'slimtok_cpu_saturation{root="[^"]*",scope="node",host="b"} 0.3\n', prom)
    assert re.search(r'slimtok_phase_share{root="[^"]*",scope="node",host="b",phase="write"} 0.6\n', prom)
    assert re.search(r'slimtok_verdict{root="[^"]*",scope="node",host="a",verdict="encoder-bound"} 1\n', prom)
    assert re.search(r'slimtok_write_bytes_per_second{root="[^"]*",scope="job",host=""} 17000000.0\n', prom)


def test_a_worker_that_could_not_count_bytes_makes_the_rate_unknown(finished, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(finished, root)
    shutil.rmtree(root / "heartbeats")
    T = time.time() - 100
    _beat(root, "a", 0, T, T + 10, _phases(read=6), 1, 10**6, 10**6)
    _beat(root, "a", 1, T, T + 10, _phases(read=6), 1, None, None)
    status = collect_status(root)
    assert status.bounds.verdict == "read-bound"
    assert status.to_dict()["bounds"]["job"]["read_bytes_per_s"] is None
    assert "read unknown · write unknown" in format_status(status, colour=False)
