import json

import pytest
import zstandard

from corpus import doc_line, reference_texts, write_shard
from slimtok.reader import ShardReader, ShardReadError, iter_lines


def _read(path, **kw):
    r = ShardReader(path, **kw)
    return list(r.documents()), r


def test_multi_frame_and_missing_final_newline(tmp_path):
    lines = [doc_line(f"document {i} " * 50) for i in range(200)]
    path = write_shard(tmp_path / "a.jsonl.zst", lines, frames=5)
    docs, r = _read(path)
    assert docs == [json.loads(x)["text"] for x in lines]
    assert r.lines == 200
    raw = zstandard.ZstdCompressor().compress(b"\n".join(lines))  # no trailing newline
    path.write_bytes(raw)
    assert len(_read(path)[0]) == 200


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    lines = [
        doc_line("good one"),
        b'{"text": "bad \xff\xfe bytes"}',                 # invalid UTF-8: replaced, kept
        b'{"text": "lone \\ud800 surrogate"}',             # lone surrogate escape: replaced, kept
        b'{"text": "pair \\ud83d\\ude00 ok"}',             # a valid pair stays one character
        b'not json at all',
        b'[1, 2, 3]',
        b'{"content": "no text key"}',
        b'{"text": 42}',
        b'{"text": ""}',
        b'   ',
        b'{"text": "big int", "n": 123456789012345678901234567890}',
        b'{"text": "<|endoftext|> stays text"}',
    ]
    docs, r = _read(write_shard(tmp_path / "m.jsonl.zst", lines))
    assert docs == ["good one", "bad \ufffd\ufffd bytes", "lone \ufffd surrogate", "pair \U0001F600 ok",
                    "big int", "<|endoftext|> stays text"]
    assert docs == reference_texts(lines)
    assert dict(r.skipped) == {"not_json": 1, "not_object": 1, "missing_text": 1, "text_not_string": 1,
                               "empty_text": 1, "blank": 1}
    assert r.lines == len(lines)


def test_start_line_skips_exactly(tmp_path):
    lines = [doc_line(f"d{i}") for i in range(10)]
    path = write_shard(tmp_path / "s.jsonl.zst", lines)
    docs, r = _read(path, start_line=7)
    assert docs == ["d7", "d8", "d9"] and r.lines == 10


@pytest.mark.parametrize("content,reason", [
    (None, "file not found"),
    (b"", "empty file"),
    (b'{"text": "plain json"}\n', "not a zstd file"),
])
def test_unreadable_files(tmp_path, content, reason):
    path = tmp_path / "x.jsonl.zst"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ShardReadError, match=reason) as exc:
        list(iter_lines(path))
    assert str(path) in str(exc.value)


def test_truncated_and_corrupt_zstd(tmp_path):
    lines = [doc_line(f"line {i} " + "text " * 40) for i in range(2000)]
    good = write_shard(tmp_path / "g.jsonl.zst", lines).read_bytes()
    trunc = tmp_path / "t.jsonl.zst"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(ShardReadError, match="truncated zstd stream"):
        list(iter_lines(trunc))
    corrupt = tmp_path / "c.jsonl.zst"
    bad = bytearray(good)
    bad[4:12] = b"\xff" * 8  # the frame header
    corrupt.write_bytes(bytes(bad))
    with pytest.raises(ShardReadError, match="corrupt zstd data"):
        list(iter_lines(corrupt))


def test_directory_and_unreadable(tmp_path):
    d = tmp_path / "dir.jsonl.zst"
    d.mkdir()
    with pytest.raises(ShardReadError, match="is a directory"):
        list(iter_lines(d))
