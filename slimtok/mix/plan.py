"""The exact plan of a mix: token targets per source, then whole documents chosen and ordered.

Invariants: full epochs repeat every document of a source; the remainder is a seeded sample of
its documents whose tokens are within one document of what is left; the plan depends only on the
spec and the inputs. Each document of a source gets a 64-bit key from the source's seeded
stream (one key per table row, in manifest order, whatever filters apply); the sample is the
documents of smallest key, i.e. the prefix of a seeded permutation.

Memory: the plan never holds an array per *available* document. It streams each source's tables
(inputs.PIECE_ROWS rows at a time): one pass counts tokens and builds a token histogram over the
keys' top ``KEY_BUCKET_BITS`` bits, one collects the documents of the bucket where the target
falls (about one 65536th of them) to find the exact key threshold, one writes the selected
documents as ``PICK_DTYPE`` records (16 bytes each, in one preallocated array). With
``dedup: true`` the 128-bit hashes of the documents taken so far are held too (:class:`Hashes`:
16 bytes per distinct selected document, about three times that while merging) and a source is streamed once more.
The tables the inputs kept from their check (``inputs.HOLD_BYTES`` at most) are streamed from memory.

A document is named by its *id*: ``shard << 32 | row``, ``shard`` numbering the sources' shards
end to end and ``row`` its row in that shard's document table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import MixError
from .inputs import SourceDocs
from .spec import MixSpec

#: One selected document: its id, its first token in its shard file, its tokens.
PICK_DTYPE = np.dtype([("id", "<i8"), ("start", "<u4"), ("tokens", "<u4")])

KEY_BUCKET_BITS = 16
_SHIFT = np.uint64(64 - KEY_BUCKET_BITS)


@dataclass
class SourceResult:
    """What the plan takes of one source (before any validation carve). ``available`` and
    ``candidates`` count what is left after dedup; ``duplicate_*`` what dedup removed."""

    name: str
    available: int
    target: int
    tokens: int = 0
    documents: int = 0
    unique: int = 0
    candidates: int = 0
    duplicate_documents: int = 0
    duplicate_tokens: int = 0

    @property
    def epochs(self) -> float:
        return self.tokens / self.available if self.available else 0.0


@dataclass
class Plan:
    """``PICK_DTYPE`` records of each split, in output order, and per-source accounting."""

    splits: dict[str, np.ndarray]
    sources: list[SourceResult]
    first_shard: np.ndarray  # number of each source's first shard


@dataclass
class _Scan:
    """One streaming pass over a source: usable tokens and documents, and their histograms over
    the keys' top bits."""

    available: int = 0
    documents: int = 0
    duplicate_documents: int = 0
    duplicate_tokens: int = 0
    bucket_tokens: np.ndarray = field(default_factory=lambda: np.zeros(1 << KEY_BUCKET_BITS, dtype=np.int64))
    bucket_documents: np.ndarray = field(default_factory=lambda: np.zeros(1 << KEY_BUCKET_BITS, dtype=np.int64))


@dataclass
class _Choice:
    """A source's selection: ``full`` epochs of its ``documents`` usable ones, then the usable
    documents whose key is at most ``threshold`` (None: no sample)."""

    full: int
    documents: int
    threshold: np.uint64 | None
    sample_documents: int
    tokens: int

    @property
    def count(self) -> int:
        return self.full * self.documents + self.sample_documents

    @property
    def unique(self) -> int:
        return self.documents if self.full else self.sample_documents


@dataclass
class Hashes:
    """A set of 128-bit text hashes, sorted by (``hi``, ``lo``), no pair twice, with a directory: the
    entries whose ``hi`` has top bits b are ``[directory[b], directory[b + 1])``. Hashes are
    uniform, so a range holds about one entry and a lookup is a couple of memory reads, not a
    binary search's twenty."""

    hi: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    lo: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    bits: int = 1
    directory: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.hi)

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Which of the pairs (hi[i], lo[i]) are in the set: every query walks its range, all of
        them one step per round."""
        found = np.zeros(len(hi), dtype=bool)
        if not len(self.hi) or not len(hi):
            return found
        b = (hi >> np.uint64(64 - self.bits)).view(np.int64)
        at, stop = self.directory[b], self.directory[b + 1]
        walking = np.flatnonzero(at < stop)
        while len(walking):
            p = at[walking]
            match = (self.hi[p] == hi[walking]) & (self.lo[p] == lo[walking])
            found[walking[match]] = True
            at[walking] += 1
            walking = walking[~match & (at[walking] < stop[walking])]
        return found

    def union(self, hi: np.ndarray, lo: np.ndarray) -> Hashes:
        """The set with the pairs (hi, lo) added (``hi``, ``lo`` need not be sorted)."""
        new = np.lexsort((lo, hi))
        h, l_ = np.concatenate([self.hi, hi[new]]), np.concatenate([self.lo, lo[new]])
        order = np.argsort(h, kind="stable")  # two sorted runs: a merge
        h, l_ = h[order], l_[order]
        if ((h[1:] == h[:-1]) & (l_[1:] != l_[:-1])).any():  # equal hi, other lo (about 2**-64 a pair):
            order = np.lexsort((l_, h))                      # sort by both, so equal pairs meet
            h, l_ = h[order], l_[order]
        first = np.ones(len(h), dtype=bool)
        first[1:] = (h[1:] != h[:-1]) | (l_[1:] != l_[:-1])  # a pair met twice (texts repeated)
        h, l_ = h[first], l_[first]
        bits = max(1, min(32, int(len(h)).bit_length()))
        directory = np.empty((1 << bits) + 1, dtype=np.int64)
        directory[:-1] = np.searchsorted(h, np.arange(1 << bits, dtype=np.uint64) << np.uint64(64 - bits))
        directory[-1] = len(h)
        return Hashes(h, l_, bits, directory)


def _stream(source: SourceDocs, seed: np.random.SeedSequence, taken: Hashes):
    """(piece, keys, usable) for every piece: ``usable`` is the rows the source may select (its
    label, not dropped by its root's dedup, hash not in ``taken``)."""
    keys = np.random.PCG64(seed)
    for piece in source.pieces():
        k = keys.random_raw(len(piece.tokens))
        usable = piece.keep
        if len(taken):
            rows = np.flatnonzero(usable)
            usable = usable.copy()
            usable[rows[taken.contains(*piece.hashes(rows))]] = False
        yield piece, k, usable


def _scan(source: SourceDocs, seed: np.random.SeedSequence, taken: Hashes) -> _Scan:
    scan = _Scan()
    for piece, keys, usable in _stream(source, seed, taken):
        whole = bool(usable.all())  # the common case: no boolean copies
        tokens = piece.tokens if whole else piece.tokens[usable]
        buckets = ((keys if whole else keys[usable]) >> _SHIFT).view(np.int64)  # < 2**16: the view is exact
        scan.available += int(tokens.sum(dtype=np.int64))
        scan.documents += len(tokens)
        # float64 weights are exact for integer sums below 2**53 tokens per bucket
        scan.bucket_tokens += np.bincount(buckets, weights=tokens, minlength=len(scan.bucket_tokens)).astype(np.int64)
        scan.bucket_documents += np.bincount(buckets, minlength=len(scan.bucket_documents))
        if not whole:
            removed = piece.dropped | (piece.keep & ~usable)
            scan.duplicate_documents += int(removed.sum())
            scan.duplicate_tokens += int(piece.tokens[removed].sum(dtype=np.int64))
    return scan


def _choose(source: SourceDocs, seed: np.random.SeedSequence, taken: Hashes, target: int,
            scan: _Scan) -> _Choice:
    """Full epochs, then the key threshold whose documents' tokens come closest to the rest: the
    buckets below the one the rest falls in, and the smallest keys of that bucket (one more pass,
    holding only that bucket's documents)."""
    full, rest = divmod(target, scan.available)
    if rest == 0:
        return _Choice(full, scan.documents, None, 0, full * scan.available)
    below = np.cumsum(scan.bucket_tokens)
    bucket = int(np.searchsorted(below, rest, side="right"))  # below[bucket-1] <= rest < below[bucket]
    base_tokens = int(below[bucket - 1]) if bucket else 0
    base_docs = int(scan.bucket_documents[:bucket].sum())
    keys, tokens = [], []
    for piece, k, usable in _stream(source, seed, taken):
        here = usable & ((k >> _SHIFT) == bucket)
        keys.append(k[here])
        tokens.append(piece.tokens[here])
    key = np.concatenate(keys)
    order = np.argsort(key, kind="stable")
    cum = base_tokens + np.cumsum(np.concatenate(tokens)[order], dtype=np.int64)
    n = int(np.searchsorted(cum, rest, side="right"))  # cum[n-1] <= rest < cum[n]
    if n < len(cum) and cum[n] - rest < rest - (cum[n - 1] if n else base_tokens):
        n += 1
    if n:
        threshold = key[order[n - 1]]
    elif bucket:
        threshold = np.uint64((bucket << int(_SHIFT)) - 1)
    else:
        return _Choice(full, scan.documents, None, 0, full * scan.available)
    tokens_taken = int(cum[n - 1]) if n else base_tokens
    return _Choice(full, scan.documents, threshold, base_docs + n, full * scan.available + tokens_taken)


def _selected(keys: np.ndarray, usable: np.ndarray, choice: _Choice) -> np.ndarray:
    """Rows of a piece in the sample (all usable rows when the source has full epochs)."""
    if choice.full:
        return usable
    return usable & (keys <= choice.threshold) if choice.threshold is not None else np.zeros_like(usable)


def _taken_hashes(source: SourceDocs, seed: np.random.SeedSequence, taken: Hashes, choice: _Choice) -> Hashes:
    """The hashes of the distinct documents the source takes."""
    parts = [piece.hashes(np.flatnonzero(_selected(k, usable, choice)))
             for piece, k, usable in _stream(source, seed, taken)]
    return Hashes().union(np.concatenate([h for h, _ in parts]), np.concatenate([l_ for _, l_ in parts]))


def _fill(source: SourceDocs, seed: np.random.SeedSequence, taken: Hashes, choice: _Choice,
          out: np.ndarray, first_shard: int) -> None:
    """Write the source's records into ``out`` (its block of the plan): epochs, then the sample."""
    epoch_at, sample_at = 0, choice.full * choice.documents
    for piece, k, usable in _stream(source, seed, taken):
        rows = np.flatnonzero(usable if choice.full else _selected(k, usable, choice))
        at = epoch_at if choice.full else sample_at
        block = out[at:at + len(rows)]
        block["id"] = ((first_shard + piece.shard[rows]) << 32) + piece.row[rows]
        block["start"], block["tokens"] = piece.start[rows], piece.tokens[rows]
        if choice.full:
            epoch_at += len(rows)
            if choice.threshold is not None:
                chosen = rows[k[rows] <= choice.threshold]
                out[sample_at:sample_at + len(chosen)] = block[np.searchsorted(rows, chosen)]
                sample_at += len(chosen)
        else:
            sample_at += len(rows)
    for e in range(1, choice.full):
        out[e * choice.documents:(e + 1) * choice.documents] = out[:choice.documents]


def _largest_total(spec: MixSpec, caps: np.ndarray, shares: np.ndarray) -> int:
    fixed = sum(s.tokens or 0 for s in spec.sources)
    weighted = shares > 0
    return int(fixed + (caps[weighted] / shares[weighted]).min()) if weighted.any() else fixed


def _apportion(amount: int, shares: np.ndarray) -> np.ndarray:
    """Integers proportional to ``shares`` summing to ``amount`` (largest remainders)."""
    exact = amount * shares / shares.sum()
    whole = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - whole), kind="stable")
    whole[order[:amount - int(whole.sum())]] += 1
    return whole


def _unimax(total: int, caps: np.ndarray) -> np.ndarray:
    """Equal tokens per source, a source capped at ``caps`` giving its unused share to the rest."""
    targets = np.zeros(len(caps), dtype=np.int64)
    left, open_ = total, list(np.argsort(caps, kind="stable"))
    while open_:
        share = left // len(open_)
        i = open_[0]
        if caps[i] <= share:
            targets[i] = int(caps[i])
            left -= int(caps[i])
            open_.pop(0)
        else:
            targets[open_] = _apportion(left, np.ones(len(open_)))
            break
    return targets


def _refuse(source: SourceDocs, want: int, have: int, extra: str, largest: str) -> MixError:
    return MixError(f"source {source.spec.name!r}: target {int(want):,} tokens, but it has {int(have):,}{extra} "
                    f"(would need {want / have:.3f} epochs, max_epochs {source.spec.max_epochs:g}){largest}",
                    fix="lower total_tokens, raise max_epochs or change the weights")


def targets(spec: MixSpec, sources: list[SourceDocs], available: list[int]) -> np.ndarray:
    """Token target of every source from its ``available`` tokens; refuses, with the numbers, a
    target beyond ``max_epochs``."""
    have = np.array(available, dtype=np.int64)
    caps = np.floor(have * np.array([s.spec.max_epochs for s in sources])).astype(np.int64)
    fixed = np.array([s.spec.tokens or 0 for s in sources], dtype=np.int64)
    total = spec.total_tokens if spec.total_tokens is not None else int(fixed.sum())
    if spec.policy == "unimax":
        if total > caps.sum():
            raise MixError(f"unimax: total_tokens {total:,} is more than every source's max_epochs allow; "
                           f"the largest total that fits is {int(caps.sum()):,}")
        return _unimax(total, caps)
    if spec.policy == "temperature":
        shares = (have / have.sum()) ** spec.alpha
    else:
        shares = np.array([s.spec.weight or 0.0 for s in sources])
    shares = shares * (fixed == 0)  # a source with `tokens` has its target already
    shares = shares / shares.sum() if shares.sum() else shares
    out = fixed.copy()
    if shares.sum():
        out += _apportion(total - int(fixed.sum()), shares)
    for s, want, cap, n in zip(sources, out, caps, have, strict=True):
        if want > cap:
            largest = _largest_total(spec, caps, shares)
            raise _refuse(s, want, n, "", f"; the largest total that fits is {largest:,} tokens")
    return out


def order(ids: np.ndarray, group: int, rng: np.random.Generator) -> np.ndarray:
    """``ids`` in output order, in place: as given (group 0), shuffled (group 1), or groups of
    ``group`` consecutive records permuted (the last, shorter group placed at a seeded slot)."""
    if group == 0 or len(ids) < 2:
        return ids
    if group == 1:
        rng.shuffle(ids)  # raw swaps of 16-byte records: no second array
        return ids
    whole = len(ids) // group
    rng.shuffle(ids[:whole * group].view(f"V{group * ids.itemsize}"))  # a group is one item
    tail = len(ids) - whole * group
    if tail:
        _rotate_in(ids, group * int(rng.integers(whole + 1)), tail)
    return ids


def _rotate_in(ids: np.ndarray, at: int, tail: int, step: int = 1 << 20) -> None:
    """Move the last ``tail`` records to position ``at``, shifting the ones between right, in
    pieces of ``step`` (each a bounded temporary) from the end."""
    last = ids[-tail:].copy()
    hi = len(ids) - tail
    while hi > at:
        lo = max(at, hi - step)
        ids[lo + tail:hi + tail] = ids[lo:hi]
        hi = lo
    ids[at:at + tail] = last


def carve(picks: np.ndarray, blocks: list[tuple[int, int]], validation: dict, group: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): a seeded sample of the distinct selected documents goes to val and every copy
    of them leaves train, so the two never share a document. ``blocks`` are, per source, where
    its distinct documents lie in ``picks`` (start, count). train is compacted in place."""
    counts = np.array([n for _, n in blocks], dtype=np.int64)
    unique = int(counts.sum())
    n = validation.get("documents") or int(round(validation.get("fraction", 0) * unique))
    if n >= unique:
        raise MixError(f"validation asks {n:,} documents of the {unique:,} distinct ones selected",
                       fix="ask fewer validation documents")
    ranks = np.sort(rng.choice(unique, size=n, replace=False)) if n else np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    which = np.searchsorted(ends, ranks, side="right")
    starts = np.array([a for a, _ in blocks], dtype=np.int64)
    val = picks[starts[which] + ranks - (ends - counts)[which]]
    chosen = np.sort(val["id"])
    kept = 0
    for lo in range(0, len(picks), 1 << 20):
        piece = picks[lo:lo + (1 << 20)]
        at = np.minimum(np.searchsorted(chosen, piece["id"]), max(len(chosen) - 1, 0))
        stay = piece[chosen[at] != piece["id"]] if len(chosen) else piece.copy()
        picks[kept:kept + len(stay)] = stay  # kept <= lo: never overwrites what is still to read
        kept += len(stay)
    return picks[:kept], order(val, group, rng)


class _Short(Exception):
    """With ``dedup: true``, source ``index`` has too few tokens left after the earlier sources' takes."""

    def __init__(self, index: int, target: int, scan: _Scan):
        super().__init__(index)
        self.index, self.target, self.scan = index, target, scan


def _select(spec: MixSpec, sources: list[SourceDocs], seeds: list[np.random.SeedSequence], scans: list[_Scan],
            wanted: np.ndarray) -> tuple[list[_Choice], list[Hashes], list[_Scan]]:
    """Every source's choice for its target in spec order (with ``dedup``, each after dropping what
    the earlier ones took), the hashes each passes on, and the scans they were chosen from; raises
    :class:`_Short` where a source cannot meet its target within ``max_epochs``."""
    scans = list(scans)
    taken, parts, choices = Hashes(), [], []
    # seeds holds two more than sources (see make_plan): strict=False drops them
    for i, (s, seed, target) in enumerate(zip(sources, seeds, wanted, strict=False)):
        if spec.dedup and len(taken):
            scans[i] = scan = _scan(s, seed, taken)
            if not scan.available:
                raise MixError(f"source {s.spec.name!r}: every document is a duplicate of an earlier source's",
                               s.spec.root, "drop the source or turn dedup off")
            if target > int(np.floor(scan.available * s.spec.max_epochs)):
                raise _Short(i, int(target), scan)
        choices.append(_choose(s, seed, taken, int(target), scans[i]))
        if spec.dedup and i + 1 < len(sources):
            parts.append(_taken_hashes(s, seed, taken, choices[-1]))
            taken = taken.union(parts[-1].hi, parts[-1].lo)
    return choices, parts, scans


def _largest_dedup_total(spec: MixSpec, sources: list[SourceDocs], seeds: list[np.random.SeedSequence],
                         scans: list[_Scan]) -> int | None:
    """The largest ``total_tokens`` (to 0.1 %) a ``dedup: true`` mix can meet, None if not even the
    sources' own ``tokens`` fit. Bisection is exact here: a larger total gives every source a
    larger target, whose sample holds the smaller one's (the smallest keys), so each later source
    keeps fewer documents and needs more tokens: once a total fails, every larger one fails too.
    Each step plans the sources again."""
    assert spec.total_tokens is not None
    available = [sc.available for sc in scans]

    def fits(total: int) -> bool:
        try:
            _select(spec, sources, seeds, scans, targets(replace(spec, total_tokens=total), sources, available))
        except (_Short, MixError):
            return False
        return True

    lo, hi = sum(s.spec.tokens or 0 for s in sources), spec.total_tokens  # hi does not fit
    if not fits(lo):
        return None
    while hi - lo > max(1, hi // 1000):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _largest_note(spec: MixSpec, sources: list[SourceDocs], seeds: list[np.random.SeedSequence],
                  scans: list[_Scan]) -> str:
    """The refusal's hint at the total that would fit (none when every source gives its own
    ``tokens``: the message already names the source to lower)."""
    if spec.total_tokens is None:
        return ""
    largest = _largest_dedup_total(spec, sources, seeds, scans)
    if largest is None:
        return "; no total_tokens fits: the sources' own `tokens` targets alone do not"
    return f"; the largest total that fits is about {largest:,} tokens"


def make_plan(spec: MixSpec, sources: list[SourceDocs]) -> Plan:
    """The whole plan; raises MixError before anything is written when it cannot be met."""
    seeds = np.random.SeedSequence(spec.seed).spawn(len(sources) + 2)  # the last two order and carve the split
    first_shard = np.cumsum([0] + [len(s.shards) for s in sources[:-1]]).astype(np.int64)
    scans = [_scan(s, seed, Hashes()) for s, seed in zip(sources, seeds, strict=False)]
    for s, scan in zip(sources, scans, strict=True):
        if not scan.available:
            raise MixError(f"source {s.spec.name!r}: no documents left to draw from "
                           f"({scan.duplicate_documents:,} dropped by the root's dedup)", s.spec.root)
    wanted = targets(spec, sources, [sc.available for sc in scans])
    try:
        choices, parts, scans = _select(spec, sources, seeds, scans, wanted)
    except _Short as short:
        raise _refuse(sources[short.index], short.target, short.scan.available,
                      f" once {short.scan.duplicate_documents:,} duplicate documents are dropped",
                      _largest_note(spec, sources, seeds, scans)) from None
    picks = np.empty(sum(c.count for c in choices), dtype=PICK_DTYPE)
    at, blocks, taken = 0, [], Hashes()
    for i, (s, seed, choice) in enumerate(zip(sources, seeds, choices, strict=False)):
        _fill(s, seed, taken, choice, picks[at:at + choice.count], int(first_shard[i]))
        blocks.append((at, choice.unique))
        at += choice.count
        if spec.dedup and i < len(parts):
            taken = taken.union(parts[i].hi, parts[i].lo)
    results = [SourceResult(s.spec.name, sc.available, int(t), c.tokens, c.count, c.unique, sc.documents,
                            sc.duplicate_documents, sc.duplicate_tokens)
               for s, sc, t, c in zip(sources, scans, wanted, choices, strict=True)]
    splits = {spec.split: picks}
    if spec.validation:
        splits[spec.split], splits["validation"] = carve(picks, blocks, spec.validation, spec.shuffle_group,
                                                         np.random.default_rng(seeds[-1]))
    order(splits[spec.split], spec.shuffle_group, np.random.default_rng(seeds[-2]))
    return Plan(splits, results, first_shard)
