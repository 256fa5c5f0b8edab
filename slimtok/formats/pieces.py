"""Huge lines: the text of a line too long to become one ``str`` comes as :class:`TextPieces`.

A 200 MB text with characters above U+FFFF would be an 800 MB ``str``; instead the raw line is kept
and its JSON string is decoded a piece at a time. The object around the text is parsed with the
text replaced by ``""``, which validates it and gives the source. Joined, the pieces are exactly
the text a whole-line parse gives; any line not shaped for this is parsed whole by the caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from itertools import pairwise

import orjson

from .jsonl import SURROGATES, load_object, source_of
from .streams import Buffer

_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_QUOTE_BYTE = re.compile(rb'"')
_NESTING = re.compile(rb'["\[\]{}]')
_SCALAR_END = re.compile(rb"[,}\]]")
#: An escaped newline followed by an ASCII letter, as written inside a JSON string.
_RAW_CUT = re.compile(rb"\\n[A-Za-z]")
_BACKSLASH = 0x5C
_QUOTE = 0x22


def _skip_whitespace(buf: Buffer, pos: int) -> int:
    """Index of the first byte at or after ``pos`` that is not JSON whitespace (``len(buf)`` if none)."""
    found = _WHITESPACE.match(buf, pos)
    assert found is not None  # the pattern matches the empty string too
    return found.end()


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
    pos = _skip_whitespace(line, 0)
    if pos >= len(line) or line[pos] != ord("{"):
        return None
    span = None
    while True:
        pos = _skip_whitespace(line, pos + 1)
        if pos >= len(line) or line[pos] != _QUOTE:
            return None
        key_end = _string_end(line, pos + 1)
        if key_end < 0:
            return None
        try:
            key = orjson.loads(line[pos:key_end + 1])
        except orjson.JSONDecodeError:
            return None
        colon = _skip_whitespace(line, key_end + 1)
        if colon >= len(line) or line[colon] != ord(":"):
            return None
        value = _skip_whitespace(line, colon + 1)
        if value >= len(line):
            return None
        end = _value_end(line, value)
        if end < 0:
            return None
        if key == text_key:
            if span is not None or line[value] != _QUOTE:
                return None
            span = (value + 1, end - 1)
        pos = _skip_whitespace(line, end)
        if pos >= len(line) or line[pos] != ord(","):
            return span if pos < len(line) and line[pos] == ord("}") else None


def _piece_bounds(line: Buffer, start: int, end: int, piece_bytes: int) -> list[int]:
    """Raw piece boundaries from ``start`` to ``end``, about every ``piece_bytes``.

    Each inner boundary falls right after an unescaped ``\\n`` followed by an ASCII letter: no
    escape, surrogate pair or UTF-8 sequence spans it, and the encoder's cut rule can apply there.
    """
    bounds = [start]
    pos = start
    while end - pos > piece_bytes:
        search_from = pos + piece_bytes
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
    try:  # the same repair as load_object + text_of, applied to this piece alone
        return SURROGATES.sub("\ufffd", json.loads(quoted.decode("utf-8", errors="replace")))
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
        for start, end in pairwise(self._bounds):
            yield _decode_piece(view[start:end])  # type: ignore[misc]  # validated in _lazy_text

    def __str__(self) -> str:
        return "".join(self)


#: What ``ShardReader.records`` yields as a document's text.
Text = str | TextPieces


def _lazy_text(line: Buffer, start: int, end: int, piece_bytes: int) -> TextPieces | None:
    """The text in ``line[start:end]`` as pieces, each decoded once here to validate and count it.

    None when a piece is invalid or the text is empty (the whole-line parse then names the reason).
    """
    bounds = _piece_bounds(line, start, end, piece_bytes)
    chars = 0
    view = memoryview(line)
    for a, b in pairwise(bounds):
        piece = _decode_piece(view[a:b])
        if piece is None:
            return None
        chars += len(piece)
    return TextPieces(line, bounds, chars) if chars else None


def huge_record(line: Buffer, text_key: str, spath: Sequence[str],
                piece_bytes: int) -> tuple[TextPieces, str | None] | None:
    """(text pieces, source) of a huge line, or None when it must be parsed whole.

    The object is parsed with its text replaced by ``""`` (validating it and giving the source).
    """
    span = _text_span(line, text_key)
    if span is None:
        return None
    start, end = span
    rest = load_object(b"".join((memoryview(line)[:start], memoryview(line)[end:])))
    if isinstance(rest, str) or not isinstance(rest[0], dict):
        return None
    text = _lazy_text(line, start, end, piece_bytes)
    if text is None:
        return None
    return text, (source_of(rest[0], spath) if spath else None)
