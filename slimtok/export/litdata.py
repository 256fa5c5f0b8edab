"""litdata: a combined split as litdata's optimized chunks, what ``StreamingDataset`` with
``TokensLoader(block_size)`` reads.

Reads ``meta.json``, ``<split>.bin`` and ``<split>.idx`` of an output root (after ``combine``);
writes, in a folder of its own per split (:meth:`~slimtok.protocol.OutputRoot.export_dir`):

* ``chunk-0-<c>.bin``: litdata's chunk layout, ``uint32 n``, ``uint32 offsets[n + 1]`` (bytes
  from the file's start), then the items' bytes; the items are the documents cut at the chunk's
  ends, so the offsets carry the exact document ends. ``TokensLoader`` reads each chunk as whole
  blocks of ``block_size`` tokens and drops a chunk's remainder, so every chunk but the last holds
  a multiple of ``block_size`` tokens: block ``i`` is then the split's tokens
  ``[i * block_size, (i + 1) * block_size)``, as slimtok's own windows. The token bytes follow a
  header, so they are a kernel copy of the split's range (no link can add a header);
* ``index.json``: the chunks (``chunk_bytes``, ``chunk_size`` items, ``dim`` tokens, ``filename``)
  and the config (``data_format`` ``no_header_numpy:<numpy code>``, ``item_loader`` TokensLoader).

Published as one set with the folder's export record (:mod:`.folder`), ``index.json`` last.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import orjson

from ..data import TokenBin
from ..errors import ExportError
from ..protocol import OutputRoot, storage_for
from ..publish import require_free
from ..spans import copy_range
from .folder import ExportFolder
from .source import combined_meta, exported_splits

LITDATA = "litdata"
LITDATA_INDEX = "index.json"
#: Token bytes per chunk by default (litdata's own default size); rounded down to whole blocks.
LITDATA_CHUNK_BYTES = 64 << 20
#: litdata's numpy dtype codes (``_NUMPY_DTYPES_MAPPING``) for slimtok's two dtypes.
LITDATA_NUMPY_CODES = {"uint16": 5, "uint32": 6}


def _write_chunk(tmp: Path, data: TokenBin, ends: np.ndarray, lo: int, hi: int) -> dict[str, int]:
    """Tokens ``[lo, hi)`` as one chunk file at ``tmp``, one item per document piece; returns the
    chunk's entry of index.json (without its filename)."""
    itemsize = data.dtype.itemsize
    inner = np.asarray(ends[np.searchsorted(ends, lo, side="right"):np.searchsorted(ends, hi, side="left")])
    cuts = np.concatenate([[lo], inner.astype(np.int64), [hi]])
    items = len(cuts) - 1
    header_bytes = 4 * (items + 2)
    offsets = header_bytes + (cuts - lo) * itemsize
    if int(offsets[-1]) >= 2**32:
        raise ExportError(f"a chunk of {int(offsets[-1]):,} bytes does not fit litdata's uint32 offsets", tmp,
                          "choose a smaller --chunk-bytes")
    storage = storage_for(tmp)
    with storage_for(data.path).open_read(data.path) as src, storage.open_write(tmp, "create") as f:
        f.write(np.uint32(items).tobytes() + offsets.astype("<u4").tobytes())
        f.flush()  # the header is in the file before the kernel appends the tokens at its descriptor
        copy_range(src.fileno(), f.fileno(), lo * itemsize, (hi - lo) * itemsize)
        storage.sync(f)
    return {"chunk_bytes": int(offsets[-1]), "chunk_size": items, "dim": hi - lo}


def export_litdata(output_root: str | os.PathLike[str], prefix: str, block_size: int,
                   splits: Sequence[str] | None = None, chunk_bytes: int = LITDATA_CHUNK_BYTES,
                   log: Callable[[str], None] = print, verify: str = "sample") -> list[Path]:
    """Write each combined split (default: all but empty ones) as litdata chunks whose blocks of
    ``block_size`` tokens are the split's consecutive windows; returns the folders. ``verify``: how much of
    the split is checked against its records first (:func:`slimtok.finished.verify_split`)."""
    if block_size < 1:
        raise ExportError(f"block_size must be positive, got {block_size}")
    root = OutputRoot(output_root)
    meta = combined_meta(root)
    written = []
    for split, data in exported_splits(root, meta, splits, verify, log, block_size, f"one block of {block_size:,}",
                                       ", or a smaller --block-size"):
        ends = data.doc_ends
        assert ends is not None  # split_bin refuses a split without its index
        itemsize = data.dtype.itemsize
        per_chunk = block_size * max(1, chunk_bytes // (block_size * itemsize))
        bounds = list(range(0, len(data), per_chunk)) + [len(data)]
        names = [f"chunk-0-{c}.bin" for c in range(len(bounds) - 1)]
        folder = root.export_dir(LITDATA, prefix, split)
        with ExportFolder(folder, LITDATA, names + [LITDATA_INDEX]) as out:
            require_free(folder, len(data) * itemsize + 8 * len(ends) + (1 << 20), f"chunking {data.path.name}")
            chunks = []
            for name, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True):
                chunks.append({**_write_chunk(out.tmp(name), data, ends, lo, hi), "filename": name})
            config = {"chunk_bytes": None, "chunk_size": None, "compression": None, "data_spec": None,
                      "data_format": [f"no_header_numpy:{LITDATA_NUMPY_CODES[str(data.dtype)]}"],
                      "encryption": None, "item_loader": "TokensLoader"}
            out.write(LITDATA_INDEX, orjson.dumps({"chunks": chunks, "config": config}, option=orjson.OPT_INDENT_2))
            out.publish()
        log(f"{folder}: {len(names)} chunk(s) of {len(data):,} {data.dtype} tokens, "
            f"{len(data) // block_size:,} blocks of {block_size}")
        written.append(folder)
    return written
