"""slimtok.spans against plain Python slicing and joining of the same bytes."""

import os

import numpy as np
import pytest

from slimtok.protocol import DOC_TABLE_DTYPE
from slimtok.protocol.docindex import DocEnds
from slimtok.spans import ShortSource, Span, concatenate, document_spans, keep_mask


def _files(tmp_path, sizes, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i, n in enumerate(sizes):
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        paths.append(p)
    return paths


def test_concatenate_equals_joined_slices(tmp_path):
    paths = _files(tmp_path, [1000, 5, 70000])
    spans = [Span(paths[0], 10, 300), Span(paths[0], 500, 0), Span(paths[2], 0, 70000), Span(paths[1], 1, 4),
             Span(paths[0], 999, 1)]
    seen = []
    written = concatenate(spans, tmp_path / "out", on_span=seen.append)
    want = b"".join(s.path.read_bytes()[s.start:s.start + s.length] for s in spans)
    assert (tmp_path / "out").read_bytes() == want and written == len(want) and seen == spans
    with pytest.raises(FileExistsError):  # a path output is created, never overwritten
        concatenate(spans, tmp_path / "out")


def test_concatenate_falls_back_where_the_kernel_copy_is_refused(tmp_path):
    """copy_file_range and sendfile both refuse an O_APPEND destination; the read/write path copies."""
    paths = _files(tmp_path, [20000], seed=1)
    (tmp_path / "out").write_bytes(b"head")
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_APPEND)
    try:
        concatenate([Span(paths[0], 3, 19000)], fd)
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"head" + paths[0].read_bytes()[3:19003]


def test_a_short_source_is_an_error(tmp_path):
    paths = _files(tmp_path, [100])
    with pytest.raises(ShortSource):
        concatenate([Span(paths[0], 50, 100)], tmp_path / "out")


@pytest.mark.parametrize("itemsize", [2, 4])
def test_document_spans_merge_adjacent_kept_documents(tmp_path, itemsize):
    rng = np.random.default_rng(2)
    counts = rng.integers(1, 50, 40)
    counts[7] = 0  # an empty document takes no bytes and never splits a run
    table = np.zeros(len(counts), dtype=DOC_TABLE_DTYPE)
    table["tokens"] = counts
    tokens = rng.integers(0, 600, int(counts.sum())).astype(f"<u{itemsize}")
    shard = tmp_path / "s.bin"
    shard.write_bytes(tokens.tobytes())
    drop = np.array([0, 3, 4, 8, 39])
    mask = keep_mask(len(counts), drop=drop)
    spans = document_spans(shard, table, mask, itemsize)
    assert document_spans(shard, table, np.flatnonzero(mask), itemsize) == spans
    assert len(spans) == 3  # kept runs: 1-2, 5-7 (7 is empty), 9-38
    concatenate(spans, tmp_path / "out")
    ends = np.cumsum(counts)
    want = np.concatenate([tokens[e - c:e] for c, e, k in zip(counts, ends, mask, strict=True) if k])
    assert np.array_equal(np.fromfile(tmp_path / "out", dtype=f"<u{itemsize}"), want)
    assert document_spans(shard, table, None, itemsize) == [Span(shard, 0, tokens.nbytes)]
    assert document_spans(shard, table, np.zeros(len(counts), bool), itemsize) == []


def test_doc_ends_are_the_running_sums(tmp_path):
    counts = [[3, 1, 4], [], [1, 5], [9]]
    with open(tmp_path / "x.idx", "wb") as f:
        ends = DocEnds(f)
        for c in counts:
            ends.add(c)
        ends.add_absolute(np.array([30, 31]))
    flat = [c for group in counts for c in group]
    want = list(np.cumsum(flat)) + [30, 31]
    assert np.fromfile(tmp_path / "x.idx", dtype="<u8").tolist() == want
    assert ends.documents == len(want) and ends.tokens == 31
