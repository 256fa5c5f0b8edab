"""The disk-budget check of a launch: estimate the token bytes still to write, refuse when they would
not fit.

Reads the manifest entries, ``done/`` and samples of the shards' text (through
:func:`slimtok.budget.sample_ratios`); writes nothing (the sample to pin is returned to
:func:`slimtok.job.pin.pin_job`). The arithmetic (ratios, estimates, free space) is
:mod:`slimtok.budget`'s; this module decides what to sample and with what, which needs the job's
settings and tokenizer, so it lives with the job rather than in ``budget``, which other stages
(publish, mirror) import for its free-space check alone.

Invariant: an upper bound (:func:`_bound_count`) is used only where it shows room; where it does
not, the estimate is encoded with the job's tokenizer, so a check never refuses on a bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from ..budget import describe_estimate, estimate_token_bytes, sample_ratios, unsampled
from ..manifest import ShardEntry
from ..protocol import JobSettings, OutputRoot, storage_for
from ..space import check_free_space, disk_space, format_bytes, has_room
from .pinned import load_pinned_tokenizer
from .settings import TokenizeSettings

if TYPE_CHECKING:  # the launcher of a relaunch imports this module and never loads a tokenizer
    from tokenizers import Tokenizer

    from ..tokenizer import LoadedTokenizer


def disk_sample(settings: TokenizeSettings, root: OutputRoot, entries: list[ShardEntry], job: JobSettings,
                 tok: LoadedTokenizer) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(the disk-budget sample to pin, the upper bounds used instead): no encoding when the
    bounded estimate of the shards to go already leaves room (the encoded one is lower, so the
    check cannot refuse), else the encoded sample of every split."""
    if tok.growth is not None:
        bounds = sample_ratios(entries, _bound_count(tok.growth, job), job.text_key)
        if _bounded_room(settings, root, _todo(settings, root, entries), job, bounds):
            return {}, bounds
    return sample_ratios(entries, _encode_count(tok.parsed(), job), job.text_key), {}


def _bound_count(growth: float, job: JobSettings) -> Callable[[list[str]], int]:
    """An upper bound on the tokens the worker writes for ``texts``: ``growth`` tokens per UTF-8
    byte (one byte at least: a tokenizer may put a token before empty text) plus the separators."""
    separators = 1 + (job.bos_token_id is not None)

    def count(texts: list[str]) -> int:
        return sum(math.ceil(growth * max(len(t.encode()), 1)) + separators for t in texts)

    return count


def _bounded_room(settings: TokenizeSettings, root: OutputRoot, todo: list[ShardEntry], job: JobSettings,
                  bounds: dict[str, list[float]]) -> bool:
    """Whether the shards to go (``todo``) fit by the bounded estimate (every split bounded)."""
    estimate = estimate_token_bytes(todo, job.token_width, bounds=bounds)
    return not estimate.unestimated_source_bytes and has_room(root.root, estimate.high, settings.min_free_fraction)


def _todo(settings: TokenizeSettings, root: OutputRoot, entries: list[ShardEntry]) -> list[ShardEntry]:
    done = root.done_ids()
    return [e for e in entries if e.split in settings.splits and e.id not in done]


def _encode_count(encoder: Tokenizer, job: JobSettings) -> Callable[[list[str]], int]:
    """Tokens the worker writes for ``texts`` (separators included), by ``encoder``; a panic of the
    native encoder on them is a TokenizerError, one line, not a traceback."""
    from ..errors import TokenizerError
    from ..tokenizer.loading import native_panics

    separators = 1 + (job.bos_token_id is not None)

    def count(texts: list[str]) -> int:
        with native_panics(lambda what: TokenizerError(f"the tokenizer's native encoder panicked on the disk-budget "
                                                       f"sample ({what})", job.tokenizer, "fix the tokenizer")):
            return sum(len(e.ids) + separators for e in encoder.encode_batch(texts, add_special_tokens=False))

    return count


def check_disk_budget(settings: TokenizeSettings, root: OutputRoot, entries: list[ShardEntry], job: JobSettings,
                      tok: LoadedTokenizer | None, log: Callable[[str], None] | None,
                      bounds: dict[str, list[float]] | None = None) -> None:
    """Estimate the token bytes still to write, print it with the free space, and refuse
    (OutputError) when less than ``min_free_fraction`` of the disk would remain.

    Per split: job.json's pinned sample; for a split it lacks, ``bounds`` or an upper bound from
    the sample's text bytes (:func:`_bound_count`) when that leaves room; else a sample encoded by
    ``tok``, or by the pinned copy when a bound exists but shows no room."""
    todo = _todo(settings, root, entries)
    if not todo:
        return
    width = job.token_width
    missing = {e.split for e in unsampled(todo, job.sampled_ratios)}
    if missing and bounds is None:
        growth = tok.growth if tok else _file_growth(root.tokenizer_file)
        bounds = {} if growth is None else sample_ratios([e for e in entries if e.split in missing],
                                                         _bound_count(growth, job), job.text_key)
    bounds = bounds or {}
    encoder = None
    if missing and not _bounded_room(settings, root, todo, job, {**bounds, **job.sampled_ratios}):
        # only an encoded sample tells; without ``tok``, worth loading the copy when the texts are readable
        encoder = tok.parsed() if tok else load_pinned_tokenizer(root, job) if bounds else None
        bounds = {}
    estimate = estimate_token_bytes(todo, width, _encode_count(encoder, job) if encoder else None,
                                    text_key=job.text_key, sampled=job.sampled_ratios, bounds=bounds)
    space = disk_space(root.root)
    if log:
        amount, basis = describe_estimate(estimate)
        log(f"disk: {amount} of token files still to write ({basis}); "
            f"{format_bytes(space.free)} free of {format_bytes(space.total)} under {root.root}")
    check_free_space(root.root, estimate.high, settings.min_free_fraction)


def _file_growth(path: Path) -> float | None:
    """:func:`text_growth` of a tokenizer.json's normalizer and pre-tokenizer (None: unreadable)."""
    from ..tokenizer.loading import text_growth

    try:
        data = orjson.loads(storage_for(path).read_whole(path))
    except (OSError, orjson.JSONDecodeError):
        return None
    return text_growth(data.get("normalizer"), data.get("pre_tokenizer")) if isinstance(data, dict) else None
