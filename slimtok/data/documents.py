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


def cu_seqlens(ends: np.ndarray, start: int, size: int) -> np.ndarray:
    """int32 ``[0, b1, ..., size]``: where documents begin in ``[start, start + size)`` as offsets
    from ``start``, with 0 and ``size``. ``ends`` is the sorted document end offsets (train.idx)."""
    lo = int(np.searchsorted(ends, start, side="right"))  # an end at the window's start or end
    hi = int(np.searchsorted(ends, start + size, side="left"))  # begins nothing inside it
    inside = np.asarray(ends[lo:hi], dtype=np.int64) - start
    if len(inside) > 1:  # zero-token documents repeat an end: one boundary, no empty segment
        inside = inside[np.concatenate([[True], inside[1:] != inside[:-1]])]
    out = np.empty(len(inside) + 2, dtype=np.int32)
    out[0], out[1:-1], out[-1] = 0, inside, size
    return out


def window_fields(ends: np.ndarray, start: int, size: int, fields: Sequence[str]) -> dict[str, Any]:
    """The ``fields`` (checked by :func:`check_fields`) of the window ``[start, start + size)``."""
    cu = cu_seqlens(ends, start, size)
    out: dict[str, Any] = {}
    for name in fields:
        if name == "cu_seqlens":
            out["cu_seqlens"] = cu
            out["max_seqlen"] = int(np.diff(cu).max())
        elif name == "position_ids":
            begins = np.zeros(size, dtype=np.int64)
            begins[cu[1:-1]] = cu[1:-1]
            out["position_ids"] = np.arange(size, dtype=np.int64) - np.maximum.accumulate(begins)
        else:  # attention_mask
            segment = np.zeros(size, dtype=np.int32)
            segment[cu[1:-1]] = 1
            segment = np.cumsum(segment)
            out["attention_mask"] = np.tril(segment[:, None] == segment[None, :])
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
