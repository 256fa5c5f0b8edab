"""``slimtok mix``: a weighted, token-budgeted, deterministic training set from several finished
output roots (docs/MIX.md). spec → inputs → plan → write; ``mix_main`` is the command."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import orjson

from ..progress import ProgressFactory
from ..protocol import OutputRoot
from ..publish import full_disk_is_fatal
from .inputs import load_sources
from .plan import Plan, make_plan
from .report import format_table
from .spec import MixSpec, load_spec, parse_spec
from .write import write_mix

__all__ = ["mix", "mix_main", "load_spec", "parse_spec", "make_plan", "MixSpec", "Plan"]


def mix(spec: MixSpec, output_root: str | os.PathLike[str] | None, workers: int = 1,
        progress: ProgressFactory | None = None) -> tuple[Plan, dict | None]:
    """Plan the mix and, unless ``output_root`` is None, write (or resume) it, its chunks shown on
    the display ``progress`` makes (None: nothing shown); (plan, meta)."""
    sources, _, first = load_sources(spec)
    plan = make_plan(spec, sources)
    if output_root is None:
        return plan, None
    job_raw = orjson.loads(first.storage.read_whole(first.job))
    # finished chunks keep their done records: the relaunch after freeing space resumes from them
    with full_disk_is_fatal("writing the mix", Path(output_root),
                            "free space there and run the same `slimtok mix` again: finished chunks are kept"):
        return plan, write_mix(OutputRoot(output_root), spec, sources, plan, job_raw, first, workers, progress)


def mix_main(spec_path: str | os.PathLike[str], output_root: str | os.PathLike[str] | None, workers: int = 1,
             plan_only: bool = False, log: Callable[[str], None] = print,
             progress: ProgressFactory | None = None) -> int:
    """The command: plan (and write unless ``plan_only``, shown by ``progress``), print the
    realized mix; exit status. Raises MixError (exit 2) for a bad spec or inputs, before
    anything is written."""
    plan, meta = mix(load_spec(spec_path), None if plan_only else output_root, workers, progress)
    log(format_table(plan))
    if meta is not None:
        log(f"{output_root}: " + ", ".join(f"{name} {info['tokens']:,} tokens" for name, info in
                                            meta["splits"].items() if "tokens" in info))
    return 0

