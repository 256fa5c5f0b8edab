import bz2
import gzip
import json
import lzma

import pytest
import zstandard

from helpers.corpus import doc_line, reference_texts, write_shard
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


# -- odd inputs: nesting, BOM, empty data, unexpected failures ---------------------------------------

def test_line_nested_too_deep_for_any_parser_is_a_skipped_malformed_line(tmp_path):
    deep = b'{"text": "x", "a": ' + b"[" * 1100 + b"]" * 1100 + b"}"
    with pytest.raises(RecursionError):  # what the stdlib fallback does with it alone
        json.loads(deep)
    lines = [doc_line("before"), deep, b"[" * 200_000, doc_line("after")]
    docs, r = _read(write_shard(tmp_path / "deep.jsonl.zst", lines))
    assert docs == ["before", "after"]
    assert r.skipped == {"not_json": 2} and r.lines == 4


def test_an_unexpected_failure_on_one_line_names_file_and_line(tmp_path, monkeypatch):
    import slimtok.reader as readmod

    def failing(line):
        if bytes(line).startswith(b'{"text": "third'):
            raise KeyError("boom")
        return real(line)

    real = readmod.load_object
    monkeypatch.setattr(readmod, "load_object", failing)
    monkeypatch.setattr(readmod.QuickParser, "available", False)  # every line through load_object
    path = write_shard(tmp_path / "u.jsonl.zst", [doc_line("first"), doc_line("second"), doc_line("third")])
    with pytest.raises(ShardReadError, match=r"u\.jsonl\.zst: line 3: cannot be read \(KeyError") as exc:
        list(ShardReader(path).records())
    assert exc.value.path == str(path)


@pytest.mark.parametrize("name", ["b.jsonl", "b.jsonl.zst", "b.jsonl.gz"])
def test_a_byte_order_mark_is_dropped_not_the_first_document(tmp_path, name):
    data = b"\xef\xbb\xbf" + doc_line("first") + b"\n" + doc_line("second") + b"\n"
    path = tmp_path / name
    if name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data[:2]) + zstandard.ZstdCompressor().compress(data[2:])
    elif name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    docs, r = _read(path)
    assert docs == ["first", "second"] and r.skipped == {}


@pytest.mark.parametrize("name,data", [
    ("e.jsonl", b""),
    ("e.jsonl.gz", gzip.compress(b"", mtime=0)),  # no timestamp: every xdist worker collects the same id
    ("e.jsonl.bz2", bz2.compress(b"")),
    ("e.jsonl.xz", lzma.compress(b"")),
    ("e.jsonl.zst", zstandard.ZstdCompressor().compress(b"")),
])
def test_a_file_that_decompresses_to_nothing_is_an_empty_file(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ShardReadError, match="empty file") as exc:
        list(ShardReader(path).records())
    assert exc.value.path == str(path)


def test_unknown_suffix_is_refused_with_the_supported_list(tmp_path):
    path = tmp_path / "x.jsonl.lz4"
    path.write_bytes(b"whatever")
    with pytest.raises(ShardReadError, match=r"x\.jsonl\.lz4: not a shard format.*\.jsonl\.zst.*\.arrow"):
        list(ShardReader(path).records())


# -- blank lines: cheap, counted exactly, and the reader pauses between them -------------------------

def test_runs_of_blank_lines_are_counted_exactly_and_resume_anywhere(tmp_path):
    lines = [b"", b"", doc_line("a"), b"", b"", b"", doc_line("b"), b" \t", b"", doc_line("c"), b"", b""]
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n".join(lines))  # no final newline: the last empty "line" is not one
    assert [bytes(x) for x in iter_lines(path)] == lines[:-1]
    full = ShardReader(path)
    marks = [(full.lines, full.skipped, text) for text, _ in full.records()]
    assert [m[2] for m in marks] == ["a", "b", "c"]
    assert full.lines == 11 and full.skipped == {"blank": 8}
    for start in range(12):
        r = ShardReader(path, start_line=start)
        docs = [t for t, _ in r.records()]
        assert docs == [m[2] for m in marks if m[0] > start]
        assert r.lines == 11 and sum(r.skipped.values()) == sum(1 for x in lines[start:-1] if not x.strip())


def test_pause_runs_between_blank_lines_and_may_stop_the_reader(tmp_path):
    blank_lines = 300_000
    path = tmp_path / "blanks.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"\n" * blank_lines + doc_line("end") + b"\n"))
    calls = []
    r = ShardReader(path, pause=lambda: calls.append(r.lines))
    assert list(r.documents()) == ["end"]
    assert r.skipped == {"blank": blank_lines}
    assert calls == [k << 16 for k in range(1, blank_lines // (1 << 16) + 1)]

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    with pytest.raises(Stop):
        list(ShardReader(path, pause=stop).records())


def test_pause_runs_between_malformed_lines(tmp_path):
    path = write_shard(tmp_path / "bad.jsonl.zst", [b"not json"] * 140_000 + [doc_line("end")])
    calls = []
    r = ShardReader(path, pause=lambda: calls.append(r.lines))
    assert list(r.documents()) == ["end"]
    # every 1 << 16 lines (the line rule), besides one before each decompressed block after the first
    # (the block rule, tests/unit/formats/test_pause_in_long_lines.py)
    assert [c for c in calls if c % (1 << 16) == 0] == [1 << 16, 2 << 16]
    assert calls == sorted(calls)


def test_a_source_value_too_deep_to_print_keeps_the_document(tmp_path):
    deep = b"[" * 1000 + b"]" * 1000
    path = write_shard(tmp_path / "s.jsonl.zst",
                       [b'{"text": "kept", "meta": {"src": ' + deep + b'}}', doc_line("next")])
    assert list(ShardReader(path, source_key="meta.src").records()) == [("kept", "(nested too deep)"),
                                                                         ("next", "(none)")]


# -- the quick (simdjson) parse gives exactly the orjson rules' records -----------------------------

NASTY_LINES = [
    doc_line("ordinary"), doc_line("ünïcode 東京 😀 \u2028"), b'  {"text": "padded"}  \t',
    b'{"text": "a", "text": "b"}',                                   # equal keys: the last one counts
    b'{"text": "a", "meta": {"redpajama_set_name": "x", "redpajama_set_name": "y"}}',
    b'\xef\xbb\xbf{"text": "after a BOM"}',                         # not JSON for orjson
    b'{"text": "lone \\ud800 surrogate"}', b'{"text": "low \\udc00 first"}',
    b'{"text": "pair \\ud83d\\ude00"}', b'{"text": "bad \xff\xfe bytes"}', b'{"text": "overlong \xc0\x80"}',
    b'{"text": "ok", "other": "bad \xff byte elsewhere"}',
    b'{"text": "ok", "meta": {"redpajama_set_name": "bad \xff source"}}',
    b'{"text": "big", "n": 123456789012345678901234567890}', b'{"text": "u64", "n": 18446744073709551615}',
    b'{"text": "nan", "x": NaN}', b'{"text": "ctrl \x01 raw"}', b'{"text": "nul \\u0000 escaped"}',
    b'{"text": "two"}{"text": "objects"}', b'{"text": "trailing"} x', b'\x0c{"text": "form feed"}',
    b'{"text": "deep", "d": ' + b"[" * 1022 + b"]" * 1022 + b"}",
    b'{"text": "deeper", "d": ' + b"[" * 1023 + b"]" * 1023 + b"}",
    b'{"text": "too deep", "d": ' + b"[" * 1100 + b"]" * 1100 + b"}",
    b'{"text": 42}', b'{"text": ""}', b'{"text": null}', b'{"content": "no text key"}', b'["text"]', b'"text"',
    b'{"te\\u0078t": "escaped key"}', b'   ', b'not json',
    b'{"text": "no meta"}', b'{"text": "null source", "meta": {"redpajama_set_name": null}}',
    b'{"text": "number source", "meta": {"redpajama_set_name": 7}}',
    b'{"text": "nested source", "meta": {"redpajama_set_name": {"a": [1, 2.5]}}}',
    b'{"text": "meta not an object", "meta": [1]}',
]


@pytest.mark.parametrize("source_key", ["", "meta.redpajama_set_name"])
def test_quick_parse_gives_the_orjson_records_and_skip_counts(tmp_path, source_key):
    from slimtok.formats.jsonl import QuickParser

    assert QuickParser().available, "pysimdjson is a dependency"
    path = write_shard(tmp_path / "nasty.jsonl.zst", NASTY_LINES * 3, frames=4)
    quick, plain = ShardReader(path, source_key=source_key), ShardReader(path, source_key=source_key)
    plain._quick = None
    assert list(quick.records()) == list(plain.records())
    assert (quick.lines, quick.skipped) == (plain.lines, plain.skipped)
    assert sum(plain.skipped.values()) >= 10
    for line in NASTY_LINES:
        assert quick._record(line) == plain._record(line), line[:60]
    # The quick path does answer for ordinary lines (and refuses the ones it cannot decide).
    parser = QuickParser()
    path_parts = tuple(source_key.split(".")) if source_key else ()
    assert parser.record(doc_line("ordinary"), "text", path_parts) == ("ordinary", "test" if source_key else None)
    assert parser.record(NASTY_LINES[3], "text", ()) is None
    assert parser.record(NASTY_LINES[5], "text", ()) is None
