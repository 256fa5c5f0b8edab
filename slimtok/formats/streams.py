"""Compressed byte streams (zstd, gzip, bz2, xz, plain) cut into lines, streaming.

Every stream is read in blocks of about ``block_size`` decompressed bytes; memory is bounded by the
block size plus the longest line. A UTF-8 byte-order mark at the start of the data is dropped. A
file with no data, or whose data decompresses to nothing, is a :class:`ShardReadError` ("empty
file"), as is a missing, unreadable, corrupt or truncated file.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..errors import ShardReadError

#: A raw line or a slice of one: lines inside a block are memoryviews of it (see split_blocks).
Buffer = bytes | bytearray | memoryview
#: Compressed bytes per zstd call: the output (~4x) then fits the decompressor's first buffers
#: instead of growing by realloc, which copied every decompressed byte once more.
ZSTD_READ_SIZE = 256 << 10
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MAGIC_LOW = 0x184D2A50  # zstd skippable frames: 0x184D2A50..0x184D2A5F (little endian)
BOM = b"\xef\xbb\xbf"
#: A run of newlines where a line would start: each one ends an empty line.
_EMPTY_RUN = re.compile(rb"\n+")


def _zstd_blocks(path: Path, f: BinaryIO, block_size: int) -> Iterator[bytes]:
    """Decompressed data of every frame in ``f``; raises when the stream ends inside a frame."""
    head = f.read(4)
    if not head:
        raise ShardReadError(path, "empty file (0 bytes), expected zstd data")
    magic = int.from_bytes(head, "little")
    if head != ZSTD_MAGIC and not (_SKIPPABLE_MAGIC_LOW <= magic <= _SKIPPABLE_MAGIC_LOW + 15):
        raise ShardReadError(path, f"not a zstd file (starts with bytes {head.hex()}, expected {ZSTD_MAGIC.hex()})")
    dctx = zstandard.ZstdDecompressor()
    obj = dctx.decompressobj()
    pending = head
    consumed = 0
    in_frame = True
    while True:
        block = pending or f.read(ZSTD_READ_SIZE)
        pending = b""
        if not block:
            break
        try:
            out = obj.decompress(block)
        except zstandard.ZstdError as exc:
            raise ShardReadError(path, f"corrupt zstd data near compressed byte {consumed}: {exc}") from exc
        consumed += len(block)
        in_frame = not obj.eof
        if out:
            yield out
        if obj.eof:
            pending = obj.unused_data
            obj = dctx.decompressobj()
            in_frame = bool(pending)
    if in_frame:
        raise ShardReadError(path, f"truncated zstd stream: input ends inside a frame after {consumed} bytes")


def _stdlib_blocks(opener: Callable[[BinaryIO], io.BufferedIOBase], label: str,
                   errors: tuple[type[BaseException], ...]) -> Callable[[Path, BinaryIO, int], Iterator[bytes]]:
    """A block reader for a stdlib compressed file type (they share one streaming interface)."""
    def blocks(path: Path, f: BinaryIO, block_size: int) -> Iterator[bytes]:
        try:
            with opener(f) as stream:
                while block := stream.read(block_size):
                    yield block
        except errors as exc:
            raise ShardReadError(path, f"corrupt or truncated {label} data: {exc}") from exc
    return blocks


def _plain_blocks(path: Path, f: BinaryIO, block_size: int) -> Iterator[bytes]:
    while block := f.read(block_size):
        yield block


_BLOCKS = {
    "zstd": _zstd_blocks,
    "gzip": _stdlib_blocks(lambda f: gzip.GzipFile(fileobj=f), "gzip", (OSError, EOFError, zlib.error)),
    "bz2": _stdlib_blocks(bz2.BZ2File, "bz2", (OSError, EOFError)),
    "xz": _stdlib_blocks(lzma.LZMAFile, "xz", (OSError, EOFError, lzma.LZMAError)),
    "": _plain_blocks,
}


#: What a file that is not a regular file is, by its stat mode bits, for the refusal that names it.
_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_regular(mode: int) -> str | None:
    """Why a file of ``mode`` (st_mode, links followed) is not read as a shard; None for a regular file.

    Only regular files are shards: a pipe or a socket can block a reader forever and a device can
    be endless, so neither is ever read.
    """
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, expected a shard file"
    kind = next((name for test, name in _KINDS if test(mode)), f"a special file (mode {mode:o})")
    return f"is {kind}, not a regular file; only regular files are read as shards"


def _open_error(path: Path, exc: OSError) -> ShardReadError:
    if isinstance(exc, FileNotFoundError):
        return ShardReadError(path, "file not found")
    if isinstance(exc, IsADirectoryError):
        return ShardReadError(path, "is a directory, expected a shard file")
    if isinstance(exc, PermissionError):
        return ShardReadError(path, "permission denied")
    return ShardReadError(path, f"cannot open: {exc.strerror or exc}")


def check_regular(path: str | os.PathLike[str]) -> None:
    """Raise a ShardReadError naming ``path`` unless it is (a link to) a regular file; opens nothing."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise _open_error(path, exc) from exc
    problem = not_regular(mode)
    if problem:
        raise ShardReadError(path, problem)


def open_shard(path: Path) -> BinaryIO:
    """``path`` opened unbuffered for reading; every failure is a ShardReadError with the reason.

    Invariant: only a regular file is ever read. The type is checked before the open (a device is
    never opened) and again on the open descriptor, which is opened non-blocking so that a pipe
    swapped in between the two cannot block; the descriptor is made blocking again only once it
    is known to be a regular file (where the flag changes nothing anyway).
    """
    check_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(path, exc) from exc
    problem = not_regular(os.fstat(fd).st_mode)
    if problem:
        os.close(fd)
        raise ShardReadError(path, problem)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=0)


def data_blocks(path: str | Path, compression: str, block_size: int) -> Iterator[bytes]:
    """The decompressed data of ``path`` in blocks, without a leading byte-order mark."""
    path = Path(path)
    with open_shard(path) as f:
        blocks = _BLOCKS[compression](path, f, block_size)
        head = b""
        try:
            for block in blocks:  # gather the first 3 bytes, however the stream cuts them
                head += block
                if len(head) >= len(BOM):
                    break
            if not head:
                size = path.stat().st_size
                raise ShardReadError(path, "empty file (0 bytes)" if size == 0 else
                                     f"empty file: its {size} bytes decompress to nothing")
            yield head[len(BOM):] if head.startswith(BOM) else head
            yield from blocks
        except OSError as exc:
            raise ShardReadError(path, f"read error: {exc.strerror or exc}") from exc


def split_blocks(blocks: Iterator[bytes]) -> Iterator[Buffer | int]:
    """Lines of the data in ``blocks``, without newlines; a final line without newline counts too.

    An int ``n`` stands for ``n`` empty lines in a row (so a run of blank lines costs one step). A
    line inside one block comes as a memoryview of it (no copy); a line that spans blocks comes as
    a bytearray grown in place.
    """
    # A line that spans blocks is handed over through a one-item list and popped, so this frame
    # holds no reference to it while the consumer works on it (it may be a 200 MB line).
    tail = bytearray()
    handover: list[bytearray] = []
    for block in blocks:
        end = block.find(b"\n")
        if end == -1:
            tail += block  # inside a long line: append only
            continue
        view = memoryview(block)
        if tail:
            tail += view[:end]
            handover.append(tail)
            tail = bytearray()
            yield handover.pop()
        else:
            yield view[:end]
        start = end + 1
        while (end := block.find(b"\n", start)) != -1:
            if end == start:  # an empty line: take the whole run of them in one step
                run = _EMPTY_RUN.match(block, start)
                assert run is not None  # block[start] is a newline, so the run holds at least one
                yield run.end() - start
                start = run.end()
                continue
            yield view[start:end]
            start = end + 1
        if start < len(block):
            tail += view[start:]
    if tail:
        handover.append(tail)
        del tail
        yield handover.pop()


def iter_lines(path: str | Path, compression: str, block_size: int) -> Iterator[Buffer]:
    """Every raw line of ``path`` (empty ones included), without its newline."""
    for line in split_blocks(data_blocks(path, compression, block_size)):
        if isinstance(line, int):
            yield from (b"" for _ in range(line))
        else:
            yield line
