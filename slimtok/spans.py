"""The one way slimtok concatenates token data: byte spans of files, copied by the kernel.

A :class:`Span` is a byte range of one file. :func:`concatenate` appends spans to an output in
order with ``copy_file_range`` (a reflink on XFS/btrfs), falling back to ``sendfile`` and then
to ``pread``/``write`` where the kernel or filesystem cannot, so the bytes never pass through a
Python loop over tokens. :func:`document_spans` turns a shard's document table and the documents
to keep into the fewest spans (adjacent kept documents merge); the document index that goes with
them is written by :class:`~slimtok.protocol.docindex.DocEnds` (re-exported here). combine uses all
three; a stage that keeps some documents of one or several roots (dedup, mix) uses the same calls.
Files are opened through their :class:`~slimtok.protocol.Storage`; the copies use its POSIX fds.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .protocol import storage_for
from .protocol.docindex import DocEnds

__all__ = ["DocEnds", "ShortSource", "Span", "concatenate", "copy_range", "document_spans", "keep_mask"]

#: errnos meaning "this kernel or filesystem cannot do that copy": try the next, slower way.
#: Anything else (ENOSPC, EIO) is a real failure and propagates.
_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF}
_FALLBACK_BLOCK = 8 << 20


class ShortSource(OSError):
    """A span's file ended before the span did (truncated after it was checked)."""


@dataclass(frozen=True)
class Span:
    """``length`` bytes of ``path`` starting at byte ``start``."""

    path: Path
    start: int
    length: int


def _copy_kernel(src_fd: int, dst_fd: int, offset: int, size: int) -> int:
    """Bytes copied in the kernel from ``src_fd`` at ``offset`` (0 at the source's end)."""
    try:
        return os.copy_file_range(src_fd, dst_fd, size, offset)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    return os.sendfile(dst_fd, src_fd, offset, size)


def _copy_user(src_fd: int, dst_fd: int, offset: int, size: int) -> int:
    block = os.pread(src_fd, min(size, _FALLBACK_BLOCK), offset)
    view = memoryview(block)
    while view:
        view = view[os.write(dst_fd, view):]
    return len(block)


def copy_range(src_fd: int, dst_fd: int, offset: int, size: int) -> None:
    """Append ``size`` bytes of ``src_fd`` from ``offset`` at ``dst_fd``'s position.

    Raises :class:`ShortSource` when the source ends first, and any real OSError (ENOSPC) as is.
    """
    copy = _copy_kernel
    done = 0
    while done < size:
        try:
            n = copy(src_fd, dst_fd, offset + done, size - done)
        except OSError as exc:
            if copy is _copy_user or exc.errno not in _UNSUPPORTED:
                raise
            copy = _copy_user
            continue
        if n == 0:
            raise ShortSource(errno.EIO, f"source ended after {done} of {size} bytes")
        done += n


def concatenate(spans: Iterable[Span], out: int | os.PathLike[str],
                on_span: Callable[[Span], None] | None = None) -> int:
    """Append every span in order to ``out`` (an open fd, or a path created here, which must not
    exist); returns the bytes written. ``on_span(span)`` runs before each span is copied (e.g. to
    check it). A path ``out`` is fsync'd; an fd is left to its owner."""
    if isinstance(out, int):
        return _append(spans, out, on_span)
    storage = storage_for(Path(out))
    with storage.open_write(Path(out), "create") as f:
        written = _append(spans, f.fileno(), on_span)
        storage.sync(f)
    return written


def _append(spans: Iterable[Span], fd: int, on_span: Callable[[Span], None] | None) -> int:
    written = 0
    opened: tuple[Path, BinaryIO] | None = None  # consecutive spans of one file share one open
    try:
        for span in spans:
            if on_span is not None:
                on_span(span)
            if opened is None or opened[0] != span.path:
                if opened is not None:
                    opened[1].close()
                    opened = None
                opened = (span.path, storage_for(span.path).open_read(span.path))
            copy_range(opened[1].fileno(), fd, span.start, span.length)
            written += span.length
    finally:
        if opened is not None:
            opened[1].close()
    return written


def keep_mask(documents: int, keep: np.ndarray | Sequence[int] | None = None,
              drop: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
    """A boolean mask over ``documents``: ``keep`` (a mask or indices) or everything, minus ``drop``."""
    if keep is None:
        mask = np.ones(documents, dtype=bool)
    else:
        keep = np.asarray(keep)
        if keep.dtype == bool:
            if keep.shape != (documents,):
                raise ValueError(f"keep mask has {keep.size} entries for {documents} documents")
            mask = keep.copy()
        else:
            mask = np.zeros(documents, dtype=bool)
            mask[keep.astype(np.int64)] = True
    if drop is not None and len(drop):
        mask[np.asarray(drop, dtype=np.int64)] = False
    return mask


def document_spans(shard_path: Path, table: np.ndarray, keep: np.ndarray | Sequence[int] | None,
                   itemsize: int) -> list[Span]:
    """Spans of ``shard_path`` holding the kept documents of ``table`` (rows of
    ``protocol.DOC_TABLE_DTYPE``, or plain token counts), in order, adjacent ones merged.

    ``keep`` is a boolean mask or the indices of documents to keep (None: all)."""
    counts = np.asarray(table["tokens"] if table.dtype.names else table, dtype=np.int64)
    mask = keep_mask(len(counts), keep)
    ends = np.cumsum(counts) * itemsize
    starts = ends - counts * itemsize
    padded = np.concatenate([[False], mask, [False]])
    run_starts = np.flatnonzero(padded[1:-1] & ~padded[:-2])
    run_ends = np.flatnonzero(padded[1:-1] & ~padded[2:])
    return [Span(Path(shard_path), int(starts[a]), int(ends[b] - starts[a]))
            for a, b in zip(run_starts, run_ends, strict=True) if ends[b] > starts[a]]

