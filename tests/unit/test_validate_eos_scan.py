"""validate's eos-scan line: how many documents a loader that cuts after every eos would split,
against an independent count from the documents' texts; and the nanoGPT uint32 note."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import slimtok
from helpers.corpus import doc_line, sample_documents, write_shard
from slimtok import validate as validate_module
from slimtok.validate import split_by_eos_scan

EOS_TEXT = "<|endoftext|>"
#: documents (by position) whose text holds the eos text, and how many times
INSIDE = {3: 2, 7: 1, 19: 1}


def _texts() -> list[str]:
    texts = sample_documents(24, seed=5)
    for i, times in INSIDE.items():
        half = len(texts[i]) // 2
        texts[i] = texts[i][:half] + f" {EOS_TEXT} " * times + texts[i][half:]
    return texts


def eos_in_text(folder: Path) -> None:
    """One train shard whose documents INSIDE hold the eos text; holdouts without it."""
    write_shard(folder / "train/chunk1/example_train_0.jsonl.zst", [doc_line(t) for t in _texts()])
    for split in ("validation", "test"):
        write_shard(folder / f"{split}/chunk1/example_holdout_0.jsonl.zst",
                    [doc_line(t) for t in sample_documents(4, seed=9)])


def _validate(root: Path) -> str:
    proc = slimtok("validate", "--output-root", root)
    assert "all checks passed" in proc.stdout  # an eos inside a document is valid data
    return proc.stdout


def test_eos_scan_names_the_documents_it_would_split(tokenized_root, bpe_tokenizer):
    run = tokenized_root(eos_in_text, bpe_tokenizer, "--spawn-workers", 1, "--special-text", "parse",
                         combine=True)
    out = _validate(run.root)
    # independent: the documents whose text holds the eos text, and its occurrences
    texts = [t for t in _texts() if t]
    want_docs = sum(1 for t in texts if EOS_TEXT in t)
    want_inner = sum(t.count(EOS_TEXT) for t in texts)
    assert (want_docs, want_inner) == (len(INSIDE), sum(INSIDE.values()))
    line = next(x for x in out.splitlines() if "train.bin: eos scan" in x)
    assert f"would split {want_docs} of {len(texts)} documents ({want_inner} eos ids inside documents)" in line
    assert "gets exactly the index's document ends" in next(x for x in out.splitlines() if "val.bin: eos scan" in x)


def test_literal_special_text_keeps_the_scan_exact(tokenized_root, bpe_tokenizer):
    run = tokenized_root(eos_in_text, bpe_tokenizer, "--spawn-workers", 1, combine=True)
    out = _validate(run.root)
    assert "train.bin: eos scan: a loader that finds documents by scanning for eos gets exactly" in out


@pytest.mark.parametrize("block", [3, 5, 64])
def test_split_count_streams_across_blocks(monkeypatch, block):
    rng = np.random.default_rng(block)
    lengths = rng.integers(1, 12, size=200)
    ends = np.cumsum(lengths).astype(np.uint64)
    data = rng.integers(1, 9, size=int(ends[-1])).astype(np.uint16)
    data[ends.astype(np.int64) - 1] = 0  # every document ends with eos 0
    inner_positions = rng.choice(len(data), size=60, replace=False)
    data[inner_positions] = 0
    monkeypatch.setattr(validate_module, "SCAN_TOKENS", block)
    # independent: per document, eos ids before its last token
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    per_doc = [int(np.count_nonzero(data[s:e - 1] == 0)) for s, e in zip(starts, ends.astype(np.int64), strict=True)]
    assert split_by_eos_scan(data, ends, 0) == (sum(1 for n in per_doc if n), sum(per_doc))


@pytest.mark.parametrize("dtype", ["uint32", "uint16"])
def test_nanogpt_note_only_for_uint32(tokenized_root, bpe_tokenizer, dtype):
    run = tokenized_root({"train_shards": 1, "docs_per_shard": 6, "holdout_docs": 2}, bpe_tokenizer,
                         "--spawn-workers", 1, "--dtype", dtype, combine=True)
    out = _validate(run.root)
    assert ("stock nanoGPT reads uint16" in out) == (dtype == "uint32")
    # nanoGPT's train.py takes vocab_size from meta.pkl
    meta = pickle.loads((run.root / "meta.pkl").read_bytes())
    assert meta["vocab_size"] == 600 and meta["dtype"] == dtype
