"""The encoder backend: fastokens only when it gives the reference ids, else tokenizers, and why."""

import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

import slimtok.tokenizer.encoder as tokmod
from helpers.cli import slimtok
from helpers.corpus import make_dataset, reference_ids, sample_documents
from helpers.tokenizer_families import slow_qwen3
from slimtok.tokenizer import DocumentPolicy, Encoder, TokenizerError, load_tokenizer

TRICKY = ["plain <|endoftext|> text with <|im_end|> inside", "\n\n  \t\r\n", "東京 Москва 👩‍👩‍👧 e\u0301",
          "x" * 5000, "12345678901234567890 'll 'S"]


def reference(folder: Path, texts: list[str], eos: int) -> np.ndarray:
    """tokens(text) + [eos] per text, straight from tokenizers with special strings as text."""
    return np.concatenate([np.append(ids, eos) for ids in reference_docs(folder, texts)])


def reference_docs(folder: Path, texts: list[str]) -> list[list[int]]:
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.encode_special_tokens = True
    return [tok.encode(text, add_special_tokens=False).ids for text in texts]


@pytest.fixture(params=[slow_qwen3("bpe"), slow_qwen3("qwen3")])
def folder(request, bpe_tokenizer, qwen3_tokenizer) -> Path:
    return bpe_tokenizer if request.param == "bpe" else qwen3_tokenizer


def test_auto_uses_fastokens_and_gives_reference_ids(folder):
    pytest.importorskip("fastokens")
    loaded = load_tokenizer(str(folder))
    enc = Encoder(loaded.tokenizer, loaded.policy, "uint32", "auto")
    assert enc.backend == "fastokens" and "identical" in enc.report.verification
    texts = sample_documents(40, seed=7) + TRICKY
    flat, lengths = enc.encode(texts)
    assert np.array_equal(flat, reference(folder, texts, loaded.eos_token_id))
    assert lengths == [len(ids) + 1 for ids in reference_docs(folder, texts)]


def _fake_fastokens(monkeypatch, make) -> None:
    """Install a stand-in ``fastokens`` module whose Tokenizer.from_json_str calls ``make(spec)``."""
    module = types.SimpleNamespace(__version__="fake", Tokenizer=types.SimpleNamespace(from_json_str=make))
    monkeypatch.setitem(sys.modules, "fastokens", module)


class _Skewed:
    """Wraps a real fastokens tokenizer; once ``broken`` is set, every id is shifted by one."""

    def __init__(self, real, broken: bool = False):
        self.real, self.broken = real, broken

    def no_padding(self):
        self.real.no_padding()

    def no_truncation(self):
        self.real.no_truncation()

    @property
    def post_processor(self):
        return self.real.post_processor

    @post_processor.setter
    def post_processor(self, spec):
        self.real.post_processor = spec

    def encode_batch_flat(self, texts, add_special, split_special):
        ids, offsets = self.real.encode_batch_flat(texts, add_special, split_special)
        if self.broken:
            ids = (np.frombuffer(ids, np.uint32) + 1).tobytes()
        return ids, offsets


def test_missing_fastokens_falls_back_with_a_warning(bpe_tokenizer, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "fastokens", None)  # makes `import fastokens` raise ImportError
    loaded = load_tokenizer(str(bpe_tokenizer))
    with caplog.at_level(logging.WARNING, logger="slimtok.tokenizer"):
        enc = Encoder(loaded.tokenizer, DocumentPolicy(0, "<|endoftext|>"), "uint32", "auto")
    assert enc.backend == "tokenizers" and "not installed" in enc.report.verification
    assert "not installed" in caplog.text
    with pytest.raises(TokenizerError, match="not installed"):
        Encoder(loaded.tokenizer, DocumentPolicy(0, "<|endoftext|>"), "uint32", "fastokens")


def test_differing_fastokens_is_refused_at_start_up(bpe_tokenizer, monkeypatch):
    fastokens = pytest.importorskip("fastokens")
    _fake_fastokens(monkeypatch, lambda spec: _Skewed(fastokens.Tokenizer.from_json_str(spec), broken=True))
    loaded = load_tokenizer(str(bpe_tokenizer))
    enc = Encoder(loaded.tokenizer, DocumentPolicy(0, "<|endoftext|>"), "uint32", "auto")
    assert enc.backend == "tokenizers" and "differ" in enc.report.verification
    texts = sample_documents(5, seed=3)
    assert np.array_equal(enc.encode(texts)[0], reference(bpe_tokenizer, texts, 0))


def test_mismatch_during_the_run_switches_to_the_reference(bpe_tokenizer, monkeypatch):
    fastokens = pytest.importorskip("fastokens")
    made: list[_Skewed] = []
    _fake_fastokens(monkeypatch, lambda spec: made.append(_Skewed(fastokens.Tokenizer.from_json_str(spec)))
                    or made[-1])
    monkeypatch.setattr(tokmod, "VERIFY_EVERY_CHARS", 1)  # check a slice after every batch
    loaded = load_tokenizer(str(bpe_tokenizer))
    enc = Encoder(loaded.tokenizer, DocumentPolicy(0, "<|endoftext|>"), "uint32", "auto")
    assert enc.backend == "fastokens"
    made[0].broken = True
    texts = sample_documents(6, seed=4)
    flat, _ = enc.encode(texts)
    assert np.array_equal(flat, reference(bpe_tokenizer, texts, 0))
    assert enc.backend == "tokenizers" and "switched" in enc.report.verification


def test_slice_checks_compare_under_a_bos_and_parse_policy(bpe_tokenizer, monkeypatch):
    """With bos and parsed special strings, start-up passes and a later mismatch still switches."""
    fastokens = pytest.importorskip("fastokens")
    made: list[_Skewed] = []
    _fake_fastokens(monkeypatch, lambda spec: made.append(_Skewed(fastokens.Tokenizer.from_json_str(spec)))
                    or made[-1])
    monkeypatch.setattr(tokmod, "VERIFY_EVERY_CHARS", 1)
    policy = DocumentPolicy(0, "<|endoftext|>", bos_id=1, bos_token="<|pad|>", special_text="parse")
    enc = Encoder(load_tokenizer(str(bpe_tokenizer)).tokenizer, policy, "uint32", "auto")
    assert enc.backend == "fastokens" and "special text parse" in enc.report.verification
    texts = [t + " <|endoftext|> and <|pad|>" for t in sample_documents(4, seed=5)]
    tok = Tokenizer.from_file(str(bpe_tokenizer / "tokenizer.json"))  # encode_special_tokens off: parse
    want = np.concatenate([[1] + tok.encode(t, add_special_tokens=False).ids + [0] for t in texts])
    assert np.array_equal(enc.encode(texts)[0], want)
    made[0].broken = True
    assert np.array_equal(enc.encode(texts)[0], want)
    assert enc.backend == "tokenizers" and "switched" in enc.report.verification


def test_backend_is_recorded_not_pinned_and_outputs_are_identical(tmp_path, bpe_tokenizer):
    pytest.importorskip("fastokens")
    dataset = make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=15, holdout_docs=4)
    slimtok("manifest", "--dataset-dir", dataset, "--output-dir", tmp_path / "m")
    manifest = tmp_path / "m" / "manifest.jsonl"
    roots = {}
    for backend in ("tokenizers", "auto"):
        root = roots[backend] = tmp_path / backend
        slimtok("tokenize", "--dtype", "uint32", "--manifest", manifest, "--output-root", root, "--tokenizer",
                bpe_tokenizer, "--quiet", "--spawn-workers", "1", "--backend", backend)
        slimtok("combine", "--output-root", root)
    for backend, used in (("tokenizers", "tokenizers"), ("auto", "fastokens")):
        job = json.loads((roots[backend] / "job.json").read_text())
        meta = json.loads((roots[backend] / "meta.json").read_text())
        assert (job["backend_requested"], job["backend"]) == (backend, used)
        assert meta["backend"] == used and meta["backend_verification"] == job["backend_verification"]
    for name in ("train.bin", "val.bin", "test.bin"):
        assert (roots["tokenizers"] / name).read_bytes() == (roots["auto"] / name).read_bytes()
    # A relaunch with another backend is accepted; with nothing to redo no worker loads an encoder,
    # so job.json still names the backend that wrote the shards.
    slimtok("tokenize", "--dtype", "uint32", "--manifest", manifest, "--output-root", roots["tokenizers"],
            "--tokenizer", bpe_tokenizer, "--quiet", "--spawn-workers", "1", "--backend", "fastokens")
    assert json.loads((roots["tokenizers"] / "job.json").read_text())["backend"] == "tokenizers"


def test_done_records_name_the_encoder_that_wrote_them(tmp_path, bpe_tokenizer):
    make_dataset(tmp_path / "ds", train_shards=1, docs_per_shard=3, holdout_docs=1)
    slimtok("manifest", "--dataset-dir", tmp_path / "ds", "--output-dir", tmp_path / "m")
    slimtok("tokenize", "--dtype", "uint32", "--manifest", tmp_path / "m/manifest.jsonl", "--output-root",
            tmp_path / "out", "--tokenizer", bpe_tokenizer, "--backend", "tokenizers", "--spawn-workers", "1",
            "--quiet")
    records = [json.loads(p.read_text()) for p in (tmp_path / "out/done").rglob("*.json")]
    assert len(records) == 3 and {r["backend"] for r in records} == {"tokenizers"}


def test_a_deferred_fastokens_is_never_loaded_while_the_reference_is_cheaper(qwen3_tokenizer, monkeypatch):
    """A small job costs the reference less than fastokens' load: it is encoded by the reference alone."""
    monkeypatch.setattr(tokmod, "FASTOKENS_LOAD_FACTOR", 1e9)
    monkeypatch.setattr(tokmod, "_load_fastokens", lambda path: pytest.fail("fastokens was loaded"))
    loaded = load_tokenizer(str(qwen3_tokenizer))
    enc = Encoder(qwen3_tokenizer / "tokenizer.json", loaded.policy, "uint32", "auto", defer_fastokens=True)
    texts = sample_documents(30, seed=11) + TRICKY
    flat, lengths = enc.encode(texts)
    assert np.array_equal(flat, reference(qwen3_tokenizer, texts, loaded.eos_token_id))
    assert lengths == [len(ids) + 1 for ids in reference_docs(qwen3_tokenizer, texts)]
    assert enc.backend == "tokenizers" and "deferred" in enc.report.verification
    assert enc.chars == {"tokenizers": sum(map(len, texts)), "fastokens": 0}


def test_a_deferred_fastokens_takes_over_once_paid_for_with_the_same_ids(folder, monkeypatch):
    pytest.importorskip("fastokens")
    monkeypatch.setattr(tokmod, "FASTOKENS_LOAD_FACTOR", 0.0)  # paid for by the first batch
    loaded = load_tokenizer(str(folder))
    enc = Encoder(folder / "tokenizer.json", loaded.policy, "uint32", "auto", defer_fastokens=True)
    assert enc.backend == "tokenizers"
    first, second = sample_documents(10, seed=12), sample_documents(10, seed=13) + TRICKY
    got = [enc.encode(first)[0]]
    assert enc.backend == "fastokens" and "loaded after the reference had encoded" in enc.report.verification
    got.append(enc.encode(second)[0])
    assert enc.chars == {"tokenizers": sum(map(len, first)), "fastokens": sum(map(len, second))}
    for texts, flat in zip((first, second), got, strict=True):
        assert np.array_equal(flat, reference(folder, texts, loaded.eos_token_id))


def test_a_small_job_with_a_large_tokenizer_never_loads_fastokens(tmp_path, qwen3_tokenizer):
    """End to end: a few documents cost the reference far less than loading fastokens for Qwen3."""
    pytest.importorskip("fastokens")
    make_dataset(tmp_path / "ds", train_shards=1, docs_per_shard=4, holdout_docs=1)
    slimtok("manifest", "--dataset-dir", tmp_path / "ds", "--output-dir", tmp_path / "m")
    root = tmp_path / "out"
    slimtok("tokenize", "--manifest", tmp_path / "m/manifest.jsonl", "--output-root", root, "--tokenizer",
            qwen3_tokenizer, "--spawn-workers", "1", "--quiet")
    job = json.loads((root / "job.json").read_text())
    assert (job["backend_requested"], job["backend"]) == ("auto", "tokenizers")
    assert "deferred" in job["backend_verification"]
    records = [json.loads(p.read_text()) for p in (root / "done").rglob("*.json")]
    assert records and {r["backend"] for r in records} == {"tokenizers"}
    slimtok("combine", "--output-root", root)
    want = reference_ids(tmp_path / "m/manifest.jsonl", qwen3_tokenizer / "tokenizer.json", job["eos_token_id"],
                         "train")
    assert np.array_equal(np.fromfile(root / "train.bin", dtype=job["dtype"]), want)


def test_a_worker_whose_fastokens_takes_over_mid_shard_says_so(tmp_path, bpe_tokenizer, monkeypatch):
    """The first batch goes to the reference, which pays for fastokens at once; the shard's done
    record names both backends, job.json the one now encoding; the ids are the reference's."""
    pytest.importorskip("fastokens")
    from slimtok.job import TokenizeSettings, pin_job
    from slimtok.worker import Worker
    from slimtok.worker import batches as batch_rule

    monkeypatch.setattr(tokmod, "FASTOKENS_LOAD_FACTOR", 0.0)
    monkeypatch.setattr(batch_rule, "BATCH_DOCS", 2)
    make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=6, holdout_docs=1)
    slimtok("manifest", "--dataset-dir", tmp_path / "ds", "--output-dir", tmp_path / "m")
    manifest, root = tmp_path / "m/manifest.jsonl", tmp_path / "out"
    settings = TokenizeSettings(manifest=str(manifest), output_root=str(root), tokenizer=str(bpe_tokenizer),
                                splits=("train",))
    assert Worker(pin_job(settings), 0).run() == 0
    records = sorted((json.loads(p.read_text()) for p in (root / "done").rglob("*.json")), key=lambda r: r["shard"])
    order = [r["backend"] for r in sorted(records, key=lambda r: r["finished_at"])]
    assert order == ["tokenizers+fastokens", "fastokens"]
    job = json.loads((root / "job.json").read_text())
    assert job["backend"] == "fastokens" and "loaded after the reference had encoded" in job["backend_verification"]
    slimtok("combine", "--output-root", root, "--splits", "train")
    want = reference_ids(manifest, bpe_tokenizer / "tokenizer.json", job["eos_token_id"], "train")
    assert np.array_equal(np.fromfile(root / "train.bin", dtype=job["dtype"]), want)
