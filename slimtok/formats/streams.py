"""Compressed byte streams (zstd, gzip, bz2, xz, plain) cut into lines, streaming.

Every stream is read in blocks of about ``block_size`` decompressed bytes; memory is bounded by the
block size plus the longest line, which the cap a reader gives :func:`split_blocks` bounds. A
UTF-8 byte-order mark at the start of the data is dropped. A file with no data, or whose data
decompresses to nothing, is a :class:`ShardReadError` ("empty file"), as is a missing, unreadable,
corrupt or truncated file, and so is anything that is not a regular file (see :func:`open_shard`).

A shard is a local path or an object URL (``s3://``, ``hf://``, see :mod:`slimtok.remote`):
:func:`open_shard` is the one seam where the two part, and every reader takes what it returns.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import stat
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..errors import ObjectStoreError, ShardReadError
from ..remote import ObjectFile, is_remote, open_object, stat_object

#: A raw line or a slice of one: lines inside a block are memoryviews of it (see split_blocks).
Buffer = bytes | bytearray | memoryview
#: Compressed bytes read from a zstd file at once (then fed in stretches, see _FeedLimits).
ZSTD_READ_SIZE = 256 << 10
#: Compressed bytes per decompress call where the headers are not known (a corrupt tail): at most
#: ~64 MiB of output, at ~32,768 bytes per compressed byte.
ZSTD_STEP = 2 << 10
#: The most one zstd block decompresses to (Block_Maximum_Size).
ZSTD_BLOCK_MAX = 128 << 10
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MAGIC_LOW = 0x184D2A50  # zstd skippable frames: 0x184D2A50..0x184D2A5F (little endian)
BOM = b"\xef\xbb\xbf"
#: A shard's name: a local path, or an object URL kept as a string (``Path`` would fold its ``//``).
ShardPath = str | Path
#: A run of newlines where a line would start: each one ends an empty line.
_EMPTY_RUN = re.compile(rb"\n+")


def _zstd_bounds(pread: Callable[[int, int], bytes]) -> Iterator[tuple[int, int]]:
    """(end offset, most bytes it decompresses to) of each part of the zstd file that
    ``pread(n, offset)`` reads, in order: a frame header, a block, a checksum, a skippable frame;
    read from the headers alone (a few bytes per block, by pread). Ends at the end of the file or
    at anything that is not zstd, where the decompressor will name the fault. A block decompresses
    to at most 128 KiB (zstd's Block_Maximum_Size; a header claiming more is corrupt and refused by
    the decompressor)."""
    pos = 0
    while len(head := pread(18, pos)) >= 5:  # 18: the longest frame header
        magic = int.from_bytes(head[:4], "little")
        if _SKIPPABLE_MAGIC_LOW <= magic <= _SKIPPABLE_MAGIC_LOW + 15 and len(head) >= 8:
            pos += 8 + int.from_bytes(head[4:8], "little")
            yield pos, 0
            continue
        if head[:4] != ZSTD_MAGIC:
            return
        fhd = head[4]
        single = fhd >> 5 & 1
        pos += 5 + (not single) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
        yield pos, 0
        last = 0
        while not last:
            raw = pread(3, pos)
            if len(raw) < 3:
                return
            header = int.from_bytes(raw, "little")
            last, kind, size = header & 1, header >> 1 & 3, header >> 3
            if kind == 3:  # reserved: not zstd
                return
            pos += 3 + (1 if kind == 1 else size)  # an RLE block stores one byte
            yield pos, ZSTD_BLOCK_MAX if kind == 2 else size
        pos += 4 if fhd >> 2 & 1 else 0  # the content checksum
        yield pos, 0


class _FeedLimits:
    """Where feeding a zstd decompressor may stop so that one call yields at most ``budget`` bytes
    (plus one block): zstd's decompressor has no output limit, and a compressed byte can expand to
    ~32,768 (a 128 KiB block of one repeated byte costs 4 bytes). Past what the headers tell
    (:func:`_zstd_bounds` ended early), :data:`ZSTD_STEP` bytes at a time."""

    def __init__(self, pread: Callable[[int, int], bytes], budget: int):
        self._bounds = _zstd_bounds(pread)
        self._budget = budget
        self._end = 0
        self._known = True

    def end(self, pos: int) -> int:
        """An offset past ``pos`` up to which the bytes from ``pos`` decompress to at most the budget."""
        if pos < self._end:
            return self._end  # part of a stretch already measured against the budget
        if self._known:
            total = 0
            while total < self._budget and (item := next(self._bounds, None)) is not None:
                if item[0] > pos:
                    self._end = item[0]
                    total += item[1]
            if self._end > pos:
                return self._end
            self._known = False
        return pos + ZSTD_STEP


def _pread(f: BinaryIO) -> Callable[[int, int], bytes]:
    """``pread(n, offset)`` of an open shard: an object's own (served from its windows), else the OS's."""
    if isinstance(f, ObjectFile):
        return f.pread
    fd = f.fileno()
    return lambda n, pos: os.pread(fd, n, pos)


def shard_size(f: BinaryIO) -> int:
    """The size in bytes of an open shard (a local file or an object)."""
    return f.size if isinstance(f, ObjectFile) else os.fstat(f.fileno()).st_size


def _zstd_blocks(path: ShardPath, f: BinaryIO, block_size: int) -> Iterator[bytes]:
    """Decompressed data of every frame in ``f``, each piece at most about ``block_size`` bytes
    whatever the data (see :class:`_FeedLimits`); raises when the stream ends inside a frame."""
    head = f.read(4)
    if not head:
        raise ShardReadError(path, "empty file (0 bytes), expected zstd data")
    magic = int.from_bytes(head, "little")
    if head != ZSTD_MAGIC and not (_SKIPPABLE_MAGIC_LOW <= magic <= _SKIPPABLE_MAGIC_LOW + 15):
        raise ShardReadError(path, f"not a zstd file (starts with bytes {head.hex()}, expected {ZSTD_MAGIC.hex()})")
    f.seek(0)
    limits = _FeedLimits(_pread(f), block_size)
    dctx = zstandard.ZstdDecompressor()
    obj = dctx.decompressobj()
    consumed = 0  # offset of the next compressed byte to feed
    in_frame = True
    while block := f.read(ZSTD_READ_SIZE):
        view = memoryview(block)
        at = 0
        while at < len(block):
            stop = min(len(block), limits.end(consumed) - consumed + at)
            try:
                out = obj.decompress(view[at:stop])
            except zstandard.ZstdError as exc:
                raise ShardReadError(path, f"corrupt zstd data near compressed byte {consumed}: {exc}") from exc
            in_frame = not obj.eof
            if obj.eof:  # what follows the frame in this step is fed to the next frame's decompressor
                stop -= len(obj.unused_data)
                obj = dctx.decompressobj()
            consumed += stop - at
            at = stop
            if out:
                yield out
    if in_frame:
        raise ShardReadError(path, f"truncated zstd stream: input ends inside a frame after {consumed} bytes")


def _stdlib_blocks(opener: Callable[[BinaryIO], io.BufferedIOBase], label: str,
                   errors: tuple[type[BaseException], ...]) -> Callable[[ShardPath, BinaryIO, int], Iterator[bytes]]:
    """A block reader for a stdlib compressed file type (they share one streaming interface)."""
    def blocks(path: ShardPath, f: BinaryIO, block_size: int) -> Iterator[bytes]:
        try:
            with opener(f) as stream:
                while block := stream.read(block_size):
                    yield block
        except errors as exc:
            raise ShardReadError(path, f"corrupt or truncated {label} data: {exc}") from exc
    return blocks


def _plain_blocks(path: ShardPath, f: BinaryIO, block_size: int) -> Iterator[bytes]:
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


def _open_error(path: ShardPath, exc: OSError) -> ShardReadError:
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


def shard_path(path: str | os.PathLike[str]) -> ShardPath:
    """``path`` as readers keep it: an object URL stays the string it is, anything else is a Path."""
    return path if is_remote(path) else Path(path)  # type: ignore[return-value]


def check_listed_version(path: ShardPath, version: str) -> None:
    """Raise a ShardReadError naming the object and both versions unless the object at ``path`` still
    has the ``version`` its manifest recorded (one HEAD; nothing to check for a local file)."""
    if not version or not is_remote(path):
        return
    try:
        now = stat_object(str(path)).version
    except ObjectStoreError as exc:
        raise ShardReadError(path, exc.message) from exc
    if now != version:
        raise ShardReadError(path, f"changed since the manifest was written (the manifest lists version {version}, "
                                   f"the store now has {now}); rebuild the manifest with `slimtok manifest` "
                                   "(and use a new --output-root)")


def _open_object(url: str) -> BinaryIO:
    try:
        return open_object(url)  # type: ignore[return-value]  # an ObjectFile is a binary file
    except ObjectStoreError as exc:
        raise ShardReadError(url, exc.message) from exc


def open_shard(path: ShardPath) -> BinaryIO:
    """``path`` opened unbuffered for reading; every failure is a ShardReadError with the reason.

    An object URL opens as an :class:`~slimtok.remote.ObjectFile` (ranged reads, each one
    conditional on the version seen at the open; bounded memory).

    Invariant: only a regular file is ever read. The type is checked before the open (a device is
    never opened) and again on the open descriptor, which is opened non-blocking so that a pipe
    swapped in between the two cannot block; the descriptor is made blocking again only once it
    is known to be a regular file (where the flag changes nothing anyway).
    """
    if isinstance(path, str) and is_remote(path):
        return _open_object(path)
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
    path = shard_path(path)
    with open_shard(path) as f:
        blocks = _BLOCKS[compression](path, f, block_size)
        head = b""
        try:
            for block in blocks:  # gather the first 3 bytes, however the stream cuts them
                head += block
                if len(head) >= len(BOM):
                    break
            if not head:
                size = shard_size(f)
                raise ShardReadError(path, "empty file (0 bytes)" if size == 0 else
                                     f"empty file: its {size} bytes decompress to nothing")
            yield head[len(BOM):] if head.startswith(BOM) else head
            yield from blocks
        except OSError as exc:
            raise ShardReadError(path, f"read error: {exc.strerror or exc}") from exc
        except ObjectStoreError as exc:
            raise ShardReadError(path, exc.message) from exc


@dataclass(frozen=True)
class Overlong:
    """A line longer than the cap of :func:`split_blocks`, read past and never kept: ``size`` bytes."""

    size: int


def split_blocks(blocks: Iterator[bytes], max_line: int | None = None) -> Iterator[Buffer | int | Overlong]:
    """Lines of the data in ``blocks``, without newlines; a final line without newline counts too.

    An int ``n`` stands for ``n`` empty lines in a row (so a run of blank lines costs one step). A
    line inside one block comes as a memoryview of it (no copy); a line that spans blocks comes as
    a bytearray grown in place. A line longer than ``max_line`` bytes (None: no cap) comes as one
    :class:`Overlong`: the bytes gathered for it are dropped the moment it passes the cap and the
    rest is read past up to its newline, so memory stays below the cap plus one block however
    long the line (an endless one included).
    """
    cap = sys.maxsize if max_line is None else max_line
    # A line that spans blocks is handed over through a one-item list and popped, so this frame
    # holds no reference to it while the consumer works on it (it may be a 200 MB line).
    tail = bytearray()
    handover: list[bytearray] = []
    skipped = -1  # bytes of an over-long line read past so far; -1: not inside one
    for block in blocks:
        end = block.find(b"\n")
        if end == -1:  # inside a long line: append only, or count once it is over the cap
            if skipped >= 0:
                skipped += len(block)
            elif len(tail) + len(block) > cap:
                skipped, tail = len(tail) + len(block), bytearray()
            else:
                tail += block
            continue
        view = memoryview(block)
        if skipped >= 0:
            yield Overlong(skipped + end)
            skipped = -1
        elif tail:
            if len(tail) + end > cap:
                size, tail = len(tail) + end, bytearray()
                yield Overlong(size)
            else:
                tail += view[:end]
                handover.append(tail)
                tail = bytearray()
                yield handover.pop()
        else:
            yield view[:end] if end <= cap else Overlong(end)
        start = end + 1
        while (end := block.find(b"\n", start)) != -1:
            if end == start:  # an empty line: take the whole run of them in one step
                run = _EMPTY_RUN.match(block, start)
                assert run is not None  # block[start] is a newline, so the run holds at least one
                yield run.end() - start
                start = run.end()
                continue
            yield view[start:end] if end - start <= cap else Overlong(end - start)
            start = end + 1
        if start < len(block):
            if len(block) - start > cap:
                skipped = len(block) - start
            else:
                tail += view[start:]
    if skipped >= 0:
        yield Overlong(skipped)
    elif tail:
        handover.append(tail)
        del tail
        yield handover.pop()


def iter_lines(path: str | Path, compression: str, block_size: int) -> Iterator[Buffer]:
    """Every raw line of ``path`` (empty ones included), without its newline; no cap on a line."""
    for line in split_blocks(data_blocks(path, compression, block_size)):
        if isinstance(line, int):
            yield from (b"" for _ in range(line))
        else:
            assert not isinstance(line, Overlong)  # no cap was given
            yield line
