"""Packed rows: a combined split's stream cut into rows of exactly ``seq_len`` tokens, in order.

Reads ``meta.json`` and ``<split>.bin`` of an output root; writes ``part-NNNNN.parquet`` (column
``input_ids``, fixed-size lists) or ``part-NNNNN.npy`` (2-D arrays) and ``manifest.json``
listing each file's rows and sha256, under :meth:`~slimtok.protocol.OutputRoot.packed_dir` or a
folder given. The last ``len % seq_len`` tokens are dropped and counted. With ``ranks`` the parts
all hold the same rows and their count is a multiple of ``ranks``, so every rank reading
``files[rank::ranks]`` gets as many rows (the rows that would not divide evenly are dropped, and
counted, too). With ``document_ends`` (parquet) a ``document_ends`` column lists each row's
document ends, offsets in (0, seq_len] from the exact ends of ``<split>.idx``. The parts and their
manifest are published together (the manifest last), so a rerun replaces an interrupted export.
An export replaces or removes only the parts the folder's earlier manifest lists; any other file
of the folder (a foreign ``part-*.parquet`` too) is left, or refused when the export would need its name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from ..errors import ExportError
from ..finished import checksum_of
from ..protocol import OutputRoot, PackedManifest, storage_for
from ..publish import PendingSet, remove_stale, require_free
from .folder import npy_header, write_blocks
from .source import combined_meta, split_bin, trainer_dtype

PACKED_FORMATS = ("parquet", "npy")
PACKED_MANIFEST = "manifest.json"
#: Packed rows per file by default: about 512 MiB of ids.
PACKED_FILE_BYTES = 512 << 20
PARQUET_ROW_GROUP_BYTES = 64 << 20


def _file_sha256(path: Path) -> str:
    with storage_for(path).open_read(path) as f:
        return checksum_of(f, os.fstat(f.fileno()).st_size, "sha256")


def _write_npy(tmp: Path, rows: np.ndarray) -> None:
    """The bytes numpy's ``save`` (and ``open_memmap``) give, written through the storage."""
    step = max(1, PARQUET_ROW_GROUP_BYTES // max(1, rows.shape[1] * rows.itemsize))
    write_blocks(tmp, (rows[lo:lo + step] for lo in range(0, len(rows), step)), npy_header(rows.dtype, rows.shape))


def row_document_ends(ends: np.ndarray, seq_len: int, first_row: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a list per row for rows ``first_row ..`` (``count`` of them): the
    document ends inside each row, as offsets in (0, seq_len] from the row's first token."""
    lo, hi = first_row * seq_len, (first_row + count) * seq_len
    inside = np.asarray(ends[np.searchsorted(ends, lo, side="right"):np.searchsorted(ends, hi, side="right")])
    inside = inside.astype(np.int64) - lo
    row = (inside - 1) // seq_len  # the row holding the document's last token
    offsets = np.searchsorted(row, np.arange(count + 1), side="left")
    return offsets.astype(np.int32), (inside - row * seq_len).astype(np.int32)


def _write_parquet(tmp: Path, rows: np.ndarray, first_row: int = 0, ends: np.ndarray | None = None) -> None:
    """pyarrow writes into the stream of ``tmp`` created exclusively through the storage, not into a
    file it opens by name (which would follow a link planted there). With ``ends`` (the split's
    document index), a ``document_ends`` column too; ``first_row`` is the part's first row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    storage = storage_for(tmp)
    seq_len = rows.shape[1]
    fields = [pa.field("input_ids", pa.list_(pa.from_numpy_dtype(rows.dtype), seq_len))]
    if ends is not None:
        fields.append(pa.field("document_ends", pa.list_(pa.int32())))
    schema = pa.schema(fields)
    step = max(1, PARQUET_ROW_GROUP_BYTES // max(1, seq_len * rows.itemsize))
    with storage.open_write(tmp, "create") as f:
        with pq.ParquetWriter(f, schema) as writer:
            for lo in range(0, len(rows), step):
                block = np.ascontiguousarray(rows[lo:lo + step])
                columns = {"input_ids": pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), seq_len)}
                if ends is not None:
                    offsets, values = row_document_ends(ends, seq_len, first_row + lo, len(block))
                    columns["document_ends"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
                writer.write_table(pa.table(columns, schema=schema))
        storage.sync(f)


def _recorded_parts(manifest_path: Path) -> set[str]:
    """The part files an earlier export into this folder recorded writing (its manifest's
    ``files``), the only files an export replaces or removes. A manifest.json that is not a packed
    export's is refused rather than replaced: no export recorded writing it."""
    try:
        raw = storage_for(manifest_path).read_whole(manifest_path)
    except FileNotFoundError:
        return set()
    try:
        listed = orjson.loads(raw)["files"]
        names = {entry["file"] for entry in listed}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ExportError("is not the manifest of a packed export (no list of files), so it is not replaced",
                          manifest_path, "move it away, or pass another --output-dir") from None
    # a listed name is a plain part name of this folder, never a path elsewhere
    return {n for n in names if isinstance(n, str) and n.startswith("part-") and n == Path(n).name}


def export_packed(output_root: str | os.PathLike[str], seq_len: int, fmt: str = "parquet", split: str = "train",
                  output_dir: str | os.PathLike[str] | None = None, rows_per_file: int | None = None,
                  log: Callable[[str], None] = print, ranks: int = 1, document_ends: bool = False,
                  verify: str = "sample") -> Path:
    """Cut ``split`` into rows of ``seq_len`` tokens and write them in ``fmt``, the parts and their
    manifest published together; returns the manifest. ``ranks`` > 1 balances the parts across
    that many ranks; ``document_ends`` (parquet) adds each row's document ends. ``verify``: how much
    of the split's data is checked against its records first ("sample" or "all",
    :func:`slimtok.finished.verify_split`)."""
    if fmt not in PACKED_FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(PACKED_FORMATS)}")
    if document_ends and fmt != "parquet":
        raise ExportError("a document_ends column needs --format parquet (an npy part holds one array)")
    if ranks < 1:
        raise ExportError(f"ranks must be positive, got {ranks}")
    if seq_len < 1:
        raise ExportError(f"seq_len must be positive, got {seq_len}")
    root = OutputRoot(output_root)
    meta = combined_meta(root)
    data = split_bin(root, meta, split, verify)
    dtype = trainer_dtype(meta.dtype, meta.vocab_size)
    total_rows = len(data) // seq_len
    if total_rows == 0:
        raise ExportError(f"{len(data)} tokens, fewer than one row of {seq_len}", data.path)
    per_file = rows_per_file or max(1, PACKED_FILE_BYTES // (seq_len * np.dtype(dtype).itemsize))
    if ranks > 1:
        per_rank = total_rows // ranks
        if per_rank == 0:
            raise ExportError(f"{total_rows} rows of {seq_len}, fewer than one per rank of {ranks}", data.path)
        files_per_rank = -(-per_rank // per_file)
        per_file = per_rank // files_per_rank  # every part as long, so files[rank::ranks] are equal
        total_rows = ranks * files_per_rank * per_file
    rows = data.tokens[:total_rows * seq_len].view(dtype).reshape(total_rows, seq_len)
    folder = Path(output_dir) if output_dir else root.packed_dir(split, seq_len, fmt)
    manifest_path = folder / PACKED_MANIFEST
    recorded = _recorded_parts(manifest_path)
    names = [f"part-{number:05d}.{fmt}" for number in range(-(-total_rows // per_file))]
    foreign = [name for name in names if name not in recorded and storage_for(folder).exists(folder / name)]
    if foreign:
        raise ExportError(f"holds {foreign[0]}, which no earlier export there recorded writing (its {PACKED_MANIFEST} "
                          "does not list it), so it is not replaced", folder,
                          "move it away, or pass another --output-dir")
    files = []
    with PendingSet([manifest_path]) as pending:  # the manifest is renamed last, old one removed first
        pending.partners.append(manifest_path)
        remove_stale(folder, [f"part-*.{fmt}"])  # temporary parts of a killed export, whatever their number
        require_free(folder, rows.nbytes + (64 << 10), f"packing {data.path.name}")
        for number, lo in zip(range(len(names)), range(0, total_rows, per_file), strict=True):
            path = folder / names[number]
            part = rows[lo:lo + per_file]
            pending.add(path, partner=False)
            tmp = pending.tmp(path)
            if fmt == "npy":
                _write_npy(tmp, part)
            else:
                _write_parquet(tmp, part, lo, data.doc_ends if document_ends else None)
            files.append({"file": path.name, "first_row": lo, "rows": len(part),
                          "bytes": storage_for(tmp).stat(tmp).size, "sha256": _file_sha256(tmp)})
        info = meta.splits[split]
        manifest = PackedManifest(format=fmt, seq_len=seq_len, dtype=dtype, split=split, source=data.path.name,
                                  source_sha256=info.get("sha256"), source_tokens=len(data), rows=total_rows,
                                  dropped_tail_tokens=len(data) - total_rows * seq_len,
                                  eos_token_id=meta.eos_token_id, tokenizer_sha256=meta.tokenizer_sha256, files=files,
                                  ranks=ranks, document_ends=document_ends)
        with storage_for(folder).open_write(pending.tmp(manifest_path), "create") as f:
            f.write(manifest.to_json())
            storage_for(folder).sync(f)
        # only parts the earlier export recorded: any other file of the folder is not the export's to delete
        pending.publish(obsolete=[folder / name for name in sorted(recorded - set(names))])
    log(f"{folder}: {total_rows:,} rows of {seq_len} tokens in {len(files)} {fmt} file(s), "
        f"{manifest.dropped_tail_tokens:,} trailing tokens dropped")
    return manifest_path
