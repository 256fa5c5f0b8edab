"""Reading one combined split in a training loop.

Reads ``train.bin`` (and ``val.bin`` / ``test.bin``) as a memmap in the dtype recorded in
``meta.json`` next to it, and ``train.idx`` (uint64 end offset of every document, in tokens) for
document boundaries. Writes nothing. numpy is enough; torch is imported only when a DataLoader
asks for ``TorchTokenBlocks`` (built by :mod:`slimtok.data` on first use).

The training pair rule everywhere here: for a window starting at ``s`` of ``block_size`` tokens,
``x = data[s : s + block_size]`` and ``y = data[s + 1 : s + 1 + block_size]`` (y is x shifted by
one), both returned as int64.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, IntegrityError
from ..protocol import Meta, OutputRoot, read_record, read_tokens, splits_command, storage_for
from ..protocol.docindex import index_path, read_checked_index, read_doc_index
from ..publish import roll_forward
from .documents import check_fields, spans, window_fields
from .sharding import Resumable


def _finish_publish(folder: Path) -> None:
    """Finish a publish that a killed combine left in ``folder``, so the files read belong together."""
    try:
        roll_forward(folder)
    except OSError as exc:
        raise DataError(f"an interrupted combine left its files half published ({exc.strerror})", folder,
                        f"run `slimtok combine --output-root {folder}`") from exc


def _split_info(path: Path) -> tuple[str, dict]:
    """(dtype, meta entry of the split whose file is ``path``) from the meta.json beside it."""
    meta_path = OutputRoot(path.parent).meta_json
    meta = read_record(meta_path, Meta)
    if meta is None:
        raise DataError(f"no readable {meta_path.name} beside it to give the dtype", path,
                        "pass dtype=, or run `slimtok combine` to write it")
    for info in meta.splits.values():
        if info.get("file") == path.name:
            return meta.dtype, info
    raise DataError(f"does not list {path.name}", meta_path, "run `slimtok combine`")


class TokenBin:
    """One combined split: ``tokens`` (memmap), ``doc_ends`` (memmap of the index, or None).

    The dtype comes from meta.json unless given. When meta.json lists the split, the file sizes
    are checked against its token and document counts, so a half-replaced pair is refused.
    """

    def __init__(self, path: str | os.PathLike[str], dtype: str | np.dtype | None = None,
                 index: str | os.PathLike[str] | None = None):
        self.path = Path(path)
        _finish_publish(self.path.parent)
        info: dict = {}
        if dtype is None:
            dtype, info = _split_info(self.path)
        self.dtype = np.dtype(dtype)
        try:
            self.tokens = read_tokens(self.path, self.dtype)
        except FileNotFoundError as exc:
            raise DataError("is missing", self.path, splits_command(OutputRoot(self.path.parent))) from exc
        if info and info.get("tokens") != len(self.tokens):
            raise DataError(f"{len(self.tokens):,} tokens, meta.json says {info.get('tokens'):,}", self.path,
                            "re-run `slimtok combine`")
        index_file = Path(index) if index is not None else index_path(self.path)
        has_index = storage_for(index_file).exists(index_file)
        if info and not has_index:
            raise DataError(f"is missing beside {self.path.name} (the pair was not published together)", index_file,
                            "run `slimtok combine` again")
        self.doc_ends: np.ndarray | None = read_doc_index(index_file) if has_index and not info else None
        if has_index and info:  # checked against meta.json's entry (count, last end, checksum) before use
            try:
                self.doc_ends = read_checked_index(index_file, info.get("documents", -1), len(self.tokens),
                                                   info.get("index_checksum"),
                                                   splits_command(OutputRoot(self.path.parent)))
            except IntegrityError as exc:  # a trainer catches the loader's one error class
                raise DataError(exc.message, exc.path, exc.fix) from exc

    def __len__(self) -> int:
        return len(self.tokens)

    # -- documents --------------------------------------------------------------------------
    def _ends(self) -> np.ndarray:
        if self.doc_ends is None:
            raise DataError("is missing", index_path(self.path), "re-run `slimtok combine` to write it")
        return self.doc_ends

    @property
    def num_documents(self) -> int:
        return len(self._ends())

    def document(self, i: int) -> np.ndarray:
        """Ids of document ``i`` (its trailing eos included)."""
        ends = self._ends()
        start = int(ends[i - 1]) if i > 0 else 0
        return np.asarray(self.tokens[start:int(ends[i])])

    def document_starts(self, start: int, stop: int) -> np.ndarray:
        """Token offsets in ``[start, stop)`` where a document begins (0 counts as a beginning)."""
        ends = self._ends()
        stop = min(stop, len(self.tokens))  # the last end is the file's end, not a beginning
        # searched as the index's own dtype: a Python list against uint64 converts the whole index (~120 µs
        # per call at 200,000 documents, against ~1 µs)
        lo, hi = ends.searchsorted(np.array([start, stop], dtype=ends.dtype), side="left")
        starts = ends[lo:hi].astype(np.int64)
        return np.concatenate([[0], starts]) if start == 0 < stop else starts

    # -- sampling ---------------------------------------------------------------------------
    def window(self, s: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) int64 at offset ``s``: y is x shifted by one token."""
        chunk = np.asarray(self.tokens[s:s + block_size + 1]).astype(np.int64)
        return chunk[:-1], chunk[1:]

    def get_batch(self, batch_size: int, block_size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A nanoGPT-style batch: ``batch_size`` windows at offsets drawn uniformly by ``rng``."""
        if len(self) <= block_size:
            raise DataError(f"{len(self)} tokens, need more than block_size {block_size}", self.path)
        ix = rng.integers(0, len(self) - block_size, size=batch_size)
        pairs = [self.window(int(s), block_size) for s in ix]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


#: blocks whose document spans are searched at once when document masks are asked for
_SEARCHED = 4096


class TokenBlocks(Resumable):
    """Consecutive non-overlapping windows of a split, shared out across data-parallel ranks and
    DataLoader workers: block ``j`` (x = tokens[j*B : j*B+B], y shifted by one) goes to the
    reader ``rank * num_workers + worker`` of ``world_size * num_workers`` when ``j`` modulo that
    total equals it. Every block is read by exactly one reader; a trailing partial block is
    dropped. ``seed`` shuffles each reader's own blocks (the same seed gives the same order), and
    :meth:`set_epoch` gives each epoch its own order.

    Items are (x, y), or with ``doc_masks`` (some of :data:`slimtok.data.documents.FIELDS`) a dict
    of ``x``, ``y`` and those fields of the window from train.idx (see
    :mod:`slimtok.data.documents`; :func:`slimtok.data.collate` batches them).

    Resuming: ``position`` counts the blocks this object has yielded in the current epoch;
    :meth:`state_dict` / :meth:`load_state_dict` carry (epoch, position) and the reader layout,
    and iterating resumes after the last block taken. A pass that runs to the end starts the epoch
    over (position 0), so iterating again without ``set_epoch`` repeats the epoch's order. The
    counts are per object: under a DataLoader each worker has its own copy, so resuming with
    ``num_workers > 0`` takes torchdata's ``StatefulDataLoader`` (it saves every worker's state);
    torch's plain DataLoader cannot carry worker positions (a worker says so by a
    :class:`~slimtok.data.sharding.PositionNotSaved` warning).

    The worker index and count come from torch's DataLoader when it runs this in a worker (and
    torch is already imported), otherwise from ``worker``/``num_workers``.
    """

    def __init__(self, path: str | os.PathLike[str], block_size: int, rank: int = 0, world_size: int = 1,
                 seed: int | None = None, worker: int = 0, num_workers: int = 1, dtype: str | None = None,
                 doc_masks: Collection[str] = ()):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.path, self.block_size, self.rank, self.world_size = str(path), block_size, rank, world_size
        self.seed, self.worker, self.num_workers, self.dtype = seed, worker, num_workers, dtype
        self.doc_masks = check_fields(doc_masks)
        self.epoch, self.position = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first block. With a seed, reader r's order in epoch e is a
        permutation by ``default_rng([seed, r, e])`` (epoch 0: ``[seed, r]``, the order before
        epochs existed); without one, the order stays sequential."""
        super().set_epoch(epoch)

    def _state_path(self) -> str:
        return self.path

    def _reader_index(self, worker: int, workers: int) -> int:
        return self.rank * workers + worker

    def blocks(self, data: TokenBin | None = None) -> np.ndarray:
        """The block numbers this reader yields in the current epoch, in order."""
        data = data or TokenBin(self.path, self.dtype)
        reader, readers = self.reader()
        mine = np.arange(reader, (len(data) - 1) // self.block_size, readers, dtype=np.int64)
        if self.seed is not None:
            key = [self.seed, reader] if self.epoch == 0 else [self.seed, reader, self.epoch]
            np.random.default_rng(key).shuffle(mine)
        return mine

    def __iter__(self) -> Iterator[Any]:
        self._warn_if_unsaved()
        data = TokenBin(self.path, self.dtype)
        ends = np.asarray(data._ends()) if self.doc_masks else None  # a missing train.idx: refused here
        size = self.block_size
        todo = self.blocks(data)[self.position:]
        for first in range(0, len(todo), _SEARCHED):
            chunk = todo[first:first + _SEARCHED]
            lo, hi = spans(ends, chunk * size, size) if ends is not None else (chunk, chunk)
            for j, a, b in zip(chunk.tolist(), lo.tolist(), hi.tolist(), strict=True):
                self.position += 1
                x, y = data.window(j * size, size)
                if ends is None:
                    yield x, y
                else:
                    yield {"x": x, "y": y, **window_fields(ends, j * size, size, self.doc_masks, (a, b))}
        self.position = 0
