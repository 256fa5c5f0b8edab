"""Reading combined splits at training time; writes nothing.

* :class:`TokenBin` / :class:`TokenBlocks` (:mod:`.bins`): one split as a memmap, nanoGPT-style
  batches, document boundaries, and windows shared out across ranks and DataLoader workers;
* :class:`MixedBlocks` (:mod:`.weighted`): several roots' splits drawn by weight;
* ``TorchTokenBlocks``: :class:`TokenBlocks` as a torch ``IterableDataset``.

``import slimtok.data`` never imports torch: ``TorchTokenBlocks`` is built on first use by this
module's ``__getattr__``, the one dynamic name here (a torch base class cannot exist before torch
is imported). Every other name is a plain import.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from .bins import TokenBin, TokenBlocks
from .weighted import MixedBlocks

__all__ = ["TokenBin", "TokenBlocks", "MixedBlocks", "DataError"]  # TorchTokenBlocks on request


def __getattr__(name: str) -> Any:
    """``TorchTokenBlocks`` (TokenBlocks as a torch IterableDataset), built on first use."""
    if name != "TorchTokenBlocks":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from torch.utils.data import IterableDataset

    cls = type("TorchTokenBlocks", (TokenBlocks, IterableDataset), {"__module__": __name__})
    globals()[name] = cls  # so DataLoader workers can pickle it by name
    return cls
