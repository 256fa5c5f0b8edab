"""Huge lines: the text is decoded in pieces yet equals a whole-line parse, and encodes to the ids
of the whole document. Thresholds are shrunk so that documents of a few hundred kB take the path."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random

import numpy as np
import pytest
from tokenizers import Tokenizer

import slimtok.reader as readmod
from helpers.corpus import reference_texts, sample_documents, write_shard
from helpers.tokenizer_families import slow_qwen3
from slimtok.job import TokenizeSettings, open_job, pin_job
from slimtok.manifest import ShardEntry, write_manifest
from slimtok.reader import ShardReader, TextPieces, iter_lines
from slimtok.tokenizer import Encoder, load_tokenizer
from slimtok.worker import Worker

BACKENDS = ["tokenizers", pytest.param("fastokens", marks=pytest.mark.skipif(
    importlib.util.find_spec("fastokens") is None, reason="fastokens not installed"))]
THRESHOLD = 64 << 10
PIECE = 4 << 10


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch):
    monkeypatch.setattr(readmod, "HUGE_LINE_BYTES", THRESHOLD)
    monkeypatch.setattr(readmod, "PIECE_BYTES", PIECE)


# -- documents as raw JSON lines -------------------------------------------------------------

#: Raw JSON string contents: escapes of every kind, escaped backslashes before "n", newlines
#: before letters and before non-letters, non-BMP characters written raw and as surrogate pairs.
_FRAGMENTS = [b"\\n", b"\\nWord", b"\\n\\nabc", b"\\\\n", b"\\\\\\nx", b"\\\\\\\\nq", b'\\"', b"\\\\",
              b"\\u00e9", b"\\ud83d\\ude00", "😀".encode(), "é東".encode(), b"\\t", b"\\/", b"\\r\\n",
              b"\\n1", b"\\n ", b"\\n\\u00e9", b"\\n<|endoftext|>", b"\\n'", b" ", b"\\n\\\\"]
#: Needing repair: lone surrogates (as escapes), a reversed pair, invalid UTF-8 bytes.
_BROKEN = [b"\\ud800", b"x\\udc00y", b"\\ude00\\ud83d", b"\xff", b"\xed\xa0\x80", b"\xe6\x9d", b"\\nA\xc3"]


def raw_text(seed: int, size: int, broken: bool = False) -> bytes:
    """About ``size`` bytes of JSON string contents: real text (JSON-escaped) mixed with fragments."""
    rng = random.Random(seed)
    parts: list[bytes] = []
    total = 0
    docs = iter(sample_documents(10_000, seed=seed))
    while total < size:
        r = rng.random()
        if r < 0.3:
            part = json.dumps(next(docs), ensure_ascii=rng.random() < 0.5).encode()[1:-1]
        elif r < 0.35:
            part = b"z" * rng.randint(PIECE, 3 * PIECE)  # a run longer than a piece without newlines
        elif broken and r < 0.45:
            part = rng.choice(_BROKEN)
        else:
            part = rng.choice(_FRAGMENTS)
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def huge_line(text: bytes, source: str = "src", extra: bytes = b"") -> bytes:
    return (b'{"id": [1, {"x": "}]\\"{"}], "meta": {"redpajama_set_name": "' + source.encode() + b'"}, '
            b'"text": "' + text + b'"' + extra + b"}")


def expected_text(line: bytes) -> str:
    """The spec's rules written independently: stdlib json on the line decoded with replacement,
    lone surrogates to U+FFFD."""
    (text,) = reference_texts([line])
    return text


# -- text -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["s.jsonl", "s.jsonl.zst"])
def test_lines_spanning_many_blocks_come_out_whole(tmp_path, monkeypatch, name):
    monkeypatch.setattr(readmod, "BLOCK_SIZE", 1000)
    rng = random.Random(13)
    lines = [bytes(rng.choice(b"ab ") for _ in range(rng.choice([0, 1, 999, 1000, 1001, 7500]))) for _ in range(60)]
    data = b"\n".join(lines)  # the last line has no newline
    path = tmp_path / name
    if name.endswith(".zst"):
        write_shard(path, [data])  # adds a final newline, which ends the last line
    else:
        path.write_bytes(data)
    assert [bytes(line) for line in iter_lines(path)] == lines



@pytest.mark.parametrize("broken", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pieces_join_to_the_whole_line_text(tmp_path, seed, broken):
    lines = [huge_line(raw_text(seed, 300_000, broken))]
    path = write_shard(tmp_path / "s.jsonl.zst", lines)
    [(text, source)] = list(ShardReader(path, source_key="meta.redpajama_set_name").records())
    assert isinstance(text, TextPieces)
    pieces = list(text)
    assert len(pieces) > 20
    for before, after in itertools.pairwise(pieces):  # every boundary: after a newline, before a letter
        assert before.endswith("\n") and after[0].isascii() and after[0].isalpha()
    want = expected_text(lines[0])
    assert "".join(pieces) == want and len(text) == len(want)
    assert ("\ufffd" in want) == broken
    assert source == "src"


def test_a_line_under_the_threshold_is_a_plain_string(tmp_path):
    line = huge_line(raw_text(4, THRESHOLD // 2))
    path = write_shard(tmp_path / "s.jsonl.zst", [line])
    [(text, _)] = list(ShardReader(path).records())
    assert type(text) is str and text == expected_text(line)


def _huge_and_odd_lines() -> list[bytes]:
    big = raw_text(5, 100_000)
    return [
        huge_line(big),
        huge_line(big, extra=b', "text": "again"'),  # a repeated key: parsed whole like any line
        b'{"text": ["' + big + b'"]}',  # text_not_string
        b'["' + big + b'"]',  # not_object
        huge_line(big)[:-1],  # truncated: not_json
        huge_line(big + b"\\x"),  # an invalid escape inside the text: not_json
        huge_line(big + b"\x01"),  # a raw control character: not_json
        huge_line(big) + b" trailing",  # not_json
        b'{"other": "' + big + b'"}',  # missing_text
        b'{"other": "' + big + b'", "text": ""}',  # empty_text
        b'{"text": "' + big + b'", "meta": null}',  # no source
        b'{"text": "' + big + b'", "meta": {"redpajama_set_name": 12345678901234567890123}}',  # repaired rest
        b'  {  "te\\u0078t" :\t"' + big + b'" ,"meta":{"redpajama_set_name":"\\ud800"}  }  ',
        json.dumps({"text": "small"}).encode(),
        b"",
    ]


def test_skip_reasons_and_sources_are_those_of_whole_line_parsing(tmp_path, monkeypatch):
    lines = _huge_and_odd_lines()
    path = write_shard(tmp_path / "s.jsonl.zst", lines)
    lazy = ShardReader(path, source_key="meta.redpajama_set_name")
    got = [(str(t), type(t), s) for t, s in lazy.records()]
    monkeypatch.setattr(readmod, "HUGE_LINE_BYTES", 1 << 40)  # the whole-line path, as for small lines
    whole = ShardReader(path, source_key="meta.redpajama_set_name")
    want = list(whole.records())
    assert [(t, s) for t, _, s in got] == want
    assert [t for t, _, _ in got] == reference_texts(lines)
    assert [k for _, k, _ in got].count(TextPieces) == 4  # the well-formed huge lines took the lazy path
    assert lazy.skipped == whole.skipped and lazy.lines == whole.lines == len(lines)
    assert set(lazy.skipped) == {"text_not_string", "not_object", "not_json", "missing_text", "empty_text", "blank"}


def test_resume_across_huge_lines(tmp_path):
    lines = [b'{"text": "first"}', huge_line(raw_text(6, 80_000)), b"not json",
             huge_line(raw_text(7, 90_000, broken=True)), b'{"text": "last"}']
    path = write_shard(tmp_path / "s.jsonl.zst", lines)
    full = ShardReader(path)
    marks = [(full.lines, dict(full.skipped), str(t)) for t, _ in full.records()]
    assert [m[2] for m in marks] == reference_texts(lines)
    for k, (at, skipped, _) in enumerate(marks):
        resumed = ShardReader(path, start_line=at, skipped=skipped)
        assert list(resumed.documents()) == [m[2] for m in marks[k + 1:]]
        assert resumed.skipped == full.skipped


# -- ids --------------------------------------------------------------------------------------

def whole_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """The reference: the whole document in one tokenizers call."""
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.encode_special_tokens = True
    return tok.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", [slow_qwen3("bpe"), slow_qwen3("qwen3")])
def test_pieces_encode_to_the_whole_document_ids(tmp_path, which, backend, bpe_tokenizer, qwen3_tokenizer):
    loaded = load_tokenizer(str(bpe_tokenizer if which == "bpe" else qwen3_tokenizer))
    reference = Tokenizer.from_str(loaded.to_json())
    enc = Encoder(loaded.tokenizer, loaded.policy, "uint32", backend)
    line = huge_line(raw_text(8, 200_000, broken=True))
    path = write_shard(tmp_path / "s.jsonl.zst", [line])
    [(text, _)] = list(ShardReader(path).records())
    chunks = list(enc.encode_pieces(text))
    assert len(chunks) > 10  # the document really was cut
    want = whole_ids(reference, expected_text(line)) + [loaded.eos_token_id]
    assert np.array_equal(np.concatenate(chunks), want)


# -- end to end -------------------------------------------------------------------------------

def test_worker_tokenizes_a_shard_with_huge_lines_to_the_reference_ids(tmp_path, bpe_tokenizer):
    lines = [b'{"text": "before"}'] + [json.dumps({"text": d}).encode() for d in sample_documents(40, seed=9)]
    lines += [huge_line(raw_text(10, 150_000, broken=True)), b'{"text": "between"}',
              huge_line(raw_text(11, 120_000)), huge_line(raw_text(12, 90_000)), b"[]", b'{"text": "after"}']
    path = write_shard(tmp_path / "train" / "s.jsonl.zst", lines)
    entry = ShardEntry(id="train/s", split="train", chunk=1, index=0, path=str(path), size=path.stat().st_size)
    manifest, _ = write_manifest([entry], tmp_path / "m", tmp_path)
    root = tmp_path / "out"
    # a small tokens_per_write makes checkpoints fall right after huge documents too
    settings = TokenizeSettings(dtype="uint32", manifest=str(manifest), output_root=str(root),
                                tokenizer=str(bpe_tokenizer), tokens_per_write=5000, checkpoint_every=0,
                                backend="tokenizers")
    pin_job(settings)
    assert Worker(open_job(settings), 0).run() == 0
    [bin_file] = (root / "shards").rglob("*.bin")
    reference = Tokenizer.from_file(str(bpe_tokenizer / "tokenizer.json"))
    texts = reference_texts(lines)
    want = [i for t in texts for i in whole_ids(reference, t) + [0]]
    assert np.array_equal(np.fromfile(bin_file, dtype=np.uint32), want)
    [done] = (root / "done").rglob("*.json")
    record = json.loads(done.read_text())
    assert record["documents"] == len(texts) and record["lines"] == len(lines)
    assert record["skipped"] == {"not_object": 1}
