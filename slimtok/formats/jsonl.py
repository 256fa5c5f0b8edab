"""JSON-lines records: parse one line, with slimtok's only repairs, and classify why one is skipped.

Rules (the only changes slimtok makes to text):

* a line that is not valid UTF-8 is decoded with U+FFFD in place of the bad bytes;
* a lone surrogate written as a JSON escape (``"\\ud800"``) becomes U+FFFD;
* a line that is not JSON (at any nesting depth: one too deep for both parsers counts as
  ``not_json``), not an object, lacks the key, or whose value is not a string is skipped and
  counted by reason; an empty text is skipped and counted; a blank line is counted as ``blank``.

:class:`QuickParser` (pysimdjson, when installed) reads the common line faster; it answers only
where its result is provably the one of :func:`load_object` + :func:`text_of` and leaves every
other line to them, so the rules above stay those of orjson and the standard library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import orjson

from .streams import Buffer

try:  # optional speed-up of the common line (see QuickParser); orjson alone gives the same records
    import simdjson
except ImportError:  # pragma: no cover - depends on the install
    simdjson = None  # type: ignore[assignment]  # the optional-import idiom: None says "not installed"

#: Source name of a document whose record lacks the source key (or holds null there).
NO_SOURCE = "(none)"
#: Source name of a document whose source value is nested too deeply to print.
DEEP_SOURCE = "(nested too deep)"
SURROGATES = re.compile("[\ud800-\udfff]")
#: What bytes.isspace() counts as whitespace (a line of only these is "blank").
_BLANK = re.compile(rb"[ \t\n\r\x0b\x0c]*")
#: First byte of a UTF-8 byte-order mark, which simdjson skips at the start and orjson refuses.
_BOM_LEAD = 0xEF


class QuickParser:
    """(text, source) of an ordinary JSON line with simdjson's lazy parse, or None to say "ask
    :func:`load_object`".

    It answers only for a line simdjson parses (it refuses invalid UTF-8 in what it reads, lone
    surrogate escapes, integers beyond 64 bits, NaN, depth >= 1024, like orjson) that starts with
    no byte-order mark (simdjson skips one, orjson refuses it), is an object whose keys on the
    way to the text and to the source are each unique (simdjson finds the first of equal keys,
    orjson keeps the last), holds a non-empty string under the text key and, if a source path is
    given, a string there. Anything else gets None and goes through the orjson rules unchanged.
    One parser per reader: simdjson reuses its buffers, so one parser serves one thread, and its
    next line can be parsed only once nothing refers to the last (only plain strings leave here).
    """

    def __init__(self) -> None:
        self._parser: simdjson.Parser | None = simdjson.Parser() if simdjson is not None else None

    @property
    def available(self) -> bool:
        return self._parser is not None

    def record(self, line: Buffer, text_key: str, source_path: Sequence[str]) -> tuple[str, str | None] | None:
        if not line or line[0] == _BOM_LEAD:
            return None
        try:
            obj = self._parser.parse(line)  # type: ignore[union-attr]  # asked only when `available`
        except (ValueError, RuntimeError):  # not JSON, or beyond simdjson's limits: orjson decides
            return None
        try:
            text = _unique_get(obj, text_key)
            if type(text) is not str or not text:
                return None
            if not source_path:
                return text, None
            value: object = obj
            for part in source_path:
                value = _unique_get(value, part)
            return (text, value) if type(value) is str else None
        except UnicodeDecodeError:  # invalid UTF-8 inside a string it reads: the repair rule applies
            return None


def _unique_get(obj: object, key: str) -> object:
    """``obj[key]`` of a simdjson object whose keys are unique, else None."""
    if type(obj) is not simdjson.Object:
        return None
    if len(set(obj.keys())) != len(obj):
        return None
    return obj.get(key)


def load_object(line: Buffer) -> tuple[object, bool] | str:
    """(parsed JSON value, whether it needed repair), or the reason the line is skipped."""
    try:
        return orjson.loads(line), False
    except orjson.JSONDecodeError:
        if _BLANK.fullmatch(line):  # checked only here: valid lines are never blank
            return "blank"
        # orjson refuses invalid UTF-8, lone surrogates and integers beyond 64 bits; the stdlib
        # parser, given the line decoded with replacement, accepts all three. Nesting too deep
        # for orjson is too deep for the stdlib parser's recursion as well.
        try:
            return json.loads(str(line, "utf-8", "replace")), True
        except (ValueError, RecursionError):
            return "not_json"


def text_of(obj: object, text_key: str, repaired: bool) -> str | tuple[str, None]:
    """The text under ``text_key``, or (skip reason, None)."""
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
        text = SURROGATES.sub("\ufffd", text)
    return text


def source_of(value: object, path: Sequence[str]) -> str:
    """The source name at dotted ``path`` inside a record; :data:`NO_SOURCE` when absent or null."""
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return NO_SOURCE
        value = value[part]
    if type(value) is not str:
        if value is None:
            return NO_SOURCE
        try:
            return SURROGATES.sub("\ufffd", str(value))
        except RecursionError:  # orjson parses deeper than str() can print
            return DEEP_SOURCE
    # A repaired line may carry lone surrogates here too, which JSON records cannot hold.
    return value if value.isascii() else SURROGATES.sub("\ufffd", value)
