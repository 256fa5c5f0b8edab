"""An empty combined split is valid data (zero tokens): here ``train`` after ``combine --dedup``
left out every train document (each also appears in validation). Every reader takes it:
TokenBin and TokenBlocks, validate; the Megatron export leaves it out (megatron-core cannot map
an empty .bin) or, when it is named, refuses in one line; the packed export, which cannot cut a
row from it, refuses in one line naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.cli import slimtok
from helpers.corpus import doc_line, reference_ids, sample_documents, write_shard
from helpers.trainers import megatron_dataset
from slimtok.data import TokenBin, TokenBlocks
from slimtok.errors import DataError


def _train_inside_validation(ds: Path) -> None:
    docs = sample_documents(30, seed=11)
    write_shard(ds / "train/chunk1/example_train_0.jsonl.zst", [doc_line(d) for d in docs[:6]])
    write_shard(ds / "validation/chunk1/example_holdout_0.jsonl.zst", [doc_line(d) for d in docs])


@pytest.fixture
def empty_train(tokenized_root, bpe_tokenizer) -> Path:
    root = tokenized_root(_train_inside_validation, bpe_tokenizer, "--dtype", "uint32", "--quiet",
                          "--spawn-workers", "1").root
    slimtok("dedup", "--output-root", root, "--spawn-workers", 1, "--quiet")
    slimtok("combine", "--output-root", root, "--dedup", "--quiet")
    assert (root / "train.bin").stat().st_size == 0 and (root / "train.idx").stat().st_size == 0
    return root


def test_token_bin_reads_an_empty_split_as_zero_tokens_and_documents(empty_train):
    data = TokenBin(empty_train / "train.bin")
    assert len(data) == 0 and data.num_documents == 0 and data.tokens.dtype == np.uint32
    assert list(TokenBlocks(empty_train / "train.bin", block_size=4)) == []
    with pytest.raises(DataError, match="0 tokens, need more than block_size 4") as e:
        data.get_batch(2, 4, np.random.default_rng(0))
    assert str(empty_train / "train.bin") in str(e.value)


def test_validate_passes_an_empty_split(empty_train):
    run = slimtok("validate", "--output-root", empty_train)
    assert "[ok] train.bin: empty: 0 tokens and 0 documents in meta.json" in run.stdout, run.stdout
    assert "FAIL" not in run.stdout and "validate: all checks passed" in run.stdout


def test_megatron_export_leaves_an_empty_split_out_or_refuses_it_when_named(empty_train, bpe_tokenizer):
    run = slimtok("export", "megatron", "--output-root", empty_train, "--prefix", "slim")
    assert (f"{empty_train / 'train.bin'}: has 0 tokens, fewer than one token (megatron-core cannot open an "
            "empty .bin); not exported") in run.stdout, run.stdout
    assert not list((empty_train / "megatron").glob("slim_train_*"))
    val = megatron_dataset(empty_train / "megatron" / "slim_val_text_document")
    manifest = empty_train.parent / "m" / "manifest.jsonl"
    want = reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "validation")
    assert np.array_equal(np.concatenate([val[i] for i in range(len(val))]).astype(np.int64), want)
    named = slimtok("export", "megatron", "--output-root", empty_train, "--prefix", "named", "--splits", "train",
                    check=False)
    assert named.returncode != 0 and named.stderr.strip() == (
        f"error: {empty_train / 'train.bin'}: has 0 tokens, fewer than one token (megatron-core cannot open an "
        "empty .bin); leave train out of --splits"), named.stderr


def test_packed_export_of_an_empty_split_refuses_in_one_line(empty_train):
    run = slimtok("export", "packed", "--output-root", empty_train, "--seq-len", 8, check=False)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip() == f"error: {empty_train / 'train.bin'}: 0 tokens, fewer than one row of 8"
