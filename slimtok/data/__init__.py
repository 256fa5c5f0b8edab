"""Reading combined splits at training time; writes nothing.

* :class:`TokenBin` / :class:`TokenBlocks` (:mod:`.bins`): one split as a memmap, nanoGPT-style
  batches, document boundaries, and windows shared out across ranks and DataLoader workers;
* :class:`MixedBlocks` (:mod:`.weighted`): several roots' splits drawn by weight, shared out the
  same way;
* per-window document masks (:mod:`.documents`: ``doc_masks=`` of both, :func:`collate`);
* ``TorchTokenBlocks`` / ``TorchMixedBlocks``: the two as torch ``IterableDataset`` s. Resuming
  mid-epoch with DataLoader workers takes torchdata's ``StatefulDataLoader``; torch's plain
  DataLoader cannot carry the workers' positions (:mod:`.sharding`).

``import slimtok.data`` never imports torch: the torch classes are built on first use by this
module's ``__getattr__``, the one dynamic name here (a torch base class cannot exist before torch
is imported). Every other name is a plain import.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from .bins import TokenBin, TokenBlocks
from .documents import FIELDS, collate
from .sharding import PositionNotSaved
from .weighted import MixedBlocks

__all__ = ["TokenBin", "TokenBlocks", "MixedBlocks", "DataError", "FIELDS", "collate",
           "PositionNotSaved"]  # the torch classes on request

#: torch IterableDataset name -> the class it wraps
_TORCH = {"TorchTokenBlocks": TokenBlocks, "TorchMixedBlocks": MixedBlocks}


def __getattr__(name: str) -> Any:
    """``TorchTokenBlocks`` / ``TorchMixedBlocks`` (as torch IterableDatasets), built on first use."""
    if name not in _TORCH:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from torch.utils.data import IterableDataset

    cls = type(name, (_TORCH[name], IterableDataset), {"__module__": __name__})
    globals()[name] = cls  # so DataLoader workers can pickle it by name
    return cls
