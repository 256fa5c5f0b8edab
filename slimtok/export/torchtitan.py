"""torchtitan: a combined split as a uint32 token memmap and its document offsets.

Reads ``meta.json``, ``<split>.bin`` and ``<split>.idx`` of an output root (after ``combine``);
writes, in a folder of its own per split (:meth:`~slimtok.protocol.OutputRoot.export_dir`):

* ``tokens.bin``: the ids as little-endian uint32, what torchtitan's pretokenized source maps
  (``np.memmap(tokens_path, dtype=np.uint32)``, in its data README): a uint32 split's file
  linked, a uint16 one widened block by block;
* ``document_offsets.npy``: int64, ``[0, end_1, ..., end_n]``, so document ``i`` is
  ``tokens[offsets[i]:offsets[i + 1]]``: the exact document ends, never an eos scan.

Published as one set with the folder's export record (:mod:`.folder`). torchtitan cannot map an
empty file, so an empty split is left out, saying so (refused when named).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..protocol import OutputRoot
from ..publish import require_free
from .folder import ExportFolder, link_or_copy, npy_header, write_blocks
from .source import combined_meta, exported_splits

TORCHTITAN = "torchtitan"
TOKENS = "tokens.bin"
OFFSETS = "document_offsets.npy"
#: Tokens (and document ends) converted at once: bounds memory for any split.
BLOCK = 1 << 24


def export_torchtitan(output_root: str | os.PathLike[str], prefix: str, splits: Sequence[str] | None = None,
                      log: Callable[[str], None] = print, verify: str = "sample") -> list[Path]:
    """Write each combined split (default: all but empty ones) as ``tokens.bin`` +
    ``document_offsets.npy`` in its own folder; returns the folders. ``verify``: how much of
    the split is checked against its records first (:func:`slimtok.finished.verify_split`)."""
    root = OutputRoot(output_root)
    meta = combined_meta(root)
    written = []
    for split, data in exported_splits(root, meta, splits, verify, log, 1,
                                       "one token (an empty tokens.bin cannot be memory-mapped)"):
        ends = data.doc_ends
        assert ends is not None  # split_bin refuses a split without its index
        folder = root.export_dir(TORCHTITAN, prefix, split)
        with ExportFolder(folder, TORCHTITAN, [TOKENS, OFFSETS]) as out:
            if data.dtype == np.uint32:
                how = link_or_copy(data.path, out.tmp(TOKENS))
            else:
                require_free(folder, 4 * len(data) + 8 * len(ends), f"widening {data.path.name} to uint32")
                write_blocks(out.tmp(TOKENS), (data.tokens[lo:lo + BLOCK].astype("<u4")
                                               for lo in range(0, len(data), BLOCK)))
                how = f"widening {data.dtype} to uint32"
            offsets = itertools.chain([np.zeros(1, "<i8")], (np.asarray(ends[lo:lo + BLOCK]).astype("<i8")
                                                             for lo in range(0, len(ends), BLOCK)))
            write_blocks(out.tmp(OFFSETS), offsets, npy_header(np.dtype("<i8"), (len(ends) + 1,)))
            out.publish()
        log(f"{folder}: {TOKENS} ({len(data):,} uint32 tokens, by {how}) and {OFFSETS} ({len(ends):,} documents)")
        written.append(folder)
    return written
