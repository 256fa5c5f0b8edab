"""End to end through the real command line: manifest → tokenize → combine → validate."""

import hashlib
import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import cli
from helpers.cli import slimtok, tokenize
from helpers.corpus import doc_line, make_dataset, reference_ids, write_shard

pytestmark = pytest.mark.slow  # the whole command line, several launches per test


@pytest.fixture(scope="module")
def small(tokenized_root, bpe_tokenizer):
    run = tokenized_root({"train_shards": 5, "docs_per_shard": 25}, bpe_tokenizer, "--dtype", "uint32", "--quiet",
                         "--spawn-workers", "1", combine=True)
    return run.work, run.manifest, run.root


def test_outputs_equal_a_direct_tokenizers_encoding(small, bpe_tokenizer):
    tmp, manifest, root = small
    meta = pickle.loads((root / "meta.pkl").read_bytes())
    assert meta["dtype"] == "uint32" and meta["eos_token_id"] == 0 and meta["vocab_size"] == 600
    assert meta == json.loads((root / "meta.json").read_text())
    for split, name in [("train", "train.bin"), ("validation", "val.bin"), ("test", "test.bin")]:
        got = np.fromfile(root / name, dtype=np.uint32)
        want = reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, split)
        assert np.array_equal(got, want), split
        assert meta["splits"][split]["tokens"] == len(want)
        assert meta["splits"][split]["documents"] == int((want == 0).sum())


def test_byte_identical_for_1_vs_2_workers_vs_3_processes(small, bpe_tokenizer):
    tmp, manifest, root = small
    two = tmp / "out2"
    tokenize(manifest, two, bpe_tokenizer, "--spawn-workers", "2")
    slimtok("combine", "--output-root", two)
    three = tmp / "out3"
    procs = [subprocess.Popen([sys.executable, "-m", "slimtok", "tokenize", "--dtype", "uint32", "--manifest",
                               str(manifest), "--output-root", str(three), "--tokenizer", str(bpe_tokenizer), "--quiet",
                               "--process-count", "3", "--process-index", str(i), "--spawn-workers", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    slimtok("combine", "--output-root", three)
    for name in ("train.bin", "val.bin", "test.bin"):
        ref = (root / name).read_bytes()
        assert (two / name).read_bytes() == ref
        assert (three / name).read_bytes() == ref
    hosts = {json.loads(p.read_text())["token"] for p in (three / "done").rglob("*.json")}
    assert len(hosts) == 7  # every shard committed once, by one claim


def test_validate_passes_and_reports(small):
    _, _, root = small
    out = slimtok("validate", "--output-root", root, "--samples", "16").stdout
    assert "all checks passed" in out and "ln(600) = 6.397" in out and "eye test: train.bin @ token 0" in out


def test_status_counts(small):
    _, _, root = small
    out = slimtok("status", "--output-root", root).stdout
    row = next(line.split() for line in out.splitlines() if line.startswith("train"))
    assert row[1:6] == ["5", "5", "0", "0", "0"]


def test_validate_names_a_corrupted_shard(small, tmp_path):
    _, _, root = small
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    # Relocate: the copy's done records point inside it already (relative paths).
    data = bytearray((copy / "train.bin").read_bytes())
    records = sorted((json.loads(p.read_text()) for p in (copy / "done/train").rglob("*.json")),
                     key=lambda r: r["shard"])
    manifest_ids = [json.loads(x)["id"] for x in (copy / "manifest.jsonl").read_text().splitlines()]
    order = [r for i in manifest_ids for r in records if r["shard"] == i]
    offset = sum(r["bytes"] for r in order[:2])
    data[offset + 5] ^= 0x01
    (copy / "train.bin").write_bytes(bytes(data))
    proc = slimtok("validate", "--output-root", copy, check=False)
    assert proc.returncode == 1
    assert f"differ from their done records: {order[2]['shard']}" in proc.stdout
    # combine checks shard files against their done records too
    shard_file = copy / order[1]["file"]
    raw = bytearray(shard_file.read_bytes())
    raw[0] ^= 0x01
    shard_file.write_bytes(bytes(raw))
    proc = slimtok("combine", "--output-root", copy, check=False)
    assert proc.returncode == 2 and order[1]["shard"] in proc.stderr and "sha256" in proc.stderr


def test_qwen3_special_strings_are_text_and_ids_match(tmp_path, qwen3_tokenizer):
    texts = ["Hello <|endoftext|> world <|im_end|> done", "日本語のテキスト и кириллица", "x" * 5000,
             "tabs\tand\nnewlines\r\n", "emoji 😀 <think>not a tag</think>"]
    write_shard(tmp_path / "ds/train/chunk1/example_train_0.jsonl.zst", [doc_line(t) for t in texts])
    manifest = cli.manifest(tmp_path, tmp_path / "ds")
    tokenize(manifest, tmp_path / "out", qwen3_tokenizer, "--spawn-workers", "1")
    slimtok("combine", "--output-root", tmp_path / "out")
    got = np.fromfile(tmp_path / "out/train.bin", dtype=np.uint32)
    # An independent path: transformers' fast tokenizer with special strings split as text.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(qwen3_tokenizer))
    want = []
    for t in texts:
        want += tok(t, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [151645]
    assert got.tolist() == want
    assert int((got >= 151643).sum()) == len(texts)  # the only special ids are the eos separators
    meta = json.loads((tmp_path / "out/meta.json").read_text())
    assert meta["vocab_size"] == 151669 and meta["eos_token_id"] == 151645


def test_dtype_auto_picks_uint16_for_small_vocab(tmp_path, bpe_tokenizer):
    make_dataset(tmp_path / "ds", train_shards=1, docs_per_shard=5, holdout_docs=2)
    manifest = cli.manifest(tmp_path, tmp_path / "ds")
    tokenize(manifest, tmp_path / "out", bpe_tokenizer, "--dtype", "auto", "--spawn-workers", "1")
    slimtok("combine", "--output-root", tmp_path / "out")
    meta = pickle.loads((tmp_path / "out/meta.pkl").read_bytes())
    assert meta["dtype"] == "uint16"
    got = np.fromfile(tmp_path / "out/train.bin", dtype=np.uint16)
    assert np.array_equal(got, reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train"))


def test_settings_drift_is_refused_before_writing(tmp_path, bpe_tokenizer, qwen3_tokenizer):
    make_dataset(tmp_path / "ds", train_shards=1, docs_per_shard=3, holdout_docs=1)
    manifest = cli.manifest(tmp_path, tmp_path / "ds")
    root = tmp_path / "out"
    tokenize(manifest, root, bpe_tokenizer, "--spawn-workers", "1")
    before = sorted(p.relative_to(root) for p in root.rglob("*") if "heartbeats" not in p.parts)
    for extra, word in [(["--eos-id", "1"], "eos_token_id"), (["--dtype", "auto"], "dtype"),
                        (["--text-key", "body"], "text_key")]:
        proc = tokenize(manifest, root, bpe_tokenizer, *extra, check=False)
        assert proc.returncode == 2 and word in proc.stderr, proc.stderr
    proc = tokenize(manifest, root, qwen3_tokenizer, check=False)
    assert proc.returncode == 2 and "tokenizer_sha256" in proc.stderr
    write_shard(tmp_path / "ds/train/chunk1/example_train_9.jsonl.zst", [doc_line("new shard")])
    other = cli.manifest(tmp_path, tmp_path / "ds")
    proc = tokenize(other, root, bpe_tokenizer, check=False)
    assert proc.returncode == 2 and "manifest: pinned" in proc.stderr
    after = sorted(p.relative_to(root) for p in root.rglob("*") if "heartbeats" not in p.parts)
    assert before == after


def test_combine_refuses_incomplete_split_and_allows_partial(tmp_path, bpe_tokenizer):
    make_dataset(tmp_path / "ds", train_shards=3, docs_per_shard=4, holdout_docs=2)
    manifest = cli.manifest(tmp_path, tmp_path / "ds")
    root = tmp_path / "out"
    tokenize(manifest, root, bpe_tokenizer, "--splits", "validation,test", "--spawn-workers", "1")
    proc = slimtok("combine", "--output-root", root, check=False)
    assert proc.returncode == 2
    assert "split train has 3 of 3 shards not done: train/chunk1/example_train_0 (pending)" in proc.stderr
    assert not (root / "train.bin").exists() and not (root / "val.bin").exists()
    slimtok("combine", "--output-root", root, "--splits", "validation,test")
    assert (root / "val.bin").stat().st_size > 0
    out = slimtok("combine", "--output-root", root, "--allow-partial").stdout
    assert "partial" in out and (root / "train.bin").stat().st_size == 0


def test_a_modified_tokenizer_copy_in_the_output_root_is_refused(tmp_path, bpe_tokenizer):
    make_dataset(tmp_path / "ds", train_shards=1, docs_per_shard=3, holdout_docs=1)
    manifest = cli.manifest(tmp_path, tmp_path / "ds")
    root = tmp_path / "out"
    tokenize(manifest, root, bpe_tokenizer, "--spawn-workers", "1", "--splits", "train")
    copy = root / "tokenizer/tokenizer.json"
    copy.write_text(copy.read_text().replace('"<|pad|>"', '"<|PAD|>"'))
    proc = tokenize(manifest, root, bpe_tokenizer, "--spawn-workers", "1", check=False)
    assert proc.returncode == 3 and "does not match job.json's tokenizer_sha256" in proc.stderr
    assert not (root / "done/validation").exists()


def test_the_tokenizer_copy_is_compact_proven_equal_and_older_canonical_copies_still_run(tmp_path, bpe_tokenizer):
    """The output root's tokenizer.json stores merges as "a b" strings; it loads back to the exact
    canonical JSON the job is pinned to, and a root written with the canonical copy (before the
    compact form) still relaunches and gives the same output."""
    from tokenizers import Tokenizer

    make_dataset(tmp_path / "ds", train_shards=2, docs_per_shard=5, holdout_docs=1)
    manifest = cli.manifest(tmp_path, tmp_path / "ds")
    root = tmp_path / "out"
    tokenize(manifest, root, bpe_tokenizer, "--spawn-workers", "1", "--splits", "train")
    copy = root / "tokenizer/tokenizer.json"
    job = json.loads((root / "job.json").read_text())
    merges = json.loads(copy.read_text())["model"]["merges"]
    assert merges and all(isinstance(m, str) and m.count(" ") == 1 for m in merges)
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == job["tokenizer_file_sha256"]
    canonical = Tokenizer.from_file(str(bpe_tokenizer / "tokenizer.json"))
    assert Tokenizer.from_file(str(copy)).to_str() == canonical.to_str()
    assert hashlib.sha256(canonical.to_str().encode()).hexdigest() == job["tokenizer_sha256"]
    slimtok("combine", "--output-root", root, "--splits", "train")
    first = (root / "train.bin").read_bytes()

    older = tmp_path / "older"  # the same job as an older slimtok left it: canonical copy, no file sha
    shutil.copytree(root, older)
    for done in [older / "done", older / "shards", older / "status"]:
        shutil.rmtree(done, ignore_errors=True)
    (older / "tokenizer/tokenizer.json").write_text(canonical.to_str())
    del job["tokenizer_file_sha256"]
    (older / "job.json").write_text(json.dumps(job))
    tokenize(manifest, older, bpe_tokenizer, "--spawn-workers", "1", "--splits", "train")
    slimtok("combine", "--output-root", older, "--splits", "train")
    assert (older / "train.bin").read_bytes() == first
    assert np.array_equal(np.frombuffer(first, np.uint32),
                          reference_ids(manifest, bpe_tokenizer / "tokenizer.json", 0, "train"))
