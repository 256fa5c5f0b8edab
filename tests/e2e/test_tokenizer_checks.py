"""Tokenizers are checked before work starts, and validate judges the shape of what was written.

A folder without tokenizer.json is refused unless a transformers class is named (and pinned); a
tokenizer whose start-up sample is degenerate is refused with its numbers before any shard is
claimed; remote code never runs; validate fails on degenerate output. Expected numbers are computed
here from the tokenizers themselves, not read from slimtok."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import xxhash
import zstandard
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from helpers.cli import manifest, slimtok, tokenize
from helpers.corpus import doc_line, make_dataset, reference_texts, sample_documents, write_shard
from slimtok.tokenizer.shape import SHAPE_TEXTS


def _entropy(ids: list[int]) -> float:
    counts = Counter(ids)
    return -sum(c / len(ids) * math.log2(c / len(ids)) for c in counts.values())


def _vocabulary_folder(folder: Path) -> Path:
    """A GPT-2 style folder of vocab.json + merges.txt + tokenizer_config.json, no tokenizer.json."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sample_documents(300, seed=1), trainer)
    folder.mkdir(parents=True)
    tok.model.save(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return folder


def _word_level(folder: Path, words: list[str]) -> Path:
    """A WordLevel tokenizer.json of ``words`` plus [UNK] and an eos, split at whitespace and punctuation."""
    vocab = {w: i for i, w in enumerate(["[UNK]", *dict.fromkeys(words), "<|endoftext|>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _nothing_claimed(root: Path) -> None:
    """No claim, heartbeat, checkpoint or output under ``root``: no worker ever ran."""
    for folder in ("locks", "done", "shards", "heartbeats", "checkpoints"):
        assert not (root / folder).exists() or not any((root / folder).rglob("*")), folder


def test_a_folder_without_tokenizer_json_is_refused_unless_a_class_is_named(tmp_path):
    folder = _vocabulary_folder(tmp_path / "tok")
    make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=10, holdout_docs=3)
    listed = manifest(tmp_path, tmp_path / "ds")
    root = tmp_path / "out"
    refused = tokenize(listed, root, folder, "--spawn-workers", "1", check=False)
    assert refused.returncode == 2
    assert f"{folder}: has no tokenizer.json" in refused.stderr and "--tokenizer-class" in refused.stderr
    assert not (root / "job.json").exists()

    tokenize(listed, root, folder, "--spawn-workers", "1", "--tokenizer-class", "GPT2Tokenizer")
    assert json.loads((root / "job.json").read_text())["tokenizer_class"] == "GPT2Tokenizer"
    slimtok("combine", "--output-root", root)
    # independently: the same vocabulary and merges through tokenizers' own BPE, byte-level
    ref = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    eos = ref.token_to_id("<|endoftext|>")
    want: list[int] = []
    for line in listed.read_text().splitlines():
        entry = json.loads(line)
        if entry["split"] == "train":
            with open(entry["path"], "rb") as f:
                raw = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
            for text in reference_texts(raw.split(b"\n")):
                want += [*ref.encode(text, add_special_tokens=False).ids, eos]
    assert np.fromfile(root / "train.bin", dtype=np.uint32).tolist() == want

    # the class is pinned: a relaunch naming another that builds the same ids is refused with the difference
    other = tokenize(listed, root, folder, "--spawn-workers", "1", "--tokenizer-class", "RobertaTokenizer",
                     check=False)
    assert other.returncode == 2
    assert "tokenizer_class: pinned 'GPT2Tokenizer', requested 'RobertaTokenizer'" in other.stderr


def test_a_config_only_folder_with_a_named_class_is_refused_as_degenerate(tmp_path):
    """The issue's case: transformers builds an empty vocabulary; every document would be a lone eos."""
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    make_dataset(tmp_path / "ds", train_shards=1, docs_per_shard=5, holdout_docs=2)
    root = tmp_path / "out"
    proc = tokenize(manifest(tmp_path, tmp_path / "ds"), root, folder, "--tokenizer-class", "GPT2Tokenizer",
                    check=False)
    assert proc.returncode == 2, proc.stderr
    assert "degenerate on the start-up sample" in proc.stderr
    assert f"{len(SHAPE_TEXTS)} of {len(SHAPE_TEXTS)} documents encode to at most one id" in proc.stderr
    _nothing_claimed(root)


def test_a_degenerate_tokenizer_is_refused_with_its_numbers_before_any_shard_is_claimed(tmp_path):
    folder = _word_level(tmp_path / "tok", ["the", "a", "of"])
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = [i for t in SHAPE_TEXTS for i in tok.encode(t, add_special_tokens=False).ids]
    make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=5, holdout_docs=2)
    root = tmp_path / "out"
    for workers in ("1", "2"):
        proc = tokenize(manifest(tmp_path, tmp_path / "ds"), root, folder, "--spawn-workers", workers, check=False)
        assert proc.returncode == 2, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {folder}: degenerate on the start-up sample")
        assert f"only {tok.get_vocab_size()} ids" in line
        assert f"id entropy {_entropy(ids):.2f} bits" in line
        top = Counter(ids).most_common(1)[0][1] / len(ids)
        assert f"one id is {top:.0%} of all ids" in line
        assert f"{len(ids):,} text ids" in line
        _nothing_claimed(root)


def test_remote_code_is_never_run(tmp_path):
    """A folder whose config maps AutoTokenizer to its own module: that module would leave a marker
    file. Answering "y" to transformers' trust prompt (which an unset trust_remote_code shows) must
    not matter: slimtok never lets it ask."""
    folder = _vocabulary_folder(tmp_path / "tok")
    (folder / "tokenization_custom.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('EXECUTED').write_text('ran')\n"
        "from transformers import GPT2Tokenizer\n\nclass CustomTokenizer(GPT2Tokenizer):\n    pass\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "tokenizer_class": "CustomTokenizer",
         "auto_map": {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]}}))
    make_dataset(tmp_path / "ds", train_shards=1, docs_per_shard=5, holdout_docs=2)
    listed = manifest(tmp_path, tmp_path / "ds")
    for extra in ((), ("--tokenizer-class", "AutoTokenizer")):
        proc = slimtok("tokenize", "--manifest", listed, "--output-root", tmp_path / "out", "--tokenizer", folder,
                       "--quiet", *extra, check=False, input="y\ny\n")
        assert proc.returncode == 2, proc.stderr
        assert not (folder / "EXECUTED").exists()


def _unknown_words(folder: Path) -> None:
    """Documents of words no vocabulary built from SHAPE_TEXTS holds."""
    docs = [" ".join(f"zq{i}x{j}" for j in range(40)) for i in range(30)]
    write_shard(folder / "train/chunk1/example_train_0.jsonl.zst", [doc_line(d) for d in docs])


def test_validate_fails_on_output_made_of_one_id(tmp_path):
    """The tokenizer passes the start-up sample (it knows its words) but holds none of the corpus's:
    every text id written is its unk, which validate must call degenerate."""
    words = [w for t in SHAPE_TEXTS for w in pre_tokenizers.Whitespace().pre_tokenize_str(t)]
    folder = _word_level(tmp_path / "tok", [w for w, _ in words])
    _unknown_words(tmp_path / "ds")
    root = tmp_path / "out"
    tokenize(manifest(tmp_path, tmp_path / "ds"), root, folder, "--spawn-workers", "1")
    slimtok("combine", "--output-root", root)
    ids = np.fromfile(root / "train.bin", dtype=np.uint32)
    assert set(ids.tolist()) == {0, len(dict.fromkeys(w for w, _ in words)) + 1}  # unk and eos only
    proc = slimtok("validate", "--output-root", root, check=False)
    assert proc.returncode == 1
    line = next(x for x in proc.stdout.splitlines() if "train.bin: text shape" in x)
    assert line.startswith("[FAIL]")
    assert "id entropy 0.00 bits over 1 distinct ids" in line and "one id is 100% of all ids" in line


def _one_document_repeated(folder: Path) -> None:
    text = sample_documents(1, seed=11)[0]
    write_shard(folder / "train/chunk1/example_train_0.jsonl.zst", [doc_line(text)] * 40)


def test_validate_reports_tokens_per_byte_and_entropy_as_counted_independently(tmp_path, bpe_tokenizer):
    """Every document is the same text, so any sample of them has that one document's numbers."""
    _one_document_repeated(tmp_path / "ds")
    root = tmp_path / "out"
    tokenize(manifest(tmp_path, tmp_path / "ds"), root, bpe_tokenizer, "--spawn-workers", "1")
    slimtok("combine", "--output-root", root)
    proc = slimtok("validate", "--output-root", root, "--samples", "16")
    tok = Tokenizer.from_file(str(bpe_tokenizer / "tokenizer.json"))
    text = sample_documents(1, seed=11)[0]
    ids = tok.encode(text, add_special_tokens=False).ids
    decoded = len(tok.decode(ids, skip_special_tokens=False).encode())
    line = next(x for x in proc.stdout.splitlines() if "train.bin: text shape" in x)
    assert line.startswith("[ok]")
    assert f"{16 * len(ids):,} text ids over {16 * decoded:,} bytes ({len(ids) / decoded:.3f} tokens per byte)" in line
    assert f"id entropy {_entropy(ids):.2f} bits over {len(set(ids))} distinct ids" in line
    assert re.search(r"0 of at most one id", line)
    assert orjson.loads((root / "job.json").read_bytes())["tokenizer_class"] == ""


# -- the per-job parity record (item 9) ------------------------------------------------------------

def _parity_sample(texts: list[str], share: float) -> tuple[int, int]:
    """(documents, UTF-8 bytes) of the parity sample, by the rule stated in slimtok.worker.task:
    the first 8 bytes of the text's xxh3-128 digest (little-endian) as a fraction of 2**64 below
    ``share``, and at most 2**20 characters."""
    picked = [t for t in texts if int.from_bytes(xxhash.xxh3_128_digest(t.encode())[:8], "little") / 2 ** 64 < share
              and len(t) <= 1 << 20]
    return len(picked), sum(len(t.encode()) for t in picked)


def _shard_texts(path: str) -> list[str]:
    with open(path, "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    return reference_texts(raw.split(b"\n"))


def test_the_parity_record_counts_equal_an_independent_count(tmp_path, bpe_tokenizer):
    make_dataset(tmp_path / "ds", train_shards=3, docs_per_shard=40, holdout_docs=20)
    listed = manifest(tmp_path, tmp_path / "ds")
    root = tmp_path / "out"
    tokenize(listed, root, bpe_tokenizer, "--spawn-workers", "2", "--parity-share", "0.3")
    total_docs = total_bytes = 0
    for line in listed.read_text().splitlines():
        entry = json.loads(line)
        record = json.loads((root / "done" / f"{entry['id']}.json").read_text())
        docs, nbytes = _parity_sample(_shard_texts(entry["path"]), 0.3)
        assert (record["parity_documents"], record["parity_bytes"], record["parity_mismatches"]) == (docs, nbytes, 0)
        total_docs, total_bytes = total_docs + docs, total_bytes + nbytes
    assert 0 < total_docs < sum(1 for _ in listed.read_text().splitlines()) * 40
    slimtok("combine", "--output-root", root)
    proc = slimtok("validate", "--output-root", root)
    line = next(x for x in proc.stdout.splitlines() if "job: parity sample" in x)
    assert line.startswith("[ok]")
    assert f"{total_docs:,} documents ({total_bytes:,} bytes of text)" in line and "0 mismatches" in line


#: Run before the command in the launcher, so its forked worker inherits it: the encoder's batch
#: path (the backend) gives one wrong id for the document holding POISON; the reference is untouched.
_POISON = """
from slimtok.executor import limit_worker_threads
limit_worker_threads()  # before numpy's import: a thread pool would make the launcher spawn, not fork
from slimtok.tokenizer import encoder
_batch = encoder.Encoder._encode_batch
def _poisoned(self, texts):
    flat, lengths = _batch(self, texts)
    for i, t in enumerate(texts):
        if "POISON" in t:
            flat = flat.copy()
            at = sum(lengths[:i])
            flat[at] = flat[at] + 1
    return flat, lengths
encoder.Encoder._encode_batch = _poisoned
"""


def test_a_document_the_backend_encodes_wrongly_fails_its_shard(tmp_path, bpe_tokenizer):
    from helpers.cli import slimtok_in_python, tokenize_args

    make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=10, holdout_docs=3)
    shard = tmp_path / "ds/train/chunk1/example_train_0.jsonl.zst"
    texts = sample_documents(10, seed=99)
    texts[6] = "POISON " + texts[6]
    write_shard(shard, [doc_line(t) for t in texts])
    listed = manifest(tmp_path, tmp_path / "ds")
    root = tmp_path / "out"
    proc = slimtok_in_python(_POISON, "print('exit', code)", *tokenize_args(listed, root, bpe_tokenizer,
                                                                          "--spawn-workers", "1",
                                                                          "--backend", "tokenizers",
                                                                          "--parity-share", "1"))
    assert "exit 1" in proc.stdout and "forked" in proc.stderr, proc.stderr
    failed = json.loads((root / "failed" / "train/chunk1/example_train_0.json").read_text())
    assert "document 6 (line 7) encodes to other ids than the reference tokenizers gives" in failed["reason"]
    assert "first difference at id 0" in failed["reason"]
    assert not (root / "done" / "train/chunk1/example_train_0.json").exists()
    others = [json.loads(p.read_text()) for p in (root / "done").rglob("*.json")]
    assert len(others) == 3 and all(r["parity_documents"] > 0 and r["parity_mismatches"] == 0 for r in others)


def test_done_records_without_parity_fields_still_read():
    from slimtok.protocol import DoneRecord

    old = dict(shard="a", split="train", file="shards/a.bin", lines=1, documents=1, tokens=2, bytes=8, sha256="x",
               dtype="uint32", skipped={}, source_size=10, token="t", host="h", finished_at=0.0, seconds=0.0)
    record = DoneRecord.from_dict(old)
    assert (record.parity_documents, record.parity_bytes, record.parity_mismatches) == (-1, -1, -1)


def test_parity_counts_survive_a_stop_and_resume(tmp_path, bpe_tokenizer):
    """Counts travel with their documents through the checkpoint: stopped mid-shard and resumed,
    the record counts each document of the sample once."""
    import signal
    import subprocess

    from helpers.cli import tokenize_cmd
    from helpers.launches import wait_for

    texts = sample_documents(2500, seed=7)
    write_shard(tmp_path / "ds/train/chunk1/example_train_0.jsonl.zst", [doc_line(t) for t in texts], frames=3)
    listed = manifest(tmp_path, tmp_path / "ds")
    root = tmp_path / "out"
    cmd = tokenize_cmd(listed, root, bpe_tokenizer, "--spawn-workers", "1", "--tokens-per-write", "5000",
                       "--checkpoint-every", "0", "--backend", "tokenizers", "--parity-share", "0.3")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for(lambda: any((root / "checkpoints").rglob("*.json")) if (root / "checkpoints").exists() else False)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 75:  # stopped part way (else it finished first: the counts are checked all the same)
        ckpt = json.loads(next((root / "checkpoints").rglob("*.json")).read_text())
        assert 0 < ckpt["parity_documents"] <= ckpt["documents"]
        subprocess.run(cmd, check=True, capture_output=True)
    else:
        assert proc.returncode == 0, err
    record = json.loads((root / "done/train/chunk1/example_train_0.json").read_text())
    docs, nbytes = _parity_sample(reference_texts([doc_line(t) for t in texts]), 0.3)
    assert (record["parity_documents"], record["parity_bytes"], record["parity_mismatches"]) == (docs, nbytes, 0)


def test_length_filters_skip_short_documents_counted_pinned_and_recorded(tmp_path, bpe_tokenizer):
    """--min-chars and --min-tokens leave out exactly the documents an independent count finds short,
    counted per shard by reason among the skipped lines; meta.json records them; a relaunch asking
    other values is refused naming the setting; train.bin is the kept documents' reference ids."""
    min_chars, min_tokens = 40, 30
    tok = Tokenizer.from_file(str(bpe_tokenizer / "tokenizer.json"))
    tok.encode_special_tokens = True
    eos = tok.token_to_id("<|endoftext|>")
    shards: dict[str, list[str]] = {}
    for i in range(3):
        long = sample_documents(12, seed=70 + i)
        short = [d[:n] for d, n in zip(sample_documents(12, seed=80 + i), [5, 20, 39, 40, 45, 60, 80, 150] * 2,
                                       strict=False)]
        texts = [t for pair in zip(long, short, strict=False) for t in pair]
        shards[f"train/chunk1/s{i}"] = texts
        write_shard(tmp_path / "data" / "train" / "chunk1" / f"s{i}.jsonl.zst", [doc_line(t) for t in texts])
    # a shard of only short documents is done with none (not refused as the wrong file or key)
    all_short = [d[:n] for d, n in zip(sample_documents(6, seed=90), [3, 10, 25, 39, 12, 30], strict=True)]
    write_shard(tmp_path / "data" / "train" / "chunk1" / "s9.jsonl.zst", [doc_line(t) for t in all_short])
    listed = manifest(tmp_path, tmp_path / "data")
    root = tmp_path / "out"
    tokenize(listed, root, bpe_tokenizer, "--min-chars", min_chars, "--min-tokens", min_tokens, "--splits", "train")
    short_done = json.loads((root / "done" / "train/chunk1/s9.json").read_text())
    assert (short_done["documents"], short_done["skipped"]) == (0, {"too_few_chars": len(all_short)})
    kept_ids: list[int] = []
    for shard, texts in sorted(shards.items()):
        ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
        few_chars = sum(len(t) < min_chars for t in texts)
        few_tokens = sum(len(t) >= min_chars and len(i) < min_tokens for t, i in zip(texts, ids, strict=True))
        done = json.loads((root / "done" / f"{shard}.json").read_text())
        assert few_chars and few_tokens  # both filters really act here
        assert done["skipped"].get("too_few_chars", 0) == few_chars
        assert done["skipped"].get("too_few_tokens", 0) == few_tokens
        assert done["documents"] == len(texts) - few_chars - few_tokens
        kept_ids += [x for t, i in zip(texts, ids, strict=True) if len(t) >= min_chars and len(i) >= min_tokens
                     for x in [*i, eos]]
    slimtok("combine", "--output-root", root)
    assert np.array_equal(np.fromfile(root / "train.bin", dtype=np.uint32), kept_ids)
    meta = json.loads((root / "meta.json").read_text())
    assert (meta["min_chars"], meta["min_tokens"]) == (min_chars, min_tokens)
    other = tokenize(listed, root, bpe_tokenizer, "--min-chars", min_chars, "--min-tokens", min_tokens + 1,
                     "--splits", "train", check=False)
    assert other.returncode == 2 and "min_tokens" in other.stderr, other.stderr
