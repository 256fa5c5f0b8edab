"""A read-only, seekable file over ranged reads of one object, with bounded memory.

Every byte comes from ``fetch(start, end)`` (one ranged GET, conditional on the object's version,
retried by the client on transient errors). Reads are served from fixed windows of
:data:`WINDOW` bytes, of which at most two are held: the reader's and the one a look-ahead (the
zstd header scan of :mod:`slimtok.formats.streams` runs a little ahead of the decompressor) has
fetched next, so a sequential read fetches each byte once and a 16 MB object costs two GETs. A
read longer than a window is fetched in one request and not kept.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from collections.abc import Callable

#: Bytes per ranged GET of a sequential read, and per cached window.
WINDOW = 8 << 20
#: Windows held at once (see the module docstring for why two).
WINDOWS_HELD = 2


class ObjectFile(io.RawIOBase):
    """``size`` bytes of the object at ``url``, read through ``fetch(start, end) -> bytes`` (end
    exclusive, never past ``size``). Invariant: at most :data:`WINDOWS_HELD` windows are held, and
    ``requests`` counts the fetches made."""

    def __init__(self, url: str, size: int, version: str, fetch: Callable[[int, int], bytes], window: int = WINDOW):
        super().__init__()
        self.url = url
        self.size = size
        self.version = version
        self.requests = 0
        self._fetch = fetch
        self._window = window
        self._held: OrderedDict[int, bytes] = OrderedDict()
        self._pos = 0

    def __repr__(self) -> str:
        return f"<ObjectFile {self.url} ({self.size} bytes, version {self.version})>"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation(f"{self.url} is an object, not a local file")

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def _get(self, start: int, end: int) -> bytes:
        self.requests += 1
        data = self._fetch(start, end)
        if len(data) != end - start:
            raise OSError(f"{self.url}: asked for bytes {start}..{end} and got {len(data)} bytes")
        return data

    def _block(self, index: int) -> bytes:
        block = self._held.get(index)
        if block is None:
            start = index * self._window
            block = self._get(start, min(self.size, start + self._window))
            self._held[index] = block
            while len(self._held) > WINDOWS_HELD:
                self._held.popitem(last=False)
        else:
            self._held.move_to_end(index)
        return block

    def pread(self, n: int, pos: int) -> bytes:
        """Up to ``n`` bytes at ``pos`` (fewer only at the end of the object); the position stays."""
        end = min(self.size, pos + max(n, 0))
        if pos >= end:
            return b""
        if end - pos > self._window:  # a long read (a parquet column chunk): one request, not kept
            return self._get(pos, end)
        first, last = pos // self._window, (end - 1) // self._window
        pieces = []
        for index in range(first, last + 1):
            block = self._block(index)
            base = index * self._window
            pieces.append(block[max(pos, base) - base: min(end, base + len(block)) - base])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.pread(len(buffer), self._pos)
        memoryview(buffer).cast("B")[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._held.clear()
        super().close()
