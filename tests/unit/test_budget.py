"""budget.py: the token bytes a job will write (sampled or measured) and the free-space refusal."""

import os
import random

import pytest
import zstandard

from helpers.cli import slimtok
from helpers.corpus import doc_line, make_dataset, reference_ids, reference_texts, write_shard
from helpers.tmpfs import mounted_tmpfs
from slimtok.budget import estimate_token_bytes, measured_ratios
from slimtok.errors import OutputError
from slimtok.manifest import read_manifest
from slimtok.space import check_free_space, disk_space, format_bytes


def _words_and_eos(texts):
    return sum(len(t.split()) + 1 for t in texts)


def _never(texts):
    raise AssertionError("a measured ratio must be used, not a sample")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    ds = make_dataset(tmp / "ds", train_shards=3, docs_per_shard=20, holdout_docs=6)
    slimtok("manifest", "--dataset-dir", ds, "--output-dir", tmp / "m")
    return tmp / "m" / "manifest.jsonl"


def test_whole_shard_samples_predict_the_exact_token_bytes(dataset, bpe_tokenizer):
    """Shards smaller than the sample are read whole: the estimate is the job's exact token bytes."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bpe_tokenizer / "tokenizer.json"))
    tok.encode_special_tokens = True

    def count(texts):
        return sum(len(e.ids) + 1 for e in tok.encode_batch(texts, add_special_tokens=False))

    entries = read_manifest(dataset)
    got = estimate_token_bytes(entries, 4, encode_count=count, sample_shards=10)
    expected = sum(len(reference_ids(dataset, bpe_tokenizer / "tokenizer.json", 0, split))
                   for split in ("train", "validation", "test")) * 4
    assert got.bytes == pytest.approx(expected, abs=1)
    assert got.low <= expected <= got.high and got.margin == 0.10
    assert set(got.basis.values()) == {"sample of 3 shards", "sample of 1 shard"}
    assert got.unestimated_source_bytes == 0


def test_a_prefix_sample_estimates_a_large_shard_within_its_margin(tmp_path):
    rng = random.Random(3)
    words = [f"w{i}" for i in range(5000)]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(50, 400))) for _ in range(3000)]
    path = write_shard(tmp_path / "train/chunk1/example_train_0.jsonl.zst", [doc_line(d) for d in docs])
    slimtok("manifest", "--dataset-dir", tmp_path, "--output-dir", tmp_path / "m")
    entries = read_manifest(tmp_path / "m" / "manifest.jsonl")
    assert path.stat().st_size > 4 * 256 * 1024  # the sample below sees a quarter of it at most
    got = estimate_token_bytes(entries, 2, encode_count=_words_and_eos, sample_bytes=256 * 1024)
    with open(path, "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f).read()
    truth = 2 * _words_and_eos(reference_texts(raw.split(b"\n")))
    assert got.low <= truth <= got.high, (got.bytes, truth)
    assert got.bytes != truth  # really a sample, not the whole file


def test_measured_ratios_come_first_and_other_splits_fill_in(dataset):
    entries = read_manifest(dataset)
    size = {s: sum(e.size for e in entries if e.split == s) for s in ("train", "validation", "test")}
    measured = measured_ratios([("train", 600, 200), ("train", 400, 300), ("validation", 10, 0)])
    assert measured == {"train": (1000, 500), "validation": (10, 0)}
    train = [e for e in entries if e.split == "train"]
    got = estimate_token_bytes(train, 4, encode_count=_never, measured={"train": (1000, 500)})
    # train: 2 tokens per source byte from its records, without encoding a sample
    assert (got.basis, got.ratios) == ({"train": "done records"}, {"train": 2.0})
    assert got.bytes == 2 * 4 * size["train"]
    got = estimate_token_bytes(entries, 4, measured=measured)
    assert got.basis == {"train": "done records", "validation": "done records of other splits",
                         "test": "done records of other splits"}
    assert got.bytes == pytest.approx(2.0 * 4 * sum(size.values()), abs=1)
    nothing = estimate_token_bytes(entries, 4)
    assert (nothing.bytes, nothing.unestimated_source_bytes) == (0, sum(size.values()))


def test_a_pinned_sample_is_used_for_its_split_even_after_another_split_was_sampled(dataset):
    """job.json's sampled ratios serve the splits they name (as status passes them); a split
    without one is encoded, and that does not hide the pinned ratios from the splits after it."""
    entries = sorted(read_manifest(dataset), key=lambda e: e.split != "train")  # train first
    size = {s: sum(e.size for e in entries if e.split == s) for s in ("train", "validation", "test")}
    calls = []

    def count(texts):
        calls.append(len(texts))
        return sum(len(t) for t in texts)

    got = estimate_token_bytes(entries, 4, encode_count=count, sampled={"validation": [3.0, 1], "test": [0.5, 1]})
    assert calls and got.basis["train"].startswith("sample of")
    assert (got.ratios["validation"], got.ratios["test"]) == (3.0, 0.5)
    assert got.bytes == pytest.approx(4 * (got.ratios["train"] * size["train"] + 3.0 * size["validation"]
                                           + 0.5 * size["test"]), abs=1)


def test_free_space_refusal_on_a_small_tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path / "fs", "1m") as fs:
        (fs / "filler").write_bytes(os.urandom(400_000))
        st = os.statvfs(fs)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        space = disk_space(fs / "out" / "not-yet")  # the output root need not exist yet
        assert (space.path, space.free, space.total) == (str(fs), free, total)
        keep = 0.1 * total
        fits = free - int(keep) - 1  # leaves just over a tenth free
        check_free_space(fs / "out", fits, 0.1)
        with pytest.raises(OutputError) as err:
            check_free_space(fs / "out", fits + 2, 0.1)
        message = str(err.value.render())
        assert message.startswith(f"{fs / 'out'}: needs about {format_bytes(fits + 2)}")
        assert f"{format_bytes(free)} free of {format_bytes(total)}" in message
        assert f"less than the 10% ({format_bytes(int(keep))}) to keep free" in message
        assert "--min-free-fraction 0" in message and err.value.exit_code == 3
        check_free_space(fs / "out", 10 * total, 0)  # 0 turns the check off
        with pytest.raises(OutputError):
            check_free_space(fs / "out", free + 1, 0.0001)
        assert sorted(p.name for p in fs.iterdir()) == ["filler"]  # nothing written by the check


def _mixed_corpus(ds):
    """A train split of two large plain .jsonl shards (most of its bytes) and four .jsonl.zst ones
    (each larger than a sample; their tokens per on-disk byte are ~4x), so a sample spread over the
    split's shards is mostly zstd while its bytes are mostly plain; and a validation split of
    parquet shards. Returns every document's text per split (the independent reference)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from helpers.corpus import sample_documents

    texts: dict[str, list[str]] = {"train": [], "validation": []}
    k = 0
    for i in range(2):
        docs = sample_documents(3000, seed=k)
        k += 1
        (ds / "train").mkdir(parents=True, exist_ok=True)
        (ds / f"train/a_{i}.jsonl").write_bytes(b"".join(doc_line(d) + b"\n" for d in docs))
        texts["train"] += docs
    for i in range(4):
        docs = sample_documents(1000, seed=k)
        k += 1
        write_shard(ds / f"train/b_{i}.jsonl.zst", [doc_line(d) for d in docs])
        texts["train"] += docs
    (ds / "validation").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        docs = sample_documents(300, seed=k)
        k += 1
        pq.write_table(pa.table({"text": docs, "id": list(range(len(docs)))}), ds / f"validation/v_{i}.parquet",
                       row_group_size=64)
        texts["validation"] += docs
    return texts


def test_estimate_of_a_mixed_corpus_is_within_15_percent_of_the_true_bytes(tmp_path, bpe_tokenizer):
    """True bytes computed independently: every document encoded with tokenizers, + eos, × width."""
    from tokenizers import Tokenizer

    from slimtok.budget import sample_ratios

    tok = Tokenizer.from_file(str(bpe_tokenizer / "tokenizer.json"))
    tok.encode_special_tokens = True

    def count(batch):
        return sum(len(e.ids) + 1 for e in tok.encode_batch(batch, add_special_tokens=False))

    texts = _mixed_corpus(tmp_path / "ds")
    slimtok("manifest", "--dataset-dir", tmp_path / "ds", "--output-dir", tmp_path / "m",
            "--pattern", "*.jsonl", "--pattern", "*.jsonl.zst", "--pattern", "*.parquet")
    entries = read_manifest(tmp_path / "m" / "manifest.jsonl")
    for split, docs in texts.items():
        group = [e for e in entries if e.split == split]
        true = 4 * count(docs)
        fresh = estimate_token_bytes(group, 4, encode_count=count)
        pinned = estimate_token_bytes(group, 4, sampled=sample_ratios(group, count))  # as a relaunch reads it
        for got in (fresh, pinned):
            assert got.unestimated_source_bytes == 0
            assert abs(got.bytes - true) <= 0.15 * true, (split, got.bytes, true, got.basis)
