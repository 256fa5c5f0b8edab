"""Step 3: stream documents out of one shard.

Reads any format of :mod:`slimtok.formats` (JSON lines, plain or zstd/gzip/bz2/xz compressed, in
large blocks; parquet and Arrow IPC one record batch at a time) and yields the ``text_key`` string
of each record with its source (``source_key``, a dotted path such as
``meta.redpajama_set_name``). Writes nothing. A parquet or Arrow row counts as one line. The
repair and skip rules are those of :mod:`slimtok.formats.jsonl`.

A file that cannot be read to its end (missing, empty, not its format, corrupt or truncated)
raises :class:`ShardReadError` naming the file and the reason; so does any unexpected failure
on one line, naming the line. Memory is bounded by the block size plus the longest line, never by
the shard size; a line longer than the reader's ``max_line_bytes`` (a parquet/Arrow text: its UTF-8
bytes) is read past without being kept and counted as a ``line_too_long`` skip, so memory is bounded
by the block size plus that cap whatever the file holds. A line longer than :data:`HUGE_LINE_BYTES`
whose text is a string never becomes one ``str``: its text comes as :class:`TextPieces` (see
:mod:`slimtok.formats.pieces`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ObjectStoreError, ShardReadError
from .formats.jsonl import NO_SOURCE, QuickParser, load_object, source_of, text_of
from .formats.pieces import Text, TextPieces, huge_record
from .formats.registry import JSONL, PARQUET, SUFFIXES, InputFormat, format_of
from .formats.streams import Buffer, Overlong, ShardPath, data_blocks, shard_path, split_blocks
from .formats.streams import iter_lines as _stream_lines
from .protocol.records import DEFAULT_MAX_LINE_BYTES

__all__ = ["NO_SOURCE", "ShardReadError", "ShardReader", "Text", "TextPieces", "iter_lines", "source_of"]

#: Decompressed bytes per block read.
BLOCK_SIZE = 1 << 20
#: Lines longer than this (bytes) have their text decoded lazily, in pieces (see TextPieces).
HUGE_LINE_BYTES = 64 << 20
#: Raw bytes of JSON string per piece of a huge text (a piece ends at the first good cut after this).
PIECE_BYTES = 2 << 20
#: ``pause`` runs once this many lines, or this many 256-byte units of skipped lines (16 MB), pass
#: without a document; one counter weighs both.
PAUSE_EVERY = 1 << 16


def _format(path: ShardPath) -> InputFormat:
    fmt = format_of(path)
    if fmt is None:
        raise ShardReadError(path, f"not a shard format slimtok reads (supported suffixes: {', '.join(SUFFIXES)}); "
                                   "rebuild the manifest with `slimtok manifest`")
    return fmt


def iter_lines(path: str | Path) -> Iterator[Buffer]:
    """Raw lines of a JSON-lines shard, without their newline; a final line without newline counts too.

    A line inside one decompressed block comes as a memoryview of that block (no copy); a line
    that spans blocks comes as a bytearray grown in place.
    """
    path = shard_path(path)
    return _stream_lines(path, _format(path).compression, BLOCK_SIZE)


class ShardReader:
    """Documents of one shard, after skipping its first ``start_line`` lines (parquet, Arrow: rows).

    ``lines`` counts every line consumed so far (kept and skipped) and ``skipped`` counts skipped
    lines by reason, so (lines, skipped) after a document says exactly where a resume restarts.
    ``skipped`` is replaced by a new dict at each skip, so holding it is taking a snapshot.
    ``source_key`` (dotted path, empty for none) names the field :meth:`records` reports as source.
    ``pause`` (may raise, e.g. to stop on a signal) is called between lines at least every
    :data:`PAUSE_EVERY` lines (or ~16 MB of lines) that pass without a document, and (JSON lines)
    before each decompressed block after the first, so also inside a line that spans blocks.
    ``missing_text_keys`` holds the keys of the first record skipped as ``missing_text``.
    A line (a parquet/Arrow text) over ``max_line_bytes`` is skipped as ``line_too_long``, a text of
    fewer than ``min_chars`` characters as ``too_few_chars``.
    ``reading`` wraps the raw input, decompressed blocks or record batches (a worker times its reads
    apart from its parsing with it: :meth:`slimtok.worker.stats.Phases.timed`).
    """

    def __init__(self, path: str | Path, text_key: str = "text", start_line: int = 0,
                 skipped: dict[str, int] | None = None, source_key: str = "",
                 pause: Callable[[], None] | None = None, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 min_chars: int = 0, reading: Callable[[Iterator[Any]], Iterator[Any]] | None = None):
        self.path = shard_path(path)
        self.text_key = text_key
        self.start_line = start_line
        self.lines = 0
        self.skipped: dict[str, int] = dict(skipped or {})
        self.source_path = tuple(source_key.split(".")) if source_key else ()
        self.missing_text_keys: tuple[str, ...] | None = None
        self._pause = pause
        self.max_line_bytes = max_line_bytes
        self.min_chars = min_chars
        self._reading = reading or iter
        self._quiet = 0  # weight of the lines since the last document or pause
        quick = QuickParser()
        self._quick = quick.record if quick.available else None

    def documents(self) -> Iterator[str]:
        for text, _source in self.records():
            yield str(text)

    def records(self) -> Iterator[tuple[Text, str | None]]:
        """(text, source) of each kept document; source is None when no source key is set.

        The text of a line longer than HUGE_LINE_BYTES comes as :class:`TextPieces`, which keeps the
        raw line: drop it before asking for the next record.
        """
        fmt = _format(self.path)
        if fmt.layout == JSONL:
            return self._jsonl_records(fmt.compression)
        return self._columnar_records(fmt.layout)

    def missing_text_hint(self) -> str:
        """For an error message: the keys the first record without the text key has ("" if none)."""
        if self.missing_text_keys is None:
            return ""
        keys = ", ".join(repr(k) for k in self.missing_text_keys[:20]) or "none"
        return f"the first record without {self.text_key!r} has keys {keys}"

    def _short(self) -> ShardReadError:
        return ShardReadError(self.path, f"has fewer lines than the checkpoint's {self.start_line}; "
                                         "the file changed since it was first read")

    def _skip(self, reason: str, lines: int = 1, weight: int = 1) -> None:
        # Replaced, never changed in place: a reference taken after a document stays its snapshot.
        self.skipped = {**self.skipped, reason: self.skipped.get(reason, 0) + lines}
        self._quiet += weight
        if self._quiet >= PAUSE_EVERY:
            self._quiet = 0
            if self._pause is not None:
                self._pause()

    def _pausing(self, blocks: Iterator[bytes]) -> Iterator[bytes]:
        """``blocks``, with ``pause`` called before each after the first: a line that spans many
        blocks (one read past as over-long, an endless one) still reaches a pause every block, so a
        stop or a lost claim is seen within one block's reading, not at the line's end."""
        for k, block in enumerate(blocks):
            if k and self._pause is not None:
                self._pause()
            yield block

    def _after_start(self, lines: Iterator[Buffer | int | Overlong]) -> Iterator[Buffer | int | Overlong]:
        """``lines`` without the first ``start_line`` (counted in ``lines``); a run may be cut."""
        left = self.start_line
        while left:
            line = next(lines, None)
            if line is None:
                raise self._short()
            n = line if type(line) is int else 1
            used = min(n, left)
            left -= used
            self.lines += used
            if n > used:
                yield n - used
        yield from lines

    def _jsonl_records(self, compression: str) -> Iterator[tuple[Text, str | None]]:
        blocks = self._pausing(self._reading(data_blocks(self.path, compression, BLOCK_SIZE)))
        lines = self._after_start(split_blocks(blocks, self.max_line_bytes))
        for line in lines:
            if isinstance(line, int):  # a run of empty lines, counted in steps that reach each pause
                while line:
                    n = min(line, max(1, PAUSE_EVERY - self._quiet))
                    self.lines += n
                    self._skip("blank", n, n)
                    line -= n
                continue
            self.lines += 1
            if isinstance(line, Overlong):  # read past, never kept (see split_blocks)
                self._skip("line_too_long", 1, 1 + (line.size >> 8))
                continue
            size = len(line)
            try:
                record = self._record(line)
            except Exception as exc:  # one line must never take the worker down unnamed
                raise ShardReadError(self.path, f"line {self.lines}: cannot be read "
                                                f"({type(exc).__name__}: {exc})") from exc
            del line  # the record holds the text; the raw line need not outlive the parse
            if not isinstance(record, str) and len(record[0]) < self.min_chars:
                record = "too_few_chars"
            if isinstance(record, str):
                self._skip(record, 1, 1 + (size >> 8))
                continue
            self._quiet = 0
            yield record
            del record  # TextPieces keep their raw line: nothing here may outlive the consumer's use

    def _record(self, line: Buffer) -> tuple[Text, str | None] | str:
        """(text, source) of one JSON line, or the reason it is skipped."""
        key, spath = self.text_key, self.source_path
        if len(line) > HUGE_LINE_BYTES:
            huge = huge_record(line, key, spath, PIECE_BYTES)
            if huge is not None:
                return huge
        if self._quick is not None:
            found = self._quick(line, key, spath)
            if found is not None:
                return found
        loaded = load_object(line)
        if isinstance(loaded, str):
            return loaded
        obj, repaired = loaded
        # The common case first, without the full classification of text_of.
        text = obj.get(key) if type(obj) is dict and not repaired else None
        if not isinstance(text, str) or not text:
            classified = text_of(obj, key, repaired)
            if isinstance(classified, tuple):
                # missing_text is a reason only of an object; isinstance says so to the type checker
                if classified[0] == "missing_text" and self.missing_text_keys is None and isinstance(obj, dict):
                    self.missing_text_keys = tuple(obj)
                return classified[0]
            text = classified
        return text, (source_of(obj, spath) if spath else None)

    def _columnar_records(self, layout: str) -> Iterator[tuple[str, str | None]]:
        # pyarrow loads only when a columnar shard is read: JSON-lines workers never pay for it.
        import pyarrow as pa

        from .formats.columnar import arrow_batches, batch_rows, parquet_batches

        if layout == PARQUET:
            batches, skip = parquet_batches(self.path, self.text_key, self.source_path, self.start_line, self._short)
        else:
            batches, skip = arrow_batches(self.path, self.text_key), self.start_line
        self.lines = self.start_line
        batches = self._reading(batches)
        try:
            for row in batch_rows(batches, skip, self.text_key, self.source_path, self._short, self.max_line_bytes):
                self.lines += 1
                if not isinstance(row, str) and len(row[0]) < self.min_chars:
                    row = "too_few_chars"
                if isinstance(row, str):
                    self._skip(row)
                    continue
                self._quiet = 0
                yield row
        except (pa.ArrowException, OSError) as exc:
            raise ShardReadError(self.path, f"corrupt {layout} data after row {self.lines}: {exc}") from exc
        except ObjectStoreError as exc:  # an object that changed or vanished under the reader
            raise ShardReadError(self.path, exc.message) from exc
