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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson
import zstandard

from .errors import ObjectStoreError, ShardReadError
from .formats import format_of
from .formats.streams import open_shard, shard_path, shard_size
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
    if path.endswith(".parquet"):
        return _parquet_texts(path, text_key, sample_bytes)
    decompress = _decompressor(path)
    if decompress is None:
        return None
    try:
        with open_shard(shard_path(path)) as f:
            raw = f.read(sample_bytes)
        text, used = decompress(raw, SAMPLE_TEXT_LIMIT)
    except (ShardReadError, ObjectStoreError, OSError, zstandard.ZstdError, zlib.error):
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


def _parquet_texts(path: str, text_key: str, sample_bytes: int) -> tuple[list[str], float] | None:
    """Texts of the first rows of a parquet shard that stand for about ``sample_bytes`` of the file,
    and the file bytes they stand for: the file's size times their share of its rows (the other
    columns and the metadata are spread over the rows as the worker's source bytes are). Reads the
    text column alone, a batch at a time, and stops at :data:`SAMPLE_TEXT_LIMIT` bytes of text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with open_shard(shard_path(path)) as f:
            pf = pq.ParquetFile(f)
            rows, size = pf.metadata.num_rows, shard_size(f)
            if not rows or text_key not in pf.schema_arrow.names:
                return None
            want = max(1, rows * sample_bytes // max(size, 1))
            texts: list[str] = []
            read = held = 0
            for batch in pf.iter_batches(batch_size=min(want, 1024), columns=[text_key]):
                read += batch.num_rows
                found = [t for t in batch.column(0).to_pylist() if isinstance(t, str)]
                texts += found
                held += sum(map(len, found))
                if read >= want or held >= SAMPLE_TEXT_LIMIT:
                    break
    except (ShardReadError, ObjectStoreError, OSError, pa.ArrowException):
        return None
    return (texts, size * read / rows) if read else None


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


def _suffix(entry: ShardEntry) -> str:
    fmt = format_of(entry.path)
    return fmt.suffix if fmt else ""


def ratio_groups(entries: Sequence[ShardEntry]) -> dict[str, list[ShardEntry]]:
    """Entries by the group one ratio covers: the split, or for a split whose shards come in several
    formats, the split and the format (``train (.jsonl)``), in first-seen order.

    Tokens per on-disk byte differ by format far beyond any margin (a plain shard holds ~4x the
    text of a zstd one of its size), so one ratio sampled over a split of mixed formats, applied
    to all of its bytes, is off by as much as the formats' shares in the sample and in the split
    differ. Within one format shards are alike enough for a spread sample.
    """
    by_split: dict[str, dict[str, list[ShardEntry]]] = {}
    for e in entries:
        by_split.setdefault(e.split, {}).setdefault(_suffix(e), []).append(e)
    return {(split if len(formats) == 1 else _qualified(split, suffix)): group
            for split, formats in by_split.items() for suffix, group in formats.items()}


def _qualified(split: str, suffix: str) -> str:
    return f"{split} ({suffix or 'no suffix'})"


def _lookup(table: Mapping[str, Sequence[float]], group: list[ShardEntry]) -> Sequence[float] | None:
    """A group's entry in a sample table: under the split and format, else under the split alone (a
    table written when the split was not mixed, or before ratios were kept per format)."""
    first = group[0]
    return table.get(_qualified(first.split, _suffix(first)), table.get(first.split))


def unsampled(entries: Sequence[ShardEntry], sampled: Mapping[str, Sequence[float]]) -> list[ShardEntry]:
    """The entries ``sampled`` (a :func:`sample_ratios` result) has no ratio for."""
    return [e for group in ratio_groups(entries).values() if _lookup(sampled, group) is None for e in group]


def sample_ratios(entries: Sequence[ShardEntry], encode_count: EncodeCount, text_key: str = "text",
                  sample_shards: int = SAMPLE_SHARDS, sample_bytes: int = SAMPLE_BYTES) -> dict[str, list[float]]:
    """Per group of :func:`ratio_groups` [tokens per compressed source byte, shards sampled], for the
    groups with a readable sample."""
    found = {}
    for key, group in sorted(ratio_groups(entries).items()):
        sampled = _sampled_ratio(group, encode_count, text_key, sample_shards, sample_bytes)
        if sampled is not None:
            found[key] = [sampled[0], sampled[1]]
    return found


def estimate_token_bytes(entries: Sequence[ShardEntry], dtype_width: int,
                         encode_count: EncodeCount | None = None,
                         measured: Mapping[str, tuple[int, int]] | None = None, text_key: str = "text",
                         margin: float = DEFAULT_MARGIN, sample_shards: int = SAMPLE_SHARDS,
                         sample_bytes: int = SAMPLE_BYTES,
                         sampled: Mapping[str, Sequence[float]] | None = None,
                         bounds: Mapping[str, Sequence[float]] | None = None) -> TokenBytesEstimate:
    """Token bytes that tokenizing ``entries`` will write.

    Per group of :func:`ratio_groups` (a split, or a split and format where its formats are mixed),
    the ratio comes from ``measured`` (split -> (tokens, source bytes) of done shards, see
    :func:`measured_ratios`; for a split that is not mixed) when it has any source bytes; else
    from ``sampled`` (an earlier
    :func:`sample_ratios`); else from ``bounds`` (the same, counted by an upper bound on the
    tokens instead of an encoding: the estimate is then at most); else from a sample encoded by
    ``encode_count(texts) -> tokens`` (separators included, as the worker writes them); else from
    the measured ratio of all splits together. Splits with none add to ``unestimated_source_bytes``.
    """
    sampled, bounds = sampled or {}, bounds or {}
    measured = {k: v for k, v in (measured or {}).items() if v[1] > 0}
    overall = (sum(t for t, _ in measured.values()) / sum(b for _, b in measured.values())) if measured else None
    estimate = TokenBytesEstimate(bytes=0, margin=margin)
    total = 0.0
    for key, group in ratio_groups(entries).items():
        size = sum(e.size for e in group)
        if key in measured:
            ratio, basis = measured[key][0] / measured[key][1], "done records"
        elif (pinned := _lookup(sampled, group)) is not None:
            ratio, basis = pinned[0], f"sample of {_shards(int(pinned[1]))}"
        elif (bound := _lookup(bounds, group)) is not None:
            ratio, basis = bound[0], f"{BOUND_BASIS} {_shards(int(bound[1]))}"
        elif encode_count is not None and (fresh := _sampled_ratio(group, encode_count, text_key,
                                                                    sample_shards, sample_bytes)):
            ratio, basis = fresh[0], f"sample of {_shards(fresh[1])}"
        elif overall is not None:
            ratio, basis = overall, "done records of other splits"
        else:
            estimate.unestimated_source_bytes += size
            continue
        estimate.ratios[key], estimate.basis[key] = ratio, basis
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
