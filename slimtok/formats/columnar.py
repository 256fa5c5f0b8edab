"""Columnar shards: parquet files and Arrow IPC files, one record batch at a time.

A row counts as one line. Parquet reads only the columns it needs and skips whole row groups on
resume; an Arrow IPC *stream* (what ``datasets.save_to_disk`` writes as ``data-*.arrow``) or IPC
file is read batch by batch, so memory is bounded by one batch, never by the shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc
import pyarrow.parquet as pq

from ..errors import ShardReadError
from .jsonl import source_of
from .streams import ShardPath, open_shard

#: Parquet rows decoded at once; memory is bounded by this and by one row group's column chunks.
PARQUET_BATCH_ROWS = 1024


def _cell_text(value: object) -> str | tuple[str, None]:
    if value is None:
        return ("missing_text", None)
    if not isinstance(value, str):
        return ("text_not_string", None)
    return value if value else ("empty_text", None)


def _require_column(path: ShardPath, names: Sequence[str], text_key: str) -> None:
    if text_key not in names:
        raise ShardReadError(path, f"has no column {text_key!r} (columns: {', '.join(names)}); pass --text-key")


def _bounded(column: pa.Array, max_bytes: int) -> tuple[pa.Array, list[bool]]:
    """``column`` with every string longer than ``max_bytes`` UTF-8 bytes nulled (so no Python
    ``str`` is ever made of it), and which rows those were. Measured by Arrow on its own buffers."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column, [False] * len(column)  # not text: classified as text_not_string, never kept
    over = pc.fill_null(pc.greater(pc.binary_length(column), max_bytes), False)
    if not pc.any(over).as_py():
        return column, [False] * len(column)
    return pc.if_else(over, pa.scalar(None, column.type), column), over.to_pylist()


def batch_rows(batches: Iterator[pa.RecordBatch], skip: int, text_key: str, source_path: Sequence[str],
               short: Callable[[], ShardReadError],
               max_bytes: int | None = None) -> Iterator[tuple[str, str | None] | str]:
    """Per row after the first ``skip``: (text, source) when kept, else the skip reason (a str).

    A text over ``max_bytes`` UTF-8 bytes (None: no cap) is skipped as ``line_too_long``.
    Raises ``short()`` when the batches hold fewer than ``skip`` rows.
    """
    source_col = source_path[0] if source_path else None
    for batch in batches:
        if skip:
            batch, skip = batch.slice(min(skip, batch.num_rows)), max(0, skip - batch.num_rows)
        column, over = batch.column(text_key), [False] * batch.num_rows
        if max_bytes is not None:
            column, over = _bounded(column, max_bytes)
        texts = column.to_pylist()
        has_source = source_col is not None and source_col in batch.schema.names
        sources = batch.column(source_col).to_pylist() if has_source else [None] * len(texts)
        for text, raw_source, too_long in zip(texts, sources, over, strict=True):
            if too_long:
                yield "line_too_long"
                continue
            result = _cell_text(text)
            if isinstance(result, str):
                yield result, (source_of(raw_source, source_path[1:]) if source_path else None)
            else:
                yield result[0]
    if skip:
        raise short()


def parquet_batches(path: ShardPath, text_key: str, source_path: Sequence[str], start_row: int,
                    short: Callable[[], ShardReadError]) -> tuple[Iterator[pa.RecordBatch], int]:
    """Record batches of the row groups at or after ``start_row``, and rows to drop from the first."""
    # Opened here, not by Arrow, so that only a regular file is ever opened (see open_shard); the
    # reader keeps the file object and closes it when it is dropped.
    f = open_shard(path)
    try:
        pf = pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as exc:
        f.close()
        raise ShardReadError(path, f"not a readable parquet file: {exc}") from exc
    names = pf.schema_arrow.names
    _require_column(path, names, text_key)
    source_col = source_path[0] if source_path and source_path[0] in names else None
    columns = [text_key] + ([source_col] if source_col and source_col != text_key else [])
    meta, skip = pf.metadata, start_row
    groups: list[int] = []
    for g in range(meta.num_row_groups):
        rows = meta.row_group(g).num_rows
        if skip >= rows and not groups:
            skip -= rows
        else:
            groups.append(g)
    if skip and not groups:
        raise short()
    return pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups, columns=columns), skip


def arrow_batches(path: ShardPath, text_key: str) -> Iterator[pa.RecordBatch]:
    """Record batches of an Arrow IPC stream (or IPC file), read from the file as they are used."""
    f = open_shard(path)
    with f:
        try:
            try:
                reader = pa.ipc.open_stream(f)
            except pa.ArrowInvalid:  # not a stream: the random-access IPC file layout
                f.seek(0)
                reader = pa.ipc.open_file(f)
                _require_column(path, reader.schema.names, text_key)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
                return
        except (pa.ArrowException, OSError) as exc:
            if f.seek(0, 2) == 0:
                raise ShardReadError(path, "empty file (0 bytes)") from exc
            raise ShardReadError(path, f"not a readable Arrow IPC file: {exc}") from exc
        _require_column(path, reader.schema.names, text_key)
        yield from reader
