"""Shared fixtures: tokenizers built here (no network) and SlimPajama-layout datasets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from corpus import sample_documents  # noqa: E402

# Workers are separate processes; keep each to one encoder thread as the launcher does.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small byte-level BPE (vocab 600, eos <|endoftext|>) trained on real text in a folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    import orjson

    folder = tmp_path_factory.mktemp("bpe")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sample_documents(300, seed=1), trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_bytes(orjson.dumps({"eos_token": "<|endoftext|>"}))
    return folder


@pytest.fixture(scope="session")
def qwen3_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slimtok.demo import write_qwen3_tokenizer

    return write_qwen3_tokenizer(tmp_path_factory.mktemp("qwen3"))
