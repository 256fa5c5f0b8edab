"""The public path of :class:`~slimtok.data.weighted.MixedBlocks` (``slimtok.mixed.MixedBlocks``):
several combined splits read by weight at training time. The code lives in slimtok/data/weighted.py.
"""

from .data.weighted import MixedBlocks

__all__ = ["MixedBlocks"]
