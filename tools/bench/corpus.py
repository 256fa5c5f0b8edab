"""The bench's inputs: its corpus, tokenizers, manifests and tokenized roots, all under --work.

Writes a SlimPajama-layout corpus of real text (train/chunk{c}/example_train_{i}.jsonl.zst plus one
validation and one test holdout) built from the standard library's sources, the offline Qwen3
tokenizer (``slimtok.demo``), manifests of them, single big shards for the memory section, a
one-word tokenizer for the claims section, and output roots tokenized by one worker. A corpus
folder that exists is complete (it is renamed into place); a root with ``bench-made`` is finished.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .harness import run_workers, settings_for


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """(corpus folder, tokenizer folder), built under --work unless given."""
    from slimtok.demo import write_qwen3_tokenizer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = Path(args.tokenizer) if args.tokenizer else work / "qwen3"
    if not (tokenizer / "tokenizer.json").exists():
        write_qwen3_tokenizer(tokenizer)
    corpus = Path(args.corpus) if args.corpus else work / f"corpus-{args.mb:g}mb"
    if not corpus.exists():
        build_corpus(corpus, args.mb)
    return corpus, tokenizer


def corpus_source(text: str) -> str:
    """The ``redpajama_set_name`` a stdlib document gets: tests, runnable scripts, or library code."""
    if "import unittest" in text or "from test" in text:
        return "stdlib-tests"
    if "if __name__ ==" in text:
        return "stdlib-scripts"
    return "stdlib-library"


def build_corpus(out: Path, mb: float, chunks: int = 2, shards_per_chunk: int = 4) -> None:
    """A SlimPajama-layout corpus of ~``mb`` MB of text: train/chunk{c}/example_train_{i}.jsonl.zst
    plus one validation and one test holdout, documents dealt round-robin over the shards.

    The text is the standard library's sources (``slimtok.demo.stdlib_documents``); above their
    total size (~30 MB) the documents are repeated, so hashes of a larger corpus have duplicates.
    """
    import orjson
    import zstandard

    from slimtok.demo import stdlib_documents

    pool = stdlib_documents(int(mb * 1e6))
    if not pool:
        raise SystemExit("no standard-library sources found to build a corpus from; pass --corpus")
    docs, size = [], 0
    while size < mb * 1e6:
        for text in pool:
            docs.append(text)
            size += len(text.encode())
            if size >= mb * 1e6:
                break
    paths = [f"train/chunk{c}/example_train_{i}.jsonl.zst"
             for c in range(1, chunks + 1) for i in range(shards_per_chunk)]
    paths += ["validation/chunk1/example_holdout_0.jsonl.zst", "test/chunk1/example_holdout_0.jsonl.zst"]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cctx = zstandard.ZstdCompressor(level=3)
    for k, rel in enumerate(paths):
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        lines = [orjson.dumps({"text": t, "meta": {"redpajama_set_name": corpus_source(t)}})
                 for t in docs[k::len(paths)]]
        dest.write_bytes(cctx.compress(b"\n".join(lines) + b"\n"))
    tmp.rename(out)  # a corpus folder that exists is complete


def manifest_of(corpus: Path, out: Path, splits: tuple[str, ...] = ("train",)) -> Path:
    """A manifest of ``corpus`` restricted to ``splits``."""
    from slimtok.manifest import build_manifest, write_manifest

    root, entries = build_manifest(corpus, ("*.jsonl.zst",))
    path, _ = write_manifest([e for e in entries if e.split in splits], out, root)
    return path


def documents(manifest: Path) -> list[str]:
    from slimtok.manifest import read_manifest
    from slimtok.reader import ShardReader

    return [t for e in read_manifest(manifest) for t in ShardReader(e.path).documents()]


def worker_batches(texts: Iterable[str]) -> Iterator[list[str]]:
    """``texts`` in the batches a worker hands its encoder (the worker's own batching rule)."""
    from slimtok.worker import batched

    for batch, _marks in batched((text, None) for text in texts):
        yield batch


def big_shard(src: list[str], path: Path, target_bytes: int, single: bool = False) -> int:
    """Write a shard of about ``target_bytes`` text from ``src`` (one document if ``single``)."""
    import orjson
    import zstandard

    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as out:
        if single:
            parts, size = [], 0
            while size < target_bytes:
                for t in src:
                    parts.append(t)
                    size += len(t.encode()) + 2
                    if size >= target_bytes:
                        break
            text = "\n\n".join(parts)
            out.write(orjson.dumps({"text": text}) + b"\n")
            return len(text.encode())
        while written < target_bytes:
            for t in src:
                out.write(orjson.dumps({"text": t}) + b"\n")
                written += len(t.encode())
                if written >= target_bytes:
                    break
    return written


def tiny_tokenizer(folder: Path) -> None:
    """A word-level tokenizer of the one word "x" (and eos): encoding costs next to nothing."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"x": 0, "<unk>": 1, "<|endoftext|>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}')


def tokenized_root(work: Path, name: str, corpus: Path, tokenizer: Path, backend: str,
                   entries: Sequence | None = None, splits: tuple[str, ...] = ("train",),
                   fresh: bool = False) -> tuple[Path, float]:
    """An output root of ``entries`` (default: the corpus's ``splits``) tokenized by 1 worker, made once
    per --work unless ``fresh``; (root, the worker's CPU seconds, 0.0 when an earlier run made it)."""
    from slimtok.manifest import build_manifest, write_manifest

    root = work / f"out-{name}"
    if (root / "bench-made").exists() and not fresh:
        return root, 0.0
    shutil.rmtree(root, ignore_errors=True)
    if entries is None:
        _, found = build_manifest(corpus, ("*.jsonl.zst",))
        entries = [e for e in found if e.split in splits]
    manifest, _ = write_manifest(entries, work / f"m-{name}", corpus)
    runs = run_workers(settings_for(manifest, root, tokenizer, backend), 1)
    (root / "bench-made").touch()
    return root, runs[0][1]
