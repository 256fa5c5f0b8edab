"""Step 3: stream documents out of one shard.

Reads a ``.jsonl.zst`` (one or more zstd frames), ``.jsonl.gz`` or plain ``.jsonl`` file in large
blocks and yields the ``text_key`` string of each line. Writes nothing.

Rules (the only changes slimtok makes to text):

* a line that is not valid UTF-8 is decoded with U+FFFD in place of the bad bytes;
* a lone surrogate written as a JSON escape (``"\\ud800"``) becomes U+FFFD;
* a line that is not a JSON object, lacks the key, or whose value is not a string is skipped and
  counted by reason; an empty text is skipped and counted; a blank line is counted as ``blank``.

A file that cannot be read to its end (missing, empty, not zstd, corrupt or truncated frame) raises
:class:`ShardReadError` naming the file and the reason. Memory is bounded by the block size plus
the longest line, never by the shard size.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections import Counter
from pathlib import Path
from typing import BinaryIO, Iterator

import orjson
import zstandard

BLOCK_SIZE = 1 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MAGIC_LOW = 0x184D2A50  # zstd skippable frames: 0x184D2A50..0x184D2A5F (little endian)
_SURROGATES = re.compile("[\ud800-\udfff]")


class ShardReadError(Exception):
    """A shard cannot be read; ``str()`` is one line naming the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _zstd_blocks(path: Path, f: BinaryIO) -> Iterator[bytes]:
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
        block = pending or f.read(BLOCK_SIZE)
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


def _gzip_blocks(path: Path, f: BinaryIO) -> Iterator[bytes]:
    try:
        with gzip.GzipFile(fileobj=f) as g:
            while block := g.read(BLOCK_SIZE):
                yield block
    except (OSError, EOFError, zlib.error) as exc:
        raise ShardReadError(path, f"corrupt or truncated gzip data: {exc}") from exc


def _plain_blocks(path: Path, f: BinaryIO) -> Iterator[bytes]:
    while block := f.read(BLOCK_SIZE):
        yield block


def iter_lines(path: str | Path) -> Iterator[bytes]:
    """Raw lines of a shard, without their newline; a final line without newline counts too."""
    path = Path(path)
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError as exc:
        raise ShardReadError(path, "file not found") from exc
    except IsADirectoryError as exc:
        raise ShardReadError(path, "is a directory, expected a shard file") from exc
    except PermissionError as exc:
        raise ShardReadError(path, "permission denied") from exc
    except OSError as exc:
        raise ShardReadError(path, f"cannot open: {exc.strerror or exc}") from exc
    with f:
        name = path.name
        if name.endswith(".zst"):
            blocks = _zstd_blocks(path, f)
        elif name.endswith(".gz"):
            blocks = _gzip_blocks(path, f)
        else:
            blocks = _plain_blocks(path, f)
        tail: list[bytes] = []
        try:
            for block in blocks:
                lines = block.split(b"\n")
                if tail:
                    tail.append(lines[0])
                    lines[0] = b"".join(tail)
                    tail = []
                last = lines.pop()
                if last:
                    tail.append(last)
                yield from lines
        except OSError as exc:
            raise ShardReadError(path, f"read error: {exc.strerror or exc}") from exc
        if tail:
            yield b"".join(tail)


def parse_line(line: bytes, text_key: str) -> str | tuple[str, None]:
    """The document text of one line, or ``(reason, None)`` when the line is skipped."""
    if not line.strip():
        return ("blank", None)
    repaired = False
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        # orjson refuses invalid UTF-8, lone surrogates and integers beyond 64 bits; the stdlib
        # parser, given the line decoded with replacement, accepts all three.
        try:
            obj = json.loads(line.decode("utf-8", errors="replace"))
        except ValueError:
            return ("not_json", None)
        repaired = True
    if not isinstance(obj, dict):
        return ("not_object", None)
    text = obj.get(text_key)
    if text is None and text_key not in obj:
        return ("missing_text", None)
    if not isinstance(text, str):
        return ("text_not_string", None)
    if not text:
        return ("empty_text", None)
    if repaired:
        text = _SURROGATES.sub("\ufffd", text)
    return text


class ShardReader:
    """Documents of one shard, after skipping its first ``start_line`` lines.

    ``lines`` counts every line consumed so far (kept and skipped) and ``skipped`` counts skipped
    lines by reason, so (lines, skipped) after a document says exactly where a resume restarts.
    """

    def __init__(self, path: str | Path, text_key: str = "text", start_line: int = 0,
                 skipped: dict[str, int] | None = None):
        self.path = Path(path)
        self.text_key = text_key
        self.start_line = start_line
        self.lines = 0
        self.skipped: Counter[str] = Counter(skipped or {})

    def documents(self) -> Iterator[str]:
        key = self.text_key
        lines = iter_lines(self.path)
        for _ in range(self.start_line):
            if next(lines, None) is None:
                raise ShardReadError(self.path, f"has fewer lines than the checkpoint's {self.start_line}; "
                                                "the file changed since it was first read")
            self.lines += 1
        for line in lines:
            self.lines += 1
            result = parse_line(line, key)
            if isinstance(result, str):
                yield result
            else:
                self.skipped[result[0]] += 1
