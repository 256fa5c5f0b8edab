"""A stop (SIGTERM) or a lost claim is seen while the reader reads past an over-long line: the
reader's pause runs at every decompressed block, not only between lines, so a worker skipping a
line of many blocks (an endless one included) stops within one block of the request."""

from __future__ import annotations

import pytest

import slimtok.reader as readmod
from helpers.corpus import doc_line
from slimtok.reader import ShardReader


class Stop(Exception):
    pass


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.zst"])
def test_a_stop_during_an_over_long_line_is_seen_within_a_block(tmp_path, monkeypatch, suffix):
    import zstandard

    monkeypatch.setattr(readmod, "BLOCK_SIZE", 1 << 12)
    blocks = 512  # zstd hands over up to 128 KiB at a time: still many blocks
    data = doc_line("first") + b"\n" + b"x" * (blocks << 12) + b"\n" + doc_line("after") + b"\n"
    path = tmp_path / f"s{suffix}"
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if suffix.endswith(".zst") else data)
    calls = []

    def pause() -> None:  # asked to stop from the 3rd call on, as a signal handler would set
        calls.append(1)
        if len(calls) >= 3:
            raise Stop

    reader = ShardReader(path, pause=pause, max_line_bytes=1 << 12)
    records = reader.records()
    assert next(records)[0] == "first"
    with pytest.raises(Stop):
        next(records)
    assert reader.lines == 1  # stopped inside the over-long line, before it was counted
    # without a stop, the same file reads whole: the pauses change nothing
    reader = ShardReader(path, pause=lambda: None, max_line_bytes=1 << 12)
    assert [t for t, _ in reader.records()] == ["first", "after"]
    assert reader.skipped == {"line_too_long": 1}
