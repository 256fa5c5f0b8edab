"""Several combined splits read by weight at training time, writing nothing.

:class:`MixedBlocks` draws windows of ``block_size`` tokens (x, y shifted by one, int64, as
:class:`slimtok.data.TokenBlocks`) from several combined splits. Draw ``t`` of epoch ``e``:

* its source comes from a seeded draw with probabilities = the normalized weights (weights are
  shares of *tokens*: every block has the same size, so block shares are token shares);
* it is the next block of that source in a seeded permutation of the source's blocks, a new
  permutation each time the source is used up (a small source repeats, a large one is not used
  up), and a new order every epoch (:meth:`set_epoch`).

Everything depends only on (seed, epoch, position), so :meth:`state_dict` is (epoch, position)
and the reader layout, and :meth:`load_state_dict` resumes exactly where a run stopped. Draws are
shared out across data-parallel ranks and DataLoader workers: draw ``t`` belongs to rank
``t % world_size`` and, within it, to worker ``(t // world_size) % num_workers`` (reader
``rank + world_size * worker`` of ``world_size * num_workers``, when ``t`` modulo that total equals
it), so a rank reads the same draws whatever its number of workers, and every draw is read by
exactly one reader. Each copy of the object (one per DataLoader worker) keeps its own position:
resuming with ``num_workers > 0`` takes torchdata's ``StatefulDataLoader``, which saves every
worker's state; torch's plain DataLoader cannot carry worker positions (see
:mod:`slimtok.data.sharding`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..protocol import Meta, OutputRoot, read_record, storage_for
from .bins import TokenBin
from .documents import check_fields, window_fields
from .sharding import Resumable

#: draws whose sources are generated together (one seeded generator per group of draws)
_GROUP = 1 << 16


def _split_file(path: Path, split: str) -> Path:
    """An output root's split file, or ``path`` itself when it is a file."""
    return OutputRoot(path).combined(split) if storage_for(path).is_folder(path) else path


class MixedBlocks(Resumable):
    """Blocks of several combined splits by weight; ``roots_and_weights`` holds (output root or
    split file, weight) pairs. ``samples_per_epoch`` defaults to every source's blocks once.

    Items are (x, y), or with ``doc_masks`` (some of :data:`slimtok.data.documents.FIELDS`) a dict
    of ``x``, ``y`` and those fields of the window from its source's train.idx.
    ``worker``/``num_workers`` name the DataLoader worker when torch does not (outside a worker).
    The object pickles without its memory maps (a spawned DataLoader worker reopens the files)."""

    def __init__(self, roots_and_weights: Sequence[tuple[str | os.PathLike[str], float]], block_size: int,
                 seed: int, split: str = "train", samples_per_epoch: int | None = None,
                 rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1,
                 doc_masks: Collection[str] = ()):
        if not roots_and_weights:
            raise DataError("MixedBlocks needs at least one (root, weight) pair")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.paths = [_split_file(Path(p), split) for p, _ in roots_and_weights]
        weights = np.array([float(w) for _, w in roots_and_weights])
        if (weights < 0).any() or not weights.sum():
            raise DataError(f"weights {weights.tolist()} must be non-negative and not all zero")
        self.weights = weights / weights.sum()
        self.bins = [TokenBin(p) for p in self.paths]
        self._same_tokenizer()
        self.blocks = np.array([(len(b) - 1) // block_size for b in self.bins], dtype=np.int64)
        empty = [str(p) for p, n, w in zip(self.paths, self.blocks, self.weights, strict=True) if n == 0 and w > 0]
        if empty:
            raise DataError(f"fewer than block_size + 1 = {block_size + 1} tokens", empty[0])
        self.doc_masks = check_fields(doc_masks)
        if self.doc_masks:
            for b in self.bins:
                b._ends()  # a missing train.idx is refused here, not at the first draw from it
        self.block_size, self.seed, self.rank, self.world_size = block_size, seed, rank, world_size
        self.worker, self.num_workers = worker, num_workers
        self.samples_per_epoch = samples_per_epoch or int(self.blocks.sum())
        self.epoch, self.position = 0, 0
        self._perms: dict[int, tuple[int, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # a memmap pickles as a copy of its whole file: a spawned worker reopens the files instead
        return {k: v for k, v in self.__dict__.items() if k not in ("bins", "_perms")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.bins = [TokenBin(p) for p in self.paths]
        self._perms = {}

    def _same_tokenizer(self) -> None:
        seen: dict[str, Path] = {}
        for path in self.paths:
            meta = read_record(OutputRoot(path.parent).meta_json, Meta)  # there: TokenBin(path) read it
            seen.setdefault(meta.tokenizer_sha256 if meta is not None else "", path)
        if len(seen) > 1:
            a, b = list(seen.values())[:2]
            raise DataError(f"was tokenized with another tokenizer than {a}", b, "mix roots of one tokenizer")

    # -- position ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first draw: a new source order and new permutations."""
        super().set_epoch(epoch)
        self._perms.clear()

    def _state_path(self) -> Path:
        return self.paths[0]

    def _reader_index(self, worker: int, workers: int) -> int:
        return self.rank + self.world_size * worker

    # -- draws ------------------------------------------------------------------------------
    def _sources(self, group: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, group])
        return rng.choice(len(self.weights), size=_GROUP, p=self.weights)

    def _counts_before(self, position: int) -> np.ndarray:
        """How often each source was drawn in draws [0, position) of this epoch."""
        counts = np.zeros(len(self.weights), dtype=np.int64)
        for group in range(position // _GROUP):
            counts += np.bincount(self._sources(group), minlength=len(counts))
        head = self._sources(position // _GROUP)[:position % _GROUP]
        return counts + np.bincount(head, minlength=len(counts))

    def _block(self, source: int, k: int) -> int:
        """The ``k``-th block this epoch draws from ``source``."""
        cycle, index = divmod(k, int(self.blocks[source]))
        cached = self._perms.get(source)
        if cached is None or cached[0] != cycle:  # one permutation per source kept at a time
            rng = np.random.default_rng([self.seed, self.epoch, source, cycle])
            cached = self._perms[source] = (cycle, rng.permutation(int(self.blocks[source])))
        return int(cached[1][index])

    def draws(self, start: int, stop: int, reader: int = 0, readers: int = 1) -> Iterator[tuple[int, int, int]]:
        """(draw, source, block) for every draw ``t`` in [start, stop) of this epoch with
        ``t % readers == reader`` (by default every draw, all ranks)."""
        counts = self._counts_before(start)
        t = start
        while t < stop:
            group = t // _GROUP
            sources = self._sources(group)
            for s in sources[t % _GROUP:min(_GROUP, stop - group * _GROUP)].tolist():
                if t % readers == reader:  # every draw counts towards its source's next block
                    yield t, s, self._block(s, int(counts[s]))
                counts[s] += 1
                t += 1

    def __iter__(self) -> Iterator[Any]:
        """This reader's windows from the current position to the end of the epoch; the position
        (the draw after the last one taken, counted over all readers) advances as they are taken,
        so a state_dict taken between two resumes after the last. A pass that runs to the end
        starts the epoch over: iterating again without ``set_epoch`` repeats the epoch's order."""
        self._warn_if_unsaved()
        reader, readers = self.reader()
        size = self.block_size
        ends = [np.asarray(b._ends()) for b in self.bins] if self.doc_masks else []
        for t, source, block in self.draws(self.position, self.samples_per_epoch, reader, readers):
            self.position = t + 1
            x, y = self.bins[source].window(block * size, size)
            if not self.doc_masks:
                yield x, y
            else:
                yield {"x": x, "y": y, **window_fields(ends[source], block * size, size, self.doc_masks)}
        self.position = 0  # as TokenBlocks: a finished pass starts the epoch over
