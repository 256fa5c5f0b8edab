"""Step 3: stream documents out of one shard.

Reads a ``.jsonl.zst`` (one or more zstd frames), ``.jsonl.gz`` or plain ``.jsonl`` file in large
blocks, or a ``.parquet`` file one record batch at a time (only the columns it needs), and yields
the ``text_key`` string of each record with its source (``source_key``, a dotted path such as
``meta.redpajama_set_name``). Writes nothing. A parquet row counts as one line.

Rules (the only changes slimtok makes to text):

* a line that is not valid UTF-8 is decoded with U+FFFD in place of the bad bytes;
* a lone surrogate written as a JSON escape (``"\\ud800"``) becomes U+FFFD;
* a line that is not a JSON object, lacks the key, or whose value is not a string is skipped and
  counted by reason; an empty text is skipped and counted; a blank line is counted as ``blank``.

A file that cannot be read to its end (missing, empty, not zstd, corrupt or truncated frame) raises
:class:`ShardReadError` naming the file and the reason. Memory is bounded by the block size plus
the longest line, never by the shard size. A line longer than :data:`HUGE_LINE_BYTES` whose text is
a string never becomes one ``str``: its text comes as :class:`TextPieces`, decoded a piece at a time
(a 200 MB text with characters above U+FFFF would be an 800 MB ``str``).
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator, Sequence, Union

import orjson
import zstandard

from .errors import ShardReadError

if TYPE_CHECKING:
    import pyarrow.parquet

#: A raw line or a slice of one: lines inside a block are memoryviews of it (see iter_lines).
Buffer = Union[bytes, bytearray, memoryview]
BLOCK_SIZE = 1 << 20
#: Compressed bytes per zstd call: the output (~4x) then fits the decompressor's first buffers
#: instead of growing by realloc, which copied every decompressed byte once more.
ZSTD_READ_SIZE = 256 << 10
#: Parquet rows decoded at once; memory is bounded by this and by one row group's column chunks.
PARQUET_BATCH_ROWS = 1024
#: Source name of a document whose record lacks the source key (or holds null there).
NO_SOURCE = "(none)"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MAGIC_LOW = 0x184D2A50  # zstd skippable frames: 0x184D2A50..0x184D2A5F (little endian)
_SURROGATES = re.compile("[\ud800-\udfff]")
#: Lines longer than this (bytes) have their text decoded lazily, in pieces (see TextPieces).
HUGE_LINE_BYTES = 64 << 20
#: Raw bytes of JSON string per piece of a huge text (a piece ends at the first good cut after this).
PIECE_BYTES = 2 << 20
_WHITESPACE = re.compile(rb"[ \t\r\n]*")
#: What bytes.isspace() counts as whitespace (a line of only these is "blank").
_BLANK = re.compile(rb"[ \t\n\r\x0b\x0c]*")
_QUOTE_BYTE = re.compile(rb'"')
_NESTING = re.compile(rb'["\[\]{}]')
_SCALAR_END = re.compile(rb"[,}\]]")
#: An escaped newline followed by an ASCII letter, as written inside a JSON string.
_RAW_CUT = re.compile(rb"\\n[A-Za-z]")
_BACKSLASH = 0x5C
_QUOTE = 0x22


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


def iter_lines(path: str | Path) -> Iterator[Buffer]:
    """Raw lines of a shard, without their newline; a final line without newline counts too.

    A line inside one decompressed block comes as a memoryview of that block (no copy); a line
    that spans blocks comes as a bytearray grown in place.
    """
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
        try:
            yield from _split_blocks(blocks)
        except OSError as exc:
            raise ShardReadError(path, f"read error: {exc.strerror or exc}") from exc


def _split_blocks(blocks: Iterator[bytes]) -> Iterator[Buffer]:
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
            yield view[start:end]
            start = end + 1
        if start < len(block):
            tail += view[start:]
    if tail:
        handover.append(tail)
        del tail
        yield handover.pop()


def _load_object(line: Buffer) -> tuple[object, bool] | str:
    """(parsed JSON value, whether it needed repair), or the reason the line is skipped."""
    try:
        return orjson.loads(line), False
    except orjson.JSONDecodeError:
        if _BLANK.fullmatch(line):  # checked only here: valid lines are never blank
            return "blank"
        # orjson refuses invalid UTF-8, lone surrogates and integers beyond 64 bits; the stdlib
        # parser, given the line decoded with replacement, accepts all three.
        try:
            return json.loads(str(line, "utf-8", "replace")), True
        except ValueError:
            return "not_json"


def _text_of(obj: object, text_key: str, repaired: bool) -> str | tuple[str, None]:
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


def _backslashes_before(buf: Buffer, pos: int) -> int:
    """How many backslashes directly precede ``buf[pos]`` (odd: that byte is escaped)."""
    k = pos
    while k > 0 and buf[k - 1] == _BACKSLASH:
        k -= 1
    return pos - k


def _string_end(buf: Buffer, pos: int) -> int:
    """Index of the quote closing the JSON string whose contents start at ``pos``; -1 if none.

    A backslash run never begins inside an escape (no escape but ``\\\\`` ends in a backslash), so
    the parity of the run before a quote says whether it is escaped.
    """
    while found := _QUOTE_BYTE.search(buf, pos):  # a regex, not find(): buf may be a memoryview
        quote = found.start()
        if _backslashes_before(buf, quote) % 2 == 0:
            return quote
        pos = quote + 1
    return -1


def _value_end(buf: Buffer, pos: int) -> int:
    """End (exclusive) of the JSON value starting at ``pos``, or -1; only delimits, never validates."""
    first = buf[pos]
    if first == _QUOTE:
        end = _string_end(buf, pos + 1)
        return end + 1 if end >= 0 else -1
    if first not in b"[{":
        found = _SCALAR_END.search(buf, pos)
        return found.start() if found else -1
    depth = 0
    while found := _NESTING.search(buf, pos):
        pos = found.end()
        if buf[found.start()] == _QUOTE:
            end = _string_end(buf, pos)
            if end < 0:
                return -1
            pos = end + 1
            continue
        depth += 1 if buf[found.start()] in b"[{" else -1
        if depth == 0:
            return pos
    return -1


def _text_span(line: Buffer, text_key: str) -> tuple[int, int] | None:
    """(start, end) of the contents of the one top-level string value under ``text_key``.

    None when the line is not shaped like that (not an object, key absent or repeated, value not a
    string, unterminated): the caller then parses the line whole, which gives the skip reason. The
    scan trusts the structure it sees; parsing the rest of the object afterwards validates it.
    """
    pos = _WHITESPACE.match(line, 0).end()
    if pos >= len(line) or line[pos] != ord("{"):
        return None
    span = None
    while True:
        pos = _WHITESPACE.match(line, pos + 1).end()
        if pos >= len(line) or line[pos] != _QUOTE:
            return None
        key_end = _string_end(line, pos + 1)
        if key_end < 0:
            return None
        try:
            key = orjson.loads(line[pos:key_end + 1])
        except orjson.JSONDecodeError:
            return None
        colon = _WHITESPACE.match(line, key_end + 1).end()
        if colon >= len(line) or line[colon] != ord(":"):
            return None
        value = _WHITESPACE.match(line, colon + 1).end()
        if value >= len(line):
            return None
        end = _value_end(line, value)
        if end < 0:
            return None
        if key == text_key:
            if span is not None or line[value] != _QUOTE:
                return None
            span = (value + 1, end - 1)
        pos = _WHITESPACE.match(line, end).end()
        if pos >= len(line) or line[pos] != ord(","):
            return span if pos < len(line) and line[pos] == ord("}") else None


def _piece_bounds(line: Buffer, start: int, end: int) -> list[int]:
    """Raw piece boundaries from ``start`` to ``end``, about every PIECE_BYTES.

    Each inner boundary falls right after an unescaped ``\\n`` followed by an ASCII letter: no
    escape, surrogate pair or UTF-8 sequence spans it, and the encoder's cut rule can apply there.
    """
    bounds = [start]
    pos = start
    while end - pos > PIECE_BYTES:
        search_from = pos + PIECE_BYTES
        while (found := _RAW_CUT.search(line, search_from, end)) and _backslashes_before(line, found.start()) % 2:
            search_from = found.start() + 1
        if found is None:
            break
        pos = found.start() + 2
        bounds.append(pos)
    bounds.append(end)
    return bounds


def _decode_piece(raw: Buffer) -> str | None:
    """The text of raw JSON string contents under the whole-line rules, or None if it is invalid."""
    quoted = b"".join((b'"', raw, b'"'))
    try:
        return orjson.loads(quoted)
    except orjson.JSONDecodeError:
        pass
    try:  # the same repair as _load_object + _text_of, applied to this piece alone
        return _SURROGATES.sub("\ufffd", json.loads(quoted.decode("utf-8", errors="replace")))
    except ValueError:
        return None


class TextPieces:
    """The text of one huge line, decoded a piece at a time from the raw line it keeps.

    Joined, the pieces are exactly the text a whole-line parse gives. Every boundary between two
    pieces lies right after a newline that is followed by an ASCII letter. ``len()`` is the exact
    character count. Iterating decodes the pieces again, one at a time.
    """

    def __init__(self, line: Buffer, bounds: list[int], chars: int):
        self._line = line
        self._bounds = bounds
        self._chars = chars

    def __len__(self) -> int:
        return self._chars

    def __iter__(self) -> Iterator[str]:
        view = memoryview(self._line)
        for start, end in zip(self._bounds, self._bounds[1:]):
            yield _decode_piece(view[start:end])  # type: ignore[misc]  # validated in lazy_text

    def __str__(self) -> str:
        return "".join(self)


#: What :meth:`ShardReader.records` yields as a document's text.
Text = Union[str, TextPieces]


def _lazy_text(line: Buffer, start: int, end: int) -> TextPieces | None:
    """The text in ``line[start:end]`` as pieces, each decoded once here to validate and count it.

    None when a piece is invalid or the text is empty (the whole-line parse then names the reason).
    """
    bounds = _piece_bounds(line, start, end)
    chars = 0
    view = memoryview(line)
    for a, b in zip(bounds, bounds[1:]):
        piece = _decode_piece(view[a:b])
        if piece is None:
            return None
        chars += len(piece)
    return TextPieces(line, bounds, chars) if chars else None


def _huge_record(line: Buffer, text_key: str, spath: Sequence[str]) -> tuple[TextPieces, str | None] | None:
    """(text pieces, source) of a huge line, or None when it must be parsed whole.

    The object is parsed with its text replaced by ``""`` (validating it and giving the source).
    """
    span = _text_span(line, text_key)
    if span is None:
        return None
    start, end = span
    rest = _load_object(b"".join((memoryview(line)[:start], memoryview(line)[end:])))
    if isinstance(rest, str) or not isinstance(rest[0], dict):
        return None
    text = _lazy_text(line, start, end)
    if text is None:
        return None
    return text, (source_of(rest[0], spath) if spath else None)


def source_of(value: object, path: Sequence[str]) -> str:
    """The source name at dotted ``path`` inside a record; :data:`NO_SOURCE` when absent or null."""
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return NO_SOURCE
        value = value[part]
    if type(value) is not str:
        return NO_SOURCE if value is None else _SURROGATES.sub("\ufffd", str(value))
    # A repaired line may carry lone surrogates here too, which JSON records cannot hold.
    return value if value.isascii() else _SURROGATES.sub("\ufffd", value)


def _parquet_text(value: object) -> str | tuple[str, None]:
    if value is None:
        return ("missing_text", None)
    if not isinstance(value, str):
        return ("text_not_string", None)
    return value if value else ("empty_text", None)


class ShardReader:
    """Documents of one shard, after skipping its first ``start_line`` lines (parquet: rows).

    ``lines`` counts every line consumed so far (kept and skipped) and ``skipped`` counts skipped
    lines by reason, so (lines, skipped) after a document says exactly where a resume restarts.
    ``skipped`` is replaced by a new dict at each skip, so holding it is taking a snapshot.
    ``source_key`` (dotted path, empty for none) names the field :meth:`records` reports as source.
    """

    def __init__(self, path: str | Path, text_key: str = "text", start_line: int = 0,
                 skipped: dict[str, int] | None = None, source_key: str = ""):
        self.path = Path(path)
        self.text_key = text_key
        self.start_line = start_line
        self.lines = 0
        self.skipped: dict[str, int] = dict(skipped or {})
        self.source_path = tuple(source_key.split(".")) if source_key else ()

    def documents(self) -> Iterator[str]:
        for text, _source in self.records():
            yield str(text)

    def records(self) -> Iterator[tuple[Text, str | None]]:
        """(text, source) of each kept document; source is None when no source key is set.

        The text of a line longer than HUGE_LINE_BYTES comes as :class:`TextPieces`, which keeps the
        raw line: drop it before asking for the next record.
        """
        if self.path.name.endswith(".parquet"):
            yield from self._parquet_records()
        else:
            yield from self._jsonl_records()

    def _short(self) -> ShardReadError:
        return ShardReadError(self.path, f"has fewer lines than the checkpoint's {self.start_line}; "
                                         "the file changed since it was first read")

    def _skip(self, reason: str) -> None:
        # Replaced, never changed in place: a reference taken after a document stays its snapshot.
        self.skipped = {**self.skipped, reason: self.skipped.get(reason, 0) + 1}

    def _jsonl_records(self) -> Iterator[tuple[Text, str | None]]:
        key, spath = self.text_key, self.source_path
        lines = iter_lines(self.path)
        for _ in range(self.start_line):
            if next(lines, None) is None:
                raise self._short()
            self.lines += 1
        for line in lines:
            self.lines += 1
            if len(line) > HUGE_LINE_BYTES:
                huge = _huge_record(line, key, spath)
                if huge is not None:
                    del line  # the pieces hold the line; nothing here may outlive the consumer's use
                    yield huge
                    del huge
                    continue
            loaded = _load_object(line)
            del line  # the parsed object holds the text; the raw line need not outlive the parse
            if type(loaded) is str:
                self._skip(loaded)
                continue
            obj, repaired = loaded
            # The common case first, without the full classification of _text_of.
            text = obj.get(key) if type(obj) is dict and not repaired else None
            if type(text) is not str or not text:
                text = _text_of(obj, key, repaired)
                if type(text) is tuple:
                    self._skip(text[0])
                    continue
            yield text, (source_of(obj, spath) if spath else None)

    def _parquet_records(self) -> Iterator[tuple[str, str | None]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except FileNotFoundError as exc:
            raise ShardReadError(self.path, "file not found") from exc
        except (pa.ArrowException, OSError) as exc:
            raise ShardReadError(self.path, f"not a readable parquet file: {exc}") from exc
        names = pf.schema_arrow.names
        if self.text_key not in names:
            raise ShardReadError(self.path, f"has no column {self.text_key!r} (columns: {', '.join(names)}); "
                                            "pass --text-key")
        spath = self.source_path
        source_col = spath[0] if spath and spath[0] in names else None
        columns = [self.text_key] + ([source_col] if source_col and source_col != self.text_key else [])
        groups, skip = self._parquet_groups(pf)
        self.lines = self.start_line
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups, columns=columns):
                if skip:
                    batch, skip = batch.slice(min(skip, batch.num_rows)), max(0, skip - batch.num_rows)
                texts = batch.column(self.text_key).to_pylist()
                sources = batch.column(source_col).to_pylist() if source_col else [None] * len(texts)
                for text, raw_source in zip(texts, sources):
                    self.lines += 1
                    result = _parquet_text(text)
                    if isinstance(result, str):
                        yield result, (source_of(raw_source, spath[1:]) if spath else None)
                    else:
                        self._skip(result[0])
        except (pa.ArrowException, OSError) as exc:
            raise ShardReadError(self.path, f"corrupt parquet data after row {self.lines}: {exc}") from exc

    def _parquet_groups(self, pf: "pyarrow.parquet.ParquetFile") -> tuple[list[int], int]:
        """Row groups still to read after ``start_line`` rows, and rows to drop from the first one."""
        meta, skip, groups = pf.metadata, self.start_line, []
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            if skip >= rows and not groups:
                skip -= rows
            else:
                groups.append(g)
        if skip and not groups:
            raise self._short()
        return groups, skip
