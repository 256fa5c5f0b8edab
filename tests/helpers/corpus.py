"""Test data: documents of real text, SlimPajama-layout shards, and a reference tokenization
computed the plain way (one-shot zstd, stdlib json, one ``encode`` call per document)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import zstandard

from slimtok.demo import stdlib_documents

_POOL: list[str] = []


def sample_documents(n: int, seed: int = 0) -> list[str]:
    """``n`` documents cut from the standard library's sources (1–3 kB each), deterministic."""
    if not _POOL:
        for text in stdlib_documents(3_000_000):
            _POOL.extend(text[i:i + 2500] for i in range(0, len(text), 2500))
    rng = random.Random(seed)
    return [rng.choice(_POOL)[: rng.randint(200, 2500)] for _ in range(n)]


def write_bpe_tokenizer(folder: Path, seed: int = 1) -> Path:
    """A small byte-level BPE (vocab 600, eos <|endoftext|>, pad <|pad|>) trained on 300 real
    documents drawn with ``seed`` into ``folder`` (tokenizer.json + tokenizer_config.json); two
    seeds give tokenizers that differ only in their merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sample_documents(300, seed=seed), trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}, separators=(",", ":")))
    return folder


def write_shard(path: Path, lines: Iterable[bytes], frames: int = 1) -> Path:
    """Write raw ``lines`` (newline-terminated here) as a zstd file of ``frames`` frames."""
    data = b"".join(line + b"\n" for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    cctx = zstandard.ZstdCompressor(level=3)
    step = max(1, len(data) // frames + 1)
    path.write_bytes(b"".join(cctx.compress(data[i:i + step]) for i in range(0, len(data), step)))
    return path


def doc_line(text: str, source: str = "test") -> bytes:
    return json.dumps({"text": text, "meta": {"redpajama_set_name": source}}, ensure_ascii=False).encode()


def make_dataset(root: Path, train_shards: int = 4, docs_per_shard: int = 30, holdout_docs: int = 10,
                 seed: int = 0, chunks: int = 2) -> Path:
    """SlimPajama layout: train/chunk{c}/example_train_{i}, validation/ and test/ holdouts."""
    k = 0
    for i in range(train_shards):
        chunk = 1 + i % chunks
        docs = sample_documents(docs_per_shard, seed=seed * 1000 + k)
        write_shard(root / f"train/chunk{chunk}/example_train_{i}.jsonl.zst", [doc_line(d) for d in docs])
        k += 1
    for split in ("validation", "test"):
        docs = sample_documents(holdout_docs, seed=seed * 1000 + k)
        write_shard(root / f"{split}/chunk1/example_holdout_0.jsonl.zst", [doc_line(d) for d in docs])
        k += 1
    return root


def reference_ids(manifest: Path, tokenizer_file: Path, eos_id: int, split: str) -> np.ndarray:
    """Expected combined ids of ``split``: documents in manifest order, each + [eos]."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.encode_special_tokens = True
    out: list[int] = []
    for line in manifest.read_text().splitlines():
        entry = json.loads(line)
        if entry["split"] != split:
            continue
        with open(entry["path"], "rb") as f:
            raw = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
        for text in reference_texts(raw.split(b"\n")):
            out.extend(tok.encode(text, add_special_tokens=False).ids)
            out.append(eos_id)
    return np.array(out, dtype=np.int64)


def reference_texts(lines: Sequence[bytes], key: str = "text") -> list[str]:
    """The documents slimtok must keep, by the rules of the spec, written independently."""
    texts = []
    for raw in lines:
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8", errors="replace"))
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get(key), str) and obj[key]:
            texts.append("".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in obj[key]))
    return texts
