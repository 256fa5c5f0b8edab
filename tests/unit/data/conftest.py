"""The combined roots slimtok.data's tests read: one for a split alone, a second (another corpus,
the same tokenizer) for mixing."""

import pytest

from helpers.cli import PIPELINE_TOKENIZE
from helpers.corpus import reference_ids


@pytest.fixture(scope="module")
def combined(tokenized_root, bpe_tokenizer):
    """(output root, reference ids of train: documents in manifest order, each + eos)."""
    run = tokenized_root({"train_shards": 2, "docs_per_shard": 20, "holdout_docs": 4}, bpe_tokenizer,
                         *PIPELINE_TOKENIZE, combine=True)
    ref = reference_ids(run.manifest, bpe_tokenizer / "tokenizer.json", 0, "train")
    return run.root, ref


@pytest.fixture(scope="module")
def second(tokenized_root, bpe_tokenizer) -> tuple:
    """Another combined root of the same tokenizer: (output root, reference ids of train)."""
    run = tokenized_root({"train_shards": 1, "docs_per_shard": 20, "holdout_docs": 4, "seed": 1}, bpe_tokenizer,
                         *PIPELINE_TOKENIZE, combine=True)
    ref = reference_ids(run.manifest, bpe_tokenizer / "tokenizer.json", 0, "train")
    return run.root, ref
