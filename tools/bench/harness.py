"""What every section measures with: results and the table, child processes, peaks, clocks.

Reads ``/proc/self/status`` (the one VmHWM/VmRSS reader, used by the children and the peer
drivers too), the children's JSON reports and the done records of the output roots they write.
Imports only the standard library at module level: the peer drivers import it inside a venv that
holds no slimtok and no numpy. Children are ``python -m tools.bench.children <name> …`` with this
checkout first on their PYTHONPATH, so they run the same code as the bench that started them.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slimtok.job import TokenizeSettings

#: the checkout this bench runs from (tools/bench/harness.py → ../..)
CHECKOUT = Path(__file__).resolve().parents[2]


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


def growth_note(what: str, sizes: list[int], per: list[float]) -> str:
    """One line of per-shard costs (seconds) at each size, flagging any step that grows > 1.5x."""
    steps = [f"{n:,}: {c * 1e3:.3f} ms" for n, c in zip(sizes, per, strict=True)]
    flags = [f"{n0:,} -> {n1:,} x{c1 / c0:.2f}"
             for (n0, c0), (n1, c1) in itertools.pairwise(zip(sizes, per, strict=True)) if c1 > 1.5 * c0]
    return (f"growth: {what} {'; '.join(steps)}; "
            f"{'SUPER-LINEAR: ' + ', '.join(flags) if flags else 'no super-linear step'}")


# -- clocks and peaks -------------------------------------------------------------------------

def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


def proc_status(key: str = "VmHWM") -> int:
    """Bytes of ``key`` (VmHWM: this process's peak RSS; VmRSS: its RSS now) in /proc/self/status.

    VmHWM, not wait4's or getrusage's ru_maxrss: Linux carries ru_maxrss over from the forking
    parent (and keeps the larger across exec), so a child started by a big bench would report the
    bench's peak. /proc/self/clear_refs ("5") restarts VmHWM from the current RSS.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Calls ``measure()`` every ``every`` seconds on a thread while in the ``with`` block; keeps the
    largest value and the number of samples."""

    def __init__(self, measure: Callable[[], int], every: float = 0.02):
        self.measure, self.every = measure, every
        self.peak, self.samples = measure(), 1
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            self.peak, self.samples = max(self.peak, self.measure()), self.samples + 1

    def __enter__(self) -> PeakSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak, self.samples = max(self.peak, self.measure()), self.samples + 1


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


# -- child processes --------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH, so ``-m tools.bench…`` resolves."""
    path = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def child(name: str, *args: str) -> list[str]:
    """The command of the child entry point ``name`` (see tools/bench/children.py)."""
    return [sys.executable, "-m", "tools.bench.children", name, *args]


def child_cpu(command: list[str]) -> float:
    """CPU seconds (user + system) of ``command`` and every descendant it waited for."""
    import resource

    def used() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    c0 = used()
    subprocess.run(command, check=True, capture_output=True, env=child_env())
    return used() - c0


def start_together(folder: Path, commands: list[list[str]]) -> list[list[float]]:
    """Run the children ``commands`` (child entry points: name and arguments), each with a report
    path appended; each gets ready, waits for the others, then runs its timed part and writes its
    report (a JSON list). Returns the reports in order."""
    folder.mkdir(parents=True, exist_ok=True)
    reports = [folder / f"bench-{i}.json" for i in range(len(commands))]
    go = folder / "bench-go"
    go.unlink(missing_ok=True)
    env = child_env()
    procs = [subprocess.Popen(child(*cmd, str(report)), env=env) for cmd, report in zip(commands, reports, strict=True)]
    while not all(r.with_suffix(".ready").exists() for r in reports):
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a child exited during start-up; see {folder}")
        time.sleep(0.01)
    go.touch()
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a child exited with {p.returncode}; see {folder}")
    return [json.loads(r.read_text()) for r in reports]


def ready_then_wait(report: str) -> None:
    """The child's half of start_together's barrier."""
    Path(report).with_suffix(".ready").touch()
    go = Path(report).with_name("bench-go")
    while not go.exists():
        time.sleep(0.002)


# -- tokenize workers measured in children ----------------------------------------------------

def settings_for(manifest: Path, root: Path, tokenizer: Path, backend: str, workers: int = 1,
                 **kw: object) -> TokenizeSettings:
    from slimtok.job import TokenizeSettings

    return TokenizeSettings(manifest=str(manifest), output_root=str(root), tokenizer=str(tokenizer),
                            backend=backend, workers=workers, **kw)  # type: ignore[arg-type]


def run_workers(settings: TokenizeSettings, workers: int) -> list[tuple[float, float, int]]:
    """Pin the job, run ``workers`` worker processes together; (wall, cpu, peak rss) of each.

    Wall and CPU cover Worker.run() only (start-up is its own section): every child builds its
    Worker, then waits at a barrier until all are built, so the workers run side by side from the
    same moment instead of one starting while another still loads its tokenizer. Peak RSS is the
    child's VmHWM, which unlike wait4's ru_maxrss does not inherit the forking parent's peak.
    """
    from slimtok.job import pin_job

    pin_job(settings)
    spec = json.dumps(asdict(settings))
    runs = start_together(Path(settings.output_root), [["worker", spec, str(i)] for i in range(workers)])
    # Job wall: first run() start to the last done record, not to the exit of workers that idle-poll
    # for shards held by others (they notice completion only at their next poll).
    done = [json.loads(f.read_text())["finished_at"] for f in (Path(settings.output_root) / "done").rglob("*.json")]
    wall = max(done) - min(r[0] for r in runs)
    return [(wall, r[1], int(r[2])) for r in runs]


def shard_ids(root: Path, manifest: Path) -> tuple[str, int]:
    """sha256 and token count of all done shards' data, in manifest order."""
    import hashlib

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
