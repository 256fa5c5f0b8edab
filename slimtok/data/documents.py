"""Per-window document masks from the exact document ends (``train.idx``), for trainers that
attend within documents only (flash-attention varlen, Megatron's reset_position_ids /
reset_attention_mask, torchtitan's document masks). numpy only; :func:`collate` imports torch.

For the window ``x = tokens[start : start + size]``, a document begins at offset ``i`` when
``i == 0`` or ``start + i`` is the end of a document (``start < end < start + size``). The first
segment of a window starts at offset 0 even when its document began before the window: positions
count from the window's start, as Megatron's ``reset_position_ids`` does. The fields (any of
:data:`FIELDS`):

* ``cu_seqlens``: int32 ``[0, b1, ..., size]``, the offsets where segments begin plus ``size``
  (flash-attention varlen's and Megatron's THD ``cu_seqlens`` for one window), with ``max_seqlen``
  (int) the longest segment;
* ``position_ids``: int64, ``i`` minus the beginning of the segment holding ``i``;
* ``attention_mask``: bool ``size × size``, True where query ``i`` may attend to key ``j``
  (``j <= i`` in the same segment): torch's scaled_dot_product_attention convention; Megatron's
  mask is its negation (True = masked out).

Boundaries come from the index, never from scanning for eos: an eos id inside a document's text
does not split it. A document of zero tokens makes no segment.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from functools import lru_cache
from itertools import pairwise
from typing import Any

import numpy as np

from ..errors import DataError

#: the optional per-window outputs, in the order they are added to an item
FIELDS = ("position_ids", "cu_seqlens", "attention_mask")


def check_fields(fields: Collection[str]) -> tuple[str, ...]:
    """``fields`` as a tuple, refusing a name not in :data:`FIELDS`."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise DataError(f"no document field {', '.join(unknown)}", fix=f"ask for some of {', '.join(FIELDS)}")
    return tuple(f for f in FIELDS if f in fields)


def spans(ends: np.ndarray, starts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For the windows at ``starts`` (any int array): ``(lo, hi)``, the range of ``ends`` strictly
    inside each window (an end at a window's start or end begins nothing in it). One vectorized
    search for many windows costs what one window's own search costs."""
    # searched as the index's own dtype: an int64 or a Python int against uint64 converts the whole index
    at = np.asarray(starts).astype(ends.dtype)
    return ends.searchsorted(at, side="right"), ends.searchsorted(at + ends.dtype.type(size), side="left")


def _bounds(ends: np.ndarray, start: int, size: int, span: tuple[int, int] | None = None) -> list[int]:
    """``[0, b1, ..., size]`` as Python ints (a window holds a few documents: a list is cheaper here
    than numpy's per-call cost). ``span``: the window's ``(lo, hi)`` from :func:`spans`, if known."""
    if span is None:
        lo, hi = (int(a[0]) for a in spans(ends, np.array([start]), size))
    else:
        lo, hi = span
    bounds = [0]
    for end in ends[lo:hi].tolist():
        if end - start != bounds[-1]:  # zero-token documents repeat an end: no empty segment
            bounds.append(end - start)
    bounds.append(size)
    return bounds


def cu_seqlens(ends: np.ndarray, start: int, size: int) -> np.ndarray:
    """int32 ``[0, b1, ..., size]``: where documents begin in ``[start, start + size)`` as offsets
    from ``start``, with 0 and ``size``. ``ends`` is the sorted document end offsets (train.idx)."""
    return np.array(_bounds(ends, start, size), dtype=np.int32)


@lru_cache(maxsize=4)
def _lower(size: int) -> np.ndarray:
    """The ``size × size`` lower triangle (read-only), sliced for every segment's causal block."""
    tri = np.tri(size, dtype=np.bool_)
    tri.flags.writeable = False
    return tri


@lru_cache(maxsize=4)
def _counting(size: int) -> np.ndarray:
    """``0 .. size-1`` (read-only), sliced for every segment's positions."""
    count = np.arange(size, dtype=np.int64)
    count.flags.writeable = False
    return count


def window_fields(ends: np.ndarray, start: int, size: int, fields: Sequence[str],
                  span: tuple[int, int] | None = None) -> dict[str, Any]:
    """The ``fields`` (checked by :func:`check_fields`) of the window ``[start, start + size)``.
    ``ends``: the index as an ndarray (a memmap's slicing costs more: pass ``np.asarray`` of it);
    ``span``: the window's ``(lo, hi)`` from :func:`spans`, when searched with others."""
    bounds = _bounds(ends, start, size, span)
    segments = list(pairwise(bounds))
    out: dict[str, Any] = {}
    for name in fields:
        if name == "cu_seqlens":
            out["cu_seqlens"] = np.array(bounds, dtype=np.int32)
            out["max_seqlen"] = max(b - a for a, b in segments)
        elif name == "position_ids":
            count, positions = _counting(size), np.empty(size, dtype=np.int64)
            for a, b in segments:
                positions[a:b] = count[:b - a]
            out["position_ids"] = positions
        else:  # attention_mask: a lower triangle on each segment's diagonal block
            lower, mask = _lower(size), np.zeros((size, size), dtype=np.bool_)
            for a, b in segments:
                mask[a:b, a:b] = lower[:b - a, :b - a]
            out["attention_mask"] = mask
    return out


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A DataLoader ``collate_fn`` for items with document fields: torch tensors, ``x``, ``y``,
    ``position_ids`` and ``attention_mask`` stacked (batch first); ``cu_seqlens`` of the batch
    flattened to one sequence of ``len(items) * size`` tokens (window ``k``'s offsets plus
    ``k * size``, one int32 vector, as flash-attention varlen and Megatron's THD format take a
    micro-batch), ``max_seqlen`` the batch's longest segment (int)."""
    import torch

    out: dict[str, Any] = {}
    for key in items[0]:
        if key == "cu_seqlens":
            size = len(items[0]["x"])
            parts = [item["cu_seqlens"][:-1] + k * size for k, item in enumerate(items)]
            out[key] = torch.from_numpy(np.concatenate([*parts, np.array([len(items) * size], np.int32)]))
        elif key == "max_seqlen":
            out[key] = max(item[key] for item in items)
        else:
            out[key] = torch.from_numpy(np.stack([item[key] for item in items]))
    return out
