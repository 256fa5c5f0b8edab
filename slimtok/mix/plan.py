"""The exact plan of a mix: token targets per source, then whole documents chosen and ordered.

Invariants: full epochs repeat every document of a source; the remainder is a seeded sample of
its documents whose tokens are within one document of what is left; the plan depends only on the
spec and the inputs (seeded ``SeedSequence`` children, one per source and one per ordering step).
A document is named by its *global id*: its index in the sources' documents laid end to end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MixError
from .inputs import SourceDocs
from .spec import MixSpec


@dataclass
class SourceResult:
    """What the plan takes of one source (before any validation carve)."""

    name: str
    available: int
    target: int
    tokens: int = 0
    documents: int = 0
    unique: int = 0

    @property
    def epochs(self) -> float:
        return self.tokens / self.available if self.available else 0.0


@dataclass
class Plan:
    """Global ids of the documents of each split, in output order, and per-source accounting."""

    splits: dict[str, np.ndarray]
    sources: list[SourceResult]
    offsets: np.ndarray  # first global id of each source


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


def targets(spec: MixSpec, sources: list[SourceDocs]) -> np.ndarray:
    """Token target of every source; refuses, with the numbers, a target beyond ``max_epochs``."""
    available = np.array([s.available for s in sources], dtype=np.int64)
    caps = np.floor(available * np.array([s.spec.max_epochs for s in sources])).astype(np.int64)
    fixed = np.array([s.spec.tokens or 0 for s in sources], dtype=np.int64)
    total = spec.total_tokens if spec.total_tokens is not None else int(fixed.sum())
    if spec.policy == "unimax":
        if total > caps.sum():
            raise MixError(f"unimax: total_tokens {total:,} is more than every source's max_epochs allow; "
                           f"the largest total that fits is {int(caps.sum()):,}")
        return _unimax(total, caps)
    if spec.policy == "temperature":
        natural = available / available.sum()
        shares = natural ** spec.alpha
    else:
        shares = np.array([s.spec.weight or 0.0 for s in sources])
    shares = shares * (fixed == 0)  # a source with `tokens` has its target already
    shares = shares / shares.sum() if shares.sum() else shares
    out = fixed.copy()
    if shares.sum():
        out += _apportion(total - int(fixed.sum()), shares)
    for s, want, cap, have in zip(sources, out, caps, available):
        if want > cap:
            raise MixError(f"source {s.spec.name!r}: target {int(want):,} tokens, but it has {int(have):,} "
                           f"(would need {want / have:.3f} epochs, max_epochs {s.spec.max_epochs:g}); "
                           f"the largest total that fits is {_largest_total(spec, caps, shares):,} tokens",
                           fix="lower total_tokens, raise max_epochs or change the weights")
    return out


def select(tokens: np.ndarray, target: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(local ids, distinct documents) for ``target`` tokens: every document per full epoch, then
    a seeded sample (kept in source order) whose tokens are the closest prefix of a permutation
    to the rest."""
    available = int(tokens.sum(dtype=np.int64))
    full, rest = divmod(target, available)
    ids = np.arange(len(tokens), dtype=np.int64)
    perm = rng.permutation(len(tokens))
    cum = np.cumsum(tokens[perm], dtype=np.int64)
    k = int(np.searchsorted(cum, rest, side="right"))  # cum[k-1] <= rest < cum[k]
    if k < len(cum) and cum[k] - rest < rest - (cum[k - 1] if k else 0):
        k += 1
    return np.concatenate([np.tile(ids, full), np.sort(perm[:k])]), len(tokens) if full else k


def order(ids: np.ndarray, group: int, rng: np.random.Generator) -> np.ndarray:
    """``ids`` in output order: as given (group 0), shuffled in place (group 1), or groups of
    ``group`` consecutive ids permuted."""
    if group == 0 or len(ids) < 2:
        return ids
    if group == 1:
        rng.shuffle(ids)  # in place: no second array per selected document
        return ids
    groups = (len(ids) + group - 1) // group
    rank = np.empty(groups, dtype=np.int64)
    rank[rng.permutation(groups)] = np.arange(groups)
    return ids[np.argsort(rank[np.arange(len(ids)) // group], kind="stable")]


def carve(ids: np.ndarray, documents: int, validation: dict,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): a seeded sample of the distinct selected documents goes to val, and every copy
    of them leaves train, so the two never share a document. Both keep ``ids``' order."""
    selected = np.zeros(documents, dtype=bool)  # masks, not np.unique/isin: linear, one byte per document
    selected[ids] = True
    unique = np.flatnonzero(selected)
    n = validation.get("documents") or int(round(validation.get("fraction", 0) * len(unique)))
    if n >= len(unique):
        raise MixError(f"validation asks {n:,} documents of the {len(unique):,} distinct ones selected",
                       fix="ask fewer validation documents")
    chosen = np.zeros(0, dtype=np.int64) if n == 0 else rng.choice(unique, size=n, replace=False)
    selected[:] = False
    selected[chosen] = True
    in_val = selected[ids]
    val, first = np.unique(ids[in_val], return_index=True)
    return ids[~in_val], val[np.argsort(first)]


def make_plan(spec: MixSpec, sources: list[SourceDocs]) -> Plan:
    """The whole plan; raises MixError before anything is written when it cannot be met."""
    wanted = targets(spec, sources)
    seeds = np.random.SeedSequence(spec.seed).spawn(len(sources) + 2)
    offsets = np.cumsum([0] + [len(s.tokens) for s in sources[:-1]]).astype(np.int64)
    picked, results = [], []
    for s, target, seed, offset in zip(sources, wanted, seeds, offsets):
        local, unique = select(s.tokens, int(target), np.random.default_rng(seed))
        picked.append(local + offset)
        results.append(SourceResult(s.spec.name, s.available, int(target), int(s.tokens[local].sum(dtype=np.int64)),
                                    len(local), unique))
    ids = order(np.concatenate(picked), spec.shuffle_group, np.random.default_rng(seeds[-2]))
    splits = {spec.split: ids}
    if spec.validation:
        splits[spec.split], splits["validation"] = carve(ids, sum(len(s.tokens) for s in sources), spec.validation, np.random.default_rng(seeds[-1]))
    return Plan(splits, results, offsets)
