"""The exports section: each `slimtok export` target against `cat` of the same bytes onto the same disk.

Takes a combined root (the combine section's, combined here if it is not yet); per run, for each
target, removes the previous export, flushes the page cache (``os.sync``) and times the export's
wall and CPU, and `cat` of ``train.bin`` + ``train.idx`` (+fsync) as the copy it is compared with.
The targets that link (megatron, datatrove, torchtitan of a uint32 root) should cost next to
nothing; those that must write a header or a wider dtype (litdata, mds, packed, torchtitan of uint16)
cost about a copy. Notes give each target's wall as a share of the copy's.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .harness import Result, Table, cpu_now, timed_cat

#: seq_len / block_size of the window-cutting targets: a common pretraining context (+1 for litdata)
SEQ_LEN = 2048


def _targets(root: Path, out: Path) -> dict[str, Callable[[], object]]:
    """Each export, writing under ``out`` (an absolute prefix or folder), as it runs from the command line."""
    from slimtok import export
    from slimtok.export.litdata import export_litdata

    def quiet(_: str) -> None:
        pass

    return {
        "export megatron (link)": lambda: export.export_megatron(root, str(out / "mg"), ["train"], log=quiet),
        "export datatrove (link)": lambda: export.export_datatrove(root, str(out / "dt"), ["train"], log=quiet),
        "export torchtitan": lambda: export.export_torchtitan(root, str(out / "tt"), ["train"], log=quiet),
        "export litdata (copy+header)": lambda: export_litdata(root, str(out / "ld"), SEQ_LEN + 1, ["train"],
                                                               log=quiet),
        "export mds (copy+header)": lambda: export.export_mds(root, str(out / "md"), SEQ_LEN, ["train"], log=quiet),
        "export packed parquet": lambda: export.export_packed(root, SEQ_LEN, "parquet", "train", out / "pk",
                                                              log=quiet),
    }


def bench_exports(table: Table, work: Path, root: Path, runs: int) -> None:
    """Time every export target of ``root``'s train split against `cat` of the bytes it holds."""
    from slimtok.combine import combine

    if not (root / "train.idx").exists():
        combine(root, ["train"], log=lambda s: None)
    files = [root / "train.bin", root / "train.idx"]
    nbytes = sum(f.stat().st_size for f in files)
    out = work / "exports"
    for _ in range(runs):
        table.add(Result("cat train.bin + .idx (+fsync)", nbytes, timed_cat(files, work / "cat-export.bin"), 0.0))
        for name, run in _targets(root, out).items():
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            c0, w0 = cpu_now(), time.time()
            run()
            table.add(Result(name, nbytes, time.time() - w0, cpu_now() - c0))
    shutil.rmtree(out, ignore_errors=True)
    copy = table.median("cat train.bin + .idx (+fsync)", "wall")
    shares = [f"{name} {table.median(name, 'wall') / copy:.2f}" for name in _targets(root, out)]
    table.note(f"exports: wall as a share of cat of the same {nbytes / 1e6:.0f} MB: " + "; ".join(shares))
