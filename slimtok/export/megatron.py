"""Megatron: a combined split as megatron-core's indexed dataset, without rewriting its tokens.

Reads ``meta.json``, ``<split>.bin`` and ``<split>.idx`` of an output root (after ``combine``);
writes ``<prefix>_<split>_text_document.bin`` / ``.idx`` (one sequence per document) at
:meth:`~slimtok.protocol.OutputRoot.megatron_prefix`, each pair published together. Megatron has
no uint32 code, but uint32 ids below 2^31 are bit-identical to int32 (code 4) and uint16 has its
own code (8), so the ``.bin`` is a hard link to the split's file, or a kernel copy
(copy_file_range, a reflink on XFS/btrfs) across filesystems.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..protocol import OutputRoot, storage_for
from ..publish import PendingSet, require_free
from .folder import link_or_copy
from .source import combined_meta, exported_splits, trainer_dtype

MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_VERSION = 1
#: megatron-core's DType codes for the two dtypes slimtok writes (it has no uint32 code).
MEGATRON_CODES = {"uint16": 8, "int32": 4}
#: Entries of the document index handled at once; bounds memory for billions of documents.
INDEX_CHUNK = 1 << 22


def _index_chunks(ends: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(starts, lengths) of consecutive documents, INDEX_CHUNK at a time, as int64."""
    previous = 0
    for lo in range(0, len(ends), INDEX_CHUNK):
        chunk = np.asarray(ends[lo:lo + INDEX_CHUNK]).astype(np.int64)
        starts = np.concatenate([[previous], chunk[:-1]])
        yield starts, chunk - starts
        previous = int(chunk[-1])


def write_megatron_index(path: Path, ends: np.ndarray, dtype: str) -> None:
    """Megatron's .idx for one sequence per document at ``path`` (a new file): header, int32
    lengths, int64 byte pointers, int64 document indices 0..S; streamed in chunks."""
    count = len(ends)
    itemsize = np.dtype(dtype).itemsize
    storage = storage_for(path)
    with storage.open_write(path, "create") as f:
        f.write(MEGATRON_MAGIC + struct.pack("<QBQQ", MEGATRON_VERSION, MEGATRON_CODES[dtype], count, count + 1))
        for _starts, lengths in _index_chunks(ends):
            if lengths.size and int(lengths.max()) >= 2**31:
                raise ExportError(f"a document of {int(lengths.max()):,} tokens does not fit Megatron's int32 "
                                  "sequence length", path)
            f.write(lengths.astype("<i4").tobytes())
        for starts, _lengths in _index_chunks(ends):
            f.write((starts * itemsize).astype("<i8").tobytes())
        for lo in range(0, count + 1, INDEX_CHUNK):
            f.write(np.arange(lo, min(lo + INDEX_CHUNK, count + 1), dtype="<i8").tobytes())
        storage.sync(f)


def export_megatron(output_root: str | os.PathLike[str], prefix: str, splits: Sequence[str] | None = None,
                    log: Callable[[str], None] = print, verify: str = "sample") -> list[Path]:
    """Write ``<prefix>_<split>_text_document.{bin,idx}`` for each combined split (default: all),
    each pair published together; returns the path prefixes written. An empty split (zero tokens)
    is valid data, but megatron-core cannot map an empty ``.bin``: by default it is left out,
    saying so; named in ``splits``, it is refused. ``verify``: how much of each split's data is
    checked against its records first ("sample" or "all", :func:`slimtok.finished.verify_split`)."""
    root = OutputRoot(output_root)
    meta = combined_meta(root)
    dtype = trainer_dtype(meta.dtype, meta.vocab_size)
    written = []
    for split, data in exported_splits(root, meta, splits, verify, log, 1,
                                       "one token (megatron-core cannot open an empty .bin)"):
        assert data.doc_ends is not None  # split_bin refuses a split without its index
        base = root.megatron_prefix(prefix, split)
        bin_path, idx_path = base.with_name(base.name + ".bin"), base.with_name(base.name + ".idx")
        with PendingSet([bin_path, idx_path]) as pending:
            require_free(bin_path.parent, 20 * len(data.doc_ends) + 64, f"the index of {idx_path.name}")
            how = link_or_copy(data.path, pending.tmp(bin_path))
            write_megatron_index(pending.tmp(idx_path), data.doc_ends, dtype)
            pending.publish()
        log(f"{base}.{{bin,idx}}: {len(data.doc_ends):,} documents, {len(data):,} tokens as {dtype} "
            f"(code {MEGATRON_CODES[dtype]}), .bin by {how}")
        written.append(base)
    return written
