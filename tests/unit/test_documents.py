"""The per-shard document tables: one row per document, checked against an independent encoding."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import xxhash
import zstandard
from tokenizers import Tokenizer

from helpers.cli import slimtok
from helpers.corpus import doc_line, reference_texts, sample_documents, write_shard
from slimtok.protocol import DOC_TABLE_DTYPE, read_doc_table

SOURCES = ["RedPajamaC4", "RedPajamaWikipedia", "RedPajamaGithub"]


def _dataset(root, shards=3, docs=120, seed=3):
    """Shards whose documents name one of three sources, with blank, malformed and empty lines mixed in."""
    rng = random.Random(seed)
    for i in range(shards):
        lines = []
        for k, text in enumerate(sample_documents(docs, seed=seed * 100 + i)):
            lines.append(doc_line(text, rng.choice(SOURCES)))
            if k % 37 == 5:
                lines += [b"", b"not json", b'{"text": ""}', b'{"text": "no source here"}']
        write_shard(root / f"train/chunk1/example_train_{i}.jsonl.zst", lines, frames=2)
    write_shard(root / "validation/chunk1/example_holdout_0.jsonl.zst",
                [doc_line(t, "RedPajamaC4") for t in sample_documents(10, seed=99)])
    return root


def _expected_rows(path, tok: Tokenizer, eos: int):
    """(tokens, source name, xxh3-128 of the UTF-8 text) per kept document, computed the plain way."""
    raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True).read()
    rows = []
    for line in raw.split(b"\n"):
        kept = reference_texts([line])  # the line's document, if the rules keep it
        if not kept:
            continue
        text = kept[0]
        source = (json.loads(line).get("meta") or {}).get("redpajama_set_name") or "(none)"
        n = len(tok.encode(text, add_special_tokens=False).ids) + 1
        rows.append((n, source, xxhash.xxh3_128_intdigest(text.encode("utf-8"))))
    return rows


def test_tables_hold_every_document_exactly(tmp_path, bpe_tokenizer):
    ds = _dataset(tmp_path / "ds")
    slimtok("manifest", "--dataset-dir", ds, "--output-dir", tmp_path / "m")
    root = tmp_path / "out"
    slimtok("tokenize", "--dtype", "uint32", "--manifest", tmp_path / "m/manifest.jsonl", "--output-root", root,
            "--tokenizer", bpe_tokenizer, "--spawn-workers", 2, "--tokens-per-write", 300, "--checkpoint-every", 0,
            "--quiet")
    tok = Tokenizer.from_file(str(bpe_tokenizer / "tokenizer.json"))
    tok.encode_special_tokens = True
    eos = tok.token_to_id("<|endoftext|>")
    entries = [json.loads(x) for x in (tmp_path / "m/manifest.jsonl").read_text().splitlines()]
    assert DOC_TABLE_DTYPE.itemsize == 24
    for entry in entries:
        done = json.loads((root / "done" / f"{entry['id']}.json").read_text())
        table_file = root / done["table"]
        table = read_doc_table(table_file)
        raw = table_file.read_bytes()
        assert done["table_bytes"] == len(raw) == 24 * done["documents"] == 24 * len(table)
        assert done["table_sha256"] == hashlib.sha256(raw).hexdigest()
        assert int(table["tokens"].sum()) == done["tokens"]
        want = _expected_rows(entry["path"], tok, eos)
        names = done["source_names"]
        got = [(int(r["tokens"]), names[int(r["source"])], (int(r["hash_hi"]) << 64) | int(r["hash_lo"]))
               for r in table]
        assert got == want
        # every document's span in the shard ends with eos
        ids = np.fromfile(root / done["file"], dtype=np.uint32)
        ends = np.cumsum(table["tokens"].astype(np.int64))
        assert ends[-1] == ids.size and np.all(ids[ends - 1] == eos)
        assert not list((root / "documents").rglob("*.part"))
