"""MosaicML streaming (MDS): a combined split's windows as MDS shards, what ``StreamingDataset`` reads.

Reads ``meta.json`` and ``<split>.bin`` of an output root (after ``combine``); writes, in a folder
of its own per split (:meth:`~slimtok.protocol.OutputRoot.export_dir`):

* ``shard.<nnnnn>.mds``: MDS's joint shard layout, ``uint32 n``, ``uint32 offsets[n + 1]`` (bytes
  from the file's start), the shard's config as JSON, then the samples. Each sample is one row,
  column ``tokens`` of encoding ``ndarray:<dtype>:<seq_len>`` (a static shape, so no size
  prefix): sample ``r`` is the split's tokens ``[r * seq_len, (r + 1) * seq_len)``, the rows of
  ``export packed``. The token bytes follow a header, so they are a kernel copy of the split's
  range; the last ``len % seq_len`` tokens are dropped, as in packed;
* ``index.json``: version 2 and each shard's config, ``samples`` and ``raw_data`` (basename,
  bytes), uncompressed.

Published as one set with the folder's export record (:mod:`.folder`), ``index.json`` last.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import ExportError
from ..protocol import OutputRoot, storage_for
from ..publish import require_free
from ..spans import copy_range
from .folder import ExportFolder
from .source import combined_meta, exported_splits

MDS = "mds"
MDS_INDEX = "index.json"
#: MDS's default shard size limit (bytes), which its writer records in every shard's config.
MDS_SIZE_LIMIT = 1 << 26


def _shard_config(dtype: str, seq_len: int) -> dict[str, Any]:
    """An MDS shard's config: the writer's keys, one static-shape ndarray column ``tokens``."""
    return {"version": 2, "format": "mds", "compression": None, "hashes": [], "size_limit": MDS_SIZE_LIMIT,
            "column_names": ["tokens"], "column_encodings": [f"ndarray:{dtype}:{seq_len}"],
            "column_sizes": [seq_len * np.dtype(dtype).itemsize]}


def export_mds(output_root: str | os.PathLike[str], prefix: str, seq_len: int, splits: Sequence[str] | None = None,
               log: Callable[[str], None] = print, verify: str = "sample") -> list[Path]:
    """Write each combined split (default: all with at least one row) as MDS shards of rows of
    ``seq_len`` tokens; returns the folders. ``verify``: how much of
    the split is checked against its records first (:func:`slimtok.finished.verify_split`)."""
    if seq_len < 1:
        raise ExportError(f"seq_len must be positive, got {seq_len}")
    root = OutputRoot(output_root)
    meta = combined_meta(root)
    written = []
    for split, data in exported_splits(root, meta, splits, verify, log, seq_len, f"one row of {seq_len:,}",
                                       ", or a smaller --seq-len"):
        rows = len(data) // seq_len
        dtype = str(data.dtype)
        config = _shard_config(dtype, seq_len)
        config_data = json.dumps(config, sort_keys=True).encode()  # as MDS's writer puts it in each shard
        row_bytes = config["column_sizes"][0]
        per_shard = max(1, (MDS_SIZE_LIMIT - 8 - len(config_data)) // (row_bytes + 4))
        folder = root.export_dir(MDS, prefix, split)
        firsts = list(range(0, rows, per_shard))
        names = [f"shard.{number:05d}.mds" for number in range(len(firsts))]
        with ExportFolder(folder, MDS, names + [MDS_INDEX]) as out:
            require_free(folder, rows * (row_bytes + 4) + len(names) * (len(config_data) + 8), f"sharding {split}")
            shards = []
            with storage_for(data.path).open_read(data.path) as src:
                for name, first in zip(names, firsts, strict=True):
                    count = min(per_shard, rows - first)
                    header = 4 * (count + 2) + len(config_data)
                    offsets = header + row_bytes * np.arange(count + 1, dtype=np.int64)
                    if int(offsets[-1]) >= 2**32:
                        raise ExportError(f"a row of {row_bytes:,} bytes does not fit MDS's uint32 offsets", data.path,
                                          "choose a smaller --seq-len")
                    tmp = out.tmp(name)
                    storage = storage_for(tmp)
                    with storage.open_write(tmp, "create") as f:
                        f.write(np.uint32(count).tobytes() + offsets.astype("<u4").tobytes() + config_data)
                        f.flush()  # the header is in the file before the kernel appends the rows at its descriptor
                        copy_range(src.fileno(), f.fileno(), first * row_bytes, count * row_bytes)
                        storage.sync(f)
                    shards.append({**config, "samples": count, "zip_data": None,
                                   "raw_data": {"basename": name, "bytes": int(offsets[-1]), "hashes": {}}})
            out.write(MDS_INDEX, orjson.dumps({"version": 2, "shards": shards}, option=orjson.OPT_INDENT_2))
            out.publish()
        log(f"{folder}: {rows:,} samples of {seq_len} {dtype} tokens in {len(names)} shard(s), "
            f"{len(data) - rows * seq_len:,} trailing tokens dropped")
        written.append(folder)
    return written
