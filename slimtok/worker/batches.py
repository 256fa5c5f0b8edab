"""The batching rule: how a worker groups documents for one call to its encoder.

Ordinary documents are collected until ``BATCH_CHARS`` characters or ``BATCH_DOCS`` documents; a
huge document (the reader's lazily decoded :class:`TextPieces`) is handed on alone, after the
batch before it, so document order never changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar, overload

from ..reader import TextPieces

#: Characters of text collected before one call to the encoder (larger batches gain little more).
BATCH_CHARS = 1 << 19
BATCH_DOCS = 2048

M = TypeVar("M")


@overload
def batched(records: Iterable[tuple[str, M]]) -> Iterator[tuple[list[str], list[M]]]: ...  # no huge document
@overload
def batched(records: Iterable[tuple[str | TextPieces, M]]) -> Iterator[tuple[list[str] | TextPieces, list[M]]]: ...
def batched(records: Iterable[tuple[str | TextPieces, M]]) -> Iterator[tuple[list[str] | TextPieces, list[M]]]:
    """``(texts, marks)`` batches of ``(text, mark)`` records, in order; ``texts`` is a TextPieces
    (with one mark) for a huge document."""
    texts: list[str] = []
    marks: list[M] = []
    chars = 0
    for text, mark in records:
        if isinstance(text, TextPieces):
            if texts:
                yield texts, marks
                texts, marks, chars = [], [], 0
            yield text, [mark]
            del text  # the huge raw line goes before the reader reads the next one
            continue
        texts.append(text)
        marks.append(mark)
        chars += len(text)
        if chars >= BATCH_CHARS or len(texts) >= BATCH_DOCS:
            yield texts, marks
            texts, marks, chars = [], [], 0
    if texts:
        yield texts, marks
