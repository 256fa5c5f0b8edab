"""Disk budget of a job: the token bytes it will write, and whether its filesystem has room.

The estimate is tokens per compressed source byte × dtype width × the source bytes to go, per
split. The ratio is measured where shards are done (their records: tokens and source size) and
otherwise sampled from the first ``sample_bytes`` compressed bytes of a few shards of the split,
encoded by a callable the caller passes, so this module never loads a tokenizer itself. A job
samples once, at its first launch (:func:`sample_ratios`), and pins the result in job.json; later
launches pass it back as ``sampled`` and encode nothing. Token
files only: document tables add 24 bytes per document (well under 1% at SlimPajama's lengths).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import orjson
import zstandard

from .errors import ShardReadError
from .formats.streams import open_shard
from .manifest import ShardEntry
from .space import format_bytes

#: Relative uncertainty stated with every estimate (a sample's ratio varies between shards).
DEFAULT_MARGIN = 0.10
#: Compressed bytes read from each sampled shard, and how many shards of a split are sampled:
#: ~1 MB of text each, a fraction of a CPU-second with tokenizers; shard-to-shard variation, not
#: the sample's length, is what the margin covers.
SAMPLE_BYTES = 256 << 10
SAMPLE_SHARDS = 3
#: how an estimate names a split counted by the upper bound on the tokens (no encoding)
BOUND_BASIS = "upper bound from the text of"

EncodeCount = Callable[[list[str]], int]


@dataclass
class TokenBytesEstimate:
    """Expected token bytes (``bytes``), within ``low``..``high`` (± ``margin``).

    ``ratios`` holds each split's tokens per compressed source byte and ``basis`` where it came
    from ("done records" or "sample of N shards"); ``unestimated_source_bytes`` counts the source
    bytes of splits with neither (no done shard, no readable sample, no ``encode_count``).
    """

    bytes: int
    margin: float
    ratios: dict[str, float] = field(default_factory=dict)
    basis: dict[str, str] = field(default_factory=dict)
    unestimated_source_bytes: int = 0

    @property
    def low(self) -> int:
        return int(self.bytes * (1 - self.margin))

    @property
    def high(self) -> int:
        return int(self.bytes * (1 + self.margin) + 0.5)


def measured_ratios(done: Iterable[tuple[str, int, int]]) -> dict[str, tuple[int, int]]:
    """Per split (tokens, compressed source bytes) summed over done shards' ``(split, tokens, source_size)``."""
    sums: dict[str, tuple[int, int]] = {}
    for split, tokens, source_size in done:
        t, b = sums.get(split, (0, 0))
        sums[split] = (t + tokens, b + source_size)
    return sums


#: Decompressed bytes a sample may hold at most (8x a typical zstd ratio): a prefix that expands
#: beyond this (a compression bomb, one endless line) is cut here, so sampling memory is bounded.
SAMPLE_TEXT_LIMIT = 32 * SAMPLE_BYTES
#: Compressed bytes per zstd call: one call expands to at most ~128 KiB per 3-byte block (RLE),
#: so the output overshoots SAMPLE_TEXT_LIMIT by a few MiB at most.
_ZSTD_STEP = 64


def _decompressor(path: str) -> Callable[[bytes, int], tuple[bytes, int]] | None:
    """A function (prefix, limit) -> (its data, as far as it goes but stopping once at least
    ``limit`` bytes are out, and the prefix bytes used for it); None for other formats."""
    if path.endswith(".zst"):
        obj = zstandard.ZstdDecompressor().decompressobj()

        def zstd(raw: bytes, limit: int) -> tuple[bytes, int]:
            out, size, used = [], 0, 0
            while used < len(raw) and size < limit:
                piece = obj.decompress(raw[used:used + _ZSTD_STEP])
                used = min(len(raw), used + _ZSTD_STEP)
                out.append(piece)
                size += len(piece)
            return b"".join(out), used
        return zstd
    if path.endswith(".gz"):
        def gzip(raw: bytes, limit: int) -> tuple[bytes, int]:
            obj = zlib.decompressobj(wbits=31)
            out = obj.decompress(raw, limit)
            return out, len(raw) - len(obj.unconsumed_tail)
        return gzip
    if path.endswith(".jsonl") or path.endswith(".json"):
        return lambda raw, limit: (raw[:limit], min(len(raw), limit))
    return None


def sample_texts(path: str, text_key: str, sample_bytes: int = SAMPLE_BYTES) -> tuple[list[str], float] | None:
    """Texts of the complete lines in the first ``sample_bytes`` compressed bytes of a shard, and
    the compressed bytes they stand for; None for a format this cannot sample, a file that is not
    a regular file, or an unreadable prefix.

    Bounded: at most ``sample_bytes`` are read and at most about :data:`SAMPLE_TEXT_LIMIT` bytes
    decompressed. The compressed share is the prefix used scaled by the share of decompressed
    bytes in complete lines, so a line cut at the end of the prefix does not bias the ratio.
    """
    decompress = _decompressor(path)
    if decompress is None:
        return None
    try:
        with open_shard(Path(path)) as f:
            raw = f.read(sample_bytes)
        text, used = decompress(raw, SAMPLE_TEXT_LIMIT)
    except (ShardReadError, OSError, zstandard.ZstdError, zlib.error):
        return None
    # the whole file was read and decompressed: its last line counts even without a newline
    whole = used == len(raw) and len(raw) < sample_bytes and len(text) < SAMPLE_TEXT_LIMIT
    complete = text if whole else text[: text.rfind(b"\n") + 1]
    if not complete:
        return None
    texts = []
    for line in complete.splitlines():
        try:
            value = orjson.loads(line).get(text_key)
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if isinstance(value, str):
            texts.append(value)
    return texts, used * len(complete) / len(text)


def _spread(entries: Sequence[ShardEntry], n: int) -> list[ShardEntry]:
    """``n`` entries evenly spaced through ``entries`` (all of them when there are fewer)."""
    if len(entries) <= n:
        return list(entries)
    return [entries[i * (len(entries) - 1) // max(n - 1, 1)] for i in range(n)]


def _sampled_ratio(entries: Sequence[ShardEntry], encode_count: EncodeCount, text_key: str,
                   shards: int, sample_bytes: int) -> tuple[float, int] | None:
    """(tokens per compressed byte, shards sampled) over a spread of ``entries``; None when none reads."""
    tokens, covered, used = 0, 0.0, 0
    for entry in _spread(sorted(entries, key=lambda e: e.id), shards):
        sample = sample_texts(entry.path, text_key, sample_bytes)
        if sample is None:
            continue
        tokens += encode_count(sample[0])
        covered += sample[1]
        used += 1
    return (tokens / covered, used) if covered > 0 else None


def sample_ratios(entries: Sequence[ShardEntry], encode_count: EncodeCount, text_key: str = "text",
                  sample_shards: int = SAMPLE_SHARDS, sample_bytes: int = SAMPLE_BYTES) -> dict[str, list[float]]:
    """Per split [tokens per compressed source byte, shards sampled], for the splits with a readable sample."""
    by_split: dict[str, list[ShardEntry]] = {}
    for e in entries:
        by_split.setdefault(e.split, []).append(e)
    found = {}
    for split, group in sorted(by_split.items()):
        sampled = _sampled_ratio(group, encode_count, text_key, sample_shards, sample_bytes)
        if sampled is not None:
            found[split] = [sampled[0], sampled[1]]
    return found


def estimate_token_bytes(entries: Sequence[ShardEntry], dtype_width: int,
                         encode_count: EncodeCount | None = None,
                         measured: Mapping[str, tuple[int, int]] | None = None, text_key: str = "text",
                         margin: float = DEFAULT_MARGIN, sample_shards: int = SAMPLE_SHARDS,
                         sample_bytes: int = SAMPLE_BYTES,
                         sampled: Mapping[str, Sequence[float]] | None = None,
                         bounds: Mapping[str, Sequence[float]] | None = None) -> TokenBytesEstimate:
    """Token bytes that tokenizing ``entries`` will write.

    Per split, the ratio comes from ``measured`` (split -> (tokens, source bytes) of done shards,
    see :func:`measured_ratios`) when it has any source bytes; else from ``sampled`` (an earlier
    :func:`sample_ratios`); else from ``bounds`` (the same, counted by an upper bound on the
    tokens instead of an encoding: the estimate is then at most); else from a sample encoded by
    ``encode_count(texts) -> tokens`` (separators included, as the worker writes them); else from
    the measured ratio of all splits together. Splits with none add to ``unestimated_source_bytes``.
    """
    sampled, bounds = sampled or {}, bounds or {}
    measured = {k: v for k, v in (measured or {}).items() if v[1] > 0}
    overall = (sum(t for t, _ in measured.values()) / sum(b for _, b in measured.values())) if measured else None
    by_split: dict[str, list[ShardEntry]] = {}
    for e in entries:
        by_split.setdefault(e.split, []).append(e)
    estimate = TokenBytesEstimate(bytes=0, margin=margin)
    total = 0.0
    for split, group in by_split.items():
        size = sum(e.size for e in group)
        if split in measured:
            ratio, basis = measured[split][0] / measured[split][1], "done records"
        elif split in sampled:
            ratio, basis = sampled[split][0], f"sample of {_shards(int(sampled[split][1]))}"
        elif split in bounds:
            ratio, basis = bounds[split][0], f"{BOUND_BASIS} {_shards(int(bounds[split][1]))}"
        elif encode_count is not None and (fresh := _sampled_ratio(group, encode_count, text_key,
                                                                    sample_shards, sample_bytes)):
            ratio, basis = fresh[0], f"sample of {_shards(fresh[1])}"
        elif overall is not None:
            ratio, basis = overall, "done records of other splits"
        else:
            estimate.unestimated_source_bytes += size
            continue
        estimate.ratios[split], estimate.basis[split] = ratio, basis
        total += ratio * dtype_width * size
    estimate.bytes = int(total + 0.5)
    return estimate


def _shards(n: int) -> str:
    return f"{n} shard" if n == 1 else f"{n} shards"


def describe_estimate(estimate: TokenBytesEstimate) -> tuple[str, str]:
    """(``about N`` or ``at most N``, what it rests on per split). "at most" when every split's
    figure is the upper bound (nothing was encoded: the real figure is usually far lower)."""
    bases = "; ".join(f"{split}: {basis}" for split, basis in estimate.basis.items()) or "no sample"
    if estimate.basis and all(b.startswith(BOUND_BASIS) for b in estimate.basis.values()):
        return f"at most {format_bytes(estimate.bytes)}", f"{bases}; a token covers at least a byte of text"
    return f"about {format_bytes(estimate.bytes)}", f"±{estimate.margin:.0%}; {bases}"
