"""Start-up of `slimtok tokenize`: a relaunch that asks what job.json records loads no tokenizer and
encodes no disk-budget sample; one whose shards are all settled starts no worker; a launch in which
every shard failed for a setting can be corrected by relaunching with the right setting (re-pin)."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

import numpy as np
import orjson
import pytest

from helpers import cli
from helpers.cli import slimtok, slimtok_in_python, tokenize
from helpers.corpus import make_dataset, reference_ids
from slimtok.job import TokenizeSettings, pin_job
from slimtok.protocol import SPLITS


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("startup")
    ds = make_dataset(tmp / "ds", train_shards=2, docs_per_shard=6, holdout_docs=2)
    return cli.manifest(tmp, ds)


@contextmanager
def builtin_calls():
    """Names of every builtin (C) function called inside the block, Rust extension methods included."""
    names: list[str] = []

    def profile(_frame, event, arg):
        if event == "c_call":
            names.append(getattr(arg, "__qualname__", getattr(arg, "__name__", "")))

    sys.setprofile(profile)
    try:
        yield names
    finally:
        sys.setprofile(None)


def _loads_or_encodes(names: list[str]) -> list[str]:
    return [n for n in names if n.split(".")[-1] in {"from_str", "from_file", "to_str", "encode_batch",
                                                     "encode_batch_fast", "encode"}]


def _tight_disk(monkeypatch, free: int, total: int) -> None:
    """The filesystem of every output root seen as ``free`` of ``total`` bytes."""
    import slimtok.job.disk
    import slimtok.space

    def space(path):
        return slimtok.space.DiskSpace(str(path), free, total)

    monkeypatch.setattr(slimtok.space, "disk_space", space)
    monkeypatch.setattr(slimtok.job.disk, "disk_space", space)


def test_a_relaunch_asking_the_same_loads_no_tokenizer_and_reuses_the_pinned_sample(dataset, bpe_tokenizer, tmp_path,
                                                                                    monkeypatch):
    """With little room the bound on the tokens does not show room: the sample is encoded, pinned
    and reused by the relaunch, which loads and encodes nothing."""
    from slimtok.budget import estimate_token_bytes, sample_ratios
    from slimtok.job import requested_job
    from slimtok.job.disk import _bound_count, _encode_count
    from slimtok.manifest import read_manifest
    from slimtok.tokenizer import load_tokenizer
    from slimtok.tokenizer.loading import text_growth

    root = tmp_path / "out"
    settings = TokenizeSettings(manifest=str(dataset), output_root=str(root), tokenizer=str(bpe_tokenizer))
    # room for the encoded estimate, not for the bounded one (both computed here, independently of pin_job)
    entries = read_manifest(dataset)
    loaded = load_tokenizer(str(bpe_tokenizer))
    job = requested_job(settings, entries, loaded)
    spec = orjson.loads((bpe_tokenizer / "tokenizer.json").read_bytes())
    growth = text_growth(spec["normalizer"], spec["pre_tokenizer"])
    real = estimate_token_bytes(entries, 2, sampled=sample_ratios(entries, _encode_count(loaded.tokenizer, job)))
    bound = estimate_token_bytes(entries, 2, bounds=sample_ratios(entries, _bound_count(growth, job)))
    assert real.high < bound.high
    total = 10 * bound.high
    _tight_disk(monkeypatch, total // 10 + (real.high + bound.high) // 2, total)  # 10% is kept free
    first_lines: list[str] = []
    with builtin_calls() as first:
        pinned = pin_job(settings, log=first_lines.append).pinned
    assert _loads_or_encodes(first)  # the first launch parses and samples: the check below means something
    assert set(pinned.sampled_ratios) == set(SPLITS) and all(r > 0 for r, _ in pinned.sampled_ratios.values())
    lines: list[str] = []
    with builtin_calls() as again:
        relaunched = pin_job(settings, log=lines.append).pinned
    assert _loads_or_encodes(again) == []
    assert relaunched == pinned
    assert [line for line in lines if not line.startswith("disk:")] == \
        [line for line in first_lines if not line.startswith("disk:")]
    assert any(line.startswith("disk: about") and "sample of" in line for line in lines)
    # another path to the same bytes is the same job: loaded once more, refused nothing, recorded
    copy = tmp_path / "tok"
    copy.mkdir()
    for f in bpe_tokenizer.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    same = pin_job(TokenizeSettings(manifest=str(dataset), output_root=str(root), tokenizer=str(copy)))
    assert same.pinned == relaunched


def test_with_ample_room_the_launch_encodes_no_sample_and_pins_none(dataset, bpe_tokenizer, tmp_path, monkeypatch):
    """An upper bound on the tokens (every token covers a byte of text) that leaves room settles the
    disk check: the first launch encodes no sample, and a relaunch loads and encodes nothing."""
    import slimtok.job.disk

    monkeypatch.setattr(slimtok.job.disk, "_encode_count", lambda *a: pytest.fail("a disk sample was encoded"))
    root = tmp_path / "out"
    settings = TokenizeSettings(manifest=str(dataset), output_root=str(root), tokenizer=str(bpe_tokenizer))
    lines: list[str] = []
    pinned = pin_job(settings, log=lines.append).pinned
    assert pinned.sampled_ratios == {}
    assert any(line.startswith("disk: at most") and "train: upper bound from the text of" in line for line in lines)
    again: list[str] = []
    with builtin_calls() as calls:
        assert pin_job(settings, log=again.append).pinned == pinned
    assert [n for n in _loads_or_encodes(calls) if not n.startswith("str.")] == [] and again == lines


def test_a_relaunch_with_every_shard_done_starts_no_worker_and_imports_no_heavy_module(dataset, bpe_tokenizer,
                                                                                      tmp_path):
    from dataclasses import asdict

    from slimtok.claims import current_holder
    from slimtok.protocol import DoneRecord, LockRecord, OutputRoot, read_record, write_record

    root = tmp_path / "out"
    tokenize(dataset, root, bpe_tokenizer, "--spawn-workers", "1", dtype=None)
    beats = sorted((root / "heartbeats").iterdir())
    stamps = [p.stat().st_mtime_ns for p in beats]
    # a holder killed after committing left its lock: with no worker to pass the shard, the
    # launcher removes it
    out = OutputRoot(root)
    record = read_record(sorted((root / "done").rglob("*.json"))[0], DoneRecord)
    write_record(out.lock(record.shard), LockRecord(**asdict(current_holder(0, 0)), shard=record.shard,
                                                    token=record.token, claimed_at=0.0))
    heavy = ("heavy = sorted(m for m in ('transformers', 'huggingface_hub', 'torch', 'fastokens', 'slimtok.worker', "
             "'numpy', 'tokenizers') "
             "if m in sys.modules)\nprint('EXIT', code, 'HEAVY', heavy)")
    proc = slimtok_in_python("", heavy, "tokenize", "--manifest", dataset, "--output-root", root, "--tokenizer",
                             bpe_tokenizer, "--spawn-workers", "1", "--quiet")
    assert "EXIT 0 HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert "no worker started" in proc.stderr
    assert [p.stat().st_mtime_ns for p in beats] == stamps  # no worker wrote a heartbeat
    assert not list((root / "locks").rglob("*.lock"))


def test_a_launch_whose_every_shard_failed_on_a_setting_is_repinned_by_the_right_one(dataset, bpe_tokenizer,
                                                                                     tmp_path):
    clean = tmp_path / "clean"
    tokenize(dataset, clean, bpe_tokenizer, "--spawn-workers", "1", dtype=None)
    slimtok("combine", "--output-root", clean)
    root = tmp_path / "out"
    wrong = tokenize(dataset, root, bpe_tokenizer, "--spawn-workers", "1", "--text-key", "body",
                     dtype=None, check=False)
    assert wrong.returncode == 1, wrong.stderr
    failed = sorted(p.name for p in (root / "failed").rglob("*.json"))
    assert len(failed) == 4 and "'body'" in (root / "failed/train/chunk1/example_train_0.json").read_text()
    assert "no shard is done and 4 failed" in wrong.stderr and "job.json is re-pinned" in wrong.stderr
    right = tokenize(dataset, root, bpe_tokenizer, "--spawn-workers", "1", dtype=None)
    assert right.returncode == 0, right.stderr
    assert "job.json re-pinned" in right.stderr and "removed their 4 failed record(s)" in right.stderr
    assert "text_key: pinned 'body', requested 'text'" in right.stderr
    assert json.loads((root / "job.json").read_text())["text_key"] == "text"
    assert not list((root / "failed").rglob("*.json"))
    slimtok("combine", "--output-root", root)
    for name in ("train.bin", "train.idx", "val.bin", "test.bin"):
        assert (root / name).read_bytes() == (clean / name).read_bytes(), name
    expected = reference_ids(dataset, bpe_tokenizer / "tokenizer.json",
                             json.loads((root / "job.json").read_text())["eos_token_id"], "train")
    assert np.array_equal(np.fromfile(root / "train.bin", dtype=np.uint16 if expected.max() < 65536 else np.uint32),
                          expected)


def test_other_settings_are_still_refused_once_a_shard_is_done_or_claimed(dataset, bpe_tokenizer, tmp_path):
    root = tmp_path / "out"
    tokenize(dataset, root, bpe_tokenizer, "--spawn-workers", "1", "--splits", "train", dtype=None)
    before = (root / "job.json").read_bytes()
    refused = tokenize(dataset, root, bpe_tokenizer, "--spawn-workers", "1", "--text-key", "body",
                       dtype=None, check=False)
    assert refused.returncode == 2
    assert "text_key: pinned 'text', requested 'body'" in refused.stderr
    assert "shard(s) are done under the pinned settings" in refused.stderr
    assert (root / "job.json").read_bytes() == before
    # nothing done, but a claim is held: refused, saying how to re-pin
    for done in (root / "done").rglob("*.json"):
        done.unlink()
    lock = root / "locks/train/chunk1/example_train_0.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("{}")
    refused = tokenize(dataset, root, bpe_tokenizer, "--spawn-workers", "1", "--text-key", "body",
                       dtype=None, check=False)
    assert refused.returncode == 2 and "1 claim(s) under locks/" in refused.stderr
    assert "re-pinned to the new settings" in refused.stderr
    assert (root / "job.json").read_bytes() == before


def test_the_tokenizer_is_parsed_once_and_the_copy_is_compact_only_when_proven(bpe_tokenizer, tmp_path):
    """A job copies the canonical JSON of its one parse, with the merges as "a b" strings when every
    merge can be written so, else as they are (pairs)."""
    import hashlib

    import orjson
    from tokenizers import Tokenizer

    from slimtok.tokenizer import load_tokenizer

    source = (bpe_tokenizer / "tokenizer.json").read_bytes()
    canonical = Tokenizer.from_str(source.decode()).to_str()
    loaded = load_tokenizer(str(bpe_tokenizer))
    merges = orjson.loads(loaded.file_text())["model"]["merges"]
    assert all(isinstance(m, str) and m.count(" ") == 1 for m in merges)
    assert Tokenizer.from_str(loaded.file_text().decode()).to_str() == canonical == loaded.canonical_json
    assert loaded.sha256 == hashlib.sha256(canonical.encode()).hexdigest()
    assert loaded.source_file_sha256 == hashlib.sha256(source).hexdigest()
    # a merge holding a space has no unambiguous string form: the canonical JSON is copied as it is
    data = orjson.loads(source)
    vocab = data["model"]["vocab"]
    vocab["q "], vocab["q r"] = len(vocab), len(vocab) + 1
    data["model"]["merges"].append(["q ", "r"])
    spaced = tmp_path / "spaced"
    spaced.mkdir()
    (spaced / "tokenizer.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    (spaced / "tokenizer_config.json").write_bytes((bpe_tokenizer / "tokenizer_config.json").read_bytes())
    plain = load_tokenizer(str(spaced))
    assert plain.file_text() == plain.canonical_json.encode()
    assert Tokenizer.from_file(str(spaced / "tokenizer.json")).to_str() == plain.canonical_json


def test_the_compact_copy_keeps_merges_with_quotes_backslashes_and_brackets():
    """The copy's merges are rewritten as bytes: pieces holding JSON punctuation and escapes must
    come back as the same pairs (the copy loads back to the canonical JSON)."""
    import orjson
    from tokenizers import Tokenizer, models

    from slimtok.tokenizer.loading import _compact_copy

    pieces = ['"', "\\", "],[", ",", "\n", "a", '\\"', "[[", "]]", "\u0001", "é"]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [(a, b) for a in pieces[:6] for b in pieces[5:]]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    canonical = Tokenizer(models.BPE(vocab, merges)).to_str()
    copy = _compact_copy(canonical)
    assert orjson.loads(copy)["model"]["merges"] == [f"{a} {b}" for a, b in merges]
    assert Tokenizer.from_str(copy.decode()).to_str() == canonical
    spaced = Tokenizer(models.BPE({**vocab, "a ": len(vocab), "a a": len(vocab) + 1}, [*merges, ("a ", "a")]))
    assert _compact_copy(spaced.to_str()) == b""


def test_a_new_job_loads_no_tokenizer_and_another_form_of_it_is_the_same_job(dataset, bpe_tokenizer, tmp_path):
    """A new job from a local tokenizer.json pins from its JSON alone (no load, no to_str, no
    encode); its fingerprint is missing until a worker records it, and its copy (merge pairs as
    strings) loads to the same canonical JSON. A relaunch through another
    byte form of the same tokenizer (its canonical JSON elsewhere) is parsed, finds the fingerprint
    from the job's copy, and is the same job: nothing refused, the fingerprint recorded."""
    import hashlib

    from tokenizers import Tokenizer

    root = tmp_path / "out"
    settings = TokenizeSettings(manifest=str(dataset), output_root=str(root), tokenizer=str(bpe_tokenizer))
    with builtin_calls() as names:
        pinned = pin_job(settings).pinned
    assert [n for n in _loads_or_encodes(names) if n != "str.encode"] == [] and pinned.tokenizer_sha256 == ""
    canonical = Tokenizer.from_file(str(bpe_tokenizer / "tokenizer.json")).to_str()
    copy = root / "tokenizer/tokenizer.json"
    assert all(isinstance(m, str) for m in orjson.loads(copy.read_bytes())["model"]["merges"])
    assert Tokenizer.from_file(str(copy)).to_str() == canonical
    other = tmp_path / "other.json"
    other.write_text(canonical)
    again = pin_job(TokenizeSettings(manifest=str(dataset), output_root=str(root), tokenizer=str(other))).pinned
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    assert again.tokenizer_sha256 == expected
    assert json.loads((root / "job.json").read_text())["tokenizer_sha256"] == expected


def test_the_json_read_without_merges_is_exact_or_declines():
    """The launcher reads a tokenizer.json without its trailing merges only when nothing else can
    follow them; every other layout is declined (then parsed whole). Checked against orjson."""
    from slimtok.tokenizer.loading import _without_merges

    model = {"type": "BPE", "vocab": {"a": 0, "}": 1}, "merges": [["\\\"", "}}"], ["\"merges\":{", "a"]]}
    head = {"version": "1.0", "added_tokens": [{"id": 2, "content": "x"}]}
    exact = [{**head, "model": model}, {**head, "model": {**model, "merges": ["a b", "\\ \""]}},
             {**head, "model": {**model, "merges": []}}]
    for data in exact:
        for text in (orjson.dumps(data), orjson.dumps(data, option=orjson.OPT_INDENT_2)):
            expected = orjson.loads(text)
            del expected["model"]["merges"]
            parsed, copy = _without_merges(text)
            assert parsed == expected
            merges = data["model"]["merges"]
            pairs = bool(merges) and all(isinstance(m, list) and " " not in "".join(m) for m in merges)
            rewritten = orjson.loads(copy)
            assert rewritten["model"].pop("merges") == ([" ".join(m) for m in merges] if pairs else merges)
            assert rewritten == expected and (copy == text) == (not pairs)
    declined = [{"model": model, **head}, {**head, "model": model, "x": {"y": []}},
                {**head, "model": {"merges": [], **{k: v for k, v in model.items() if k != "merges"}}}]
    for data in declined:
        assert _without_merges(orjson.dumps(data)) is None
    assert _without_merges(b'{"model": {"merges": [["a", "b"]]}, "x": {"merges": []}}') is None


def test_a_tokenizer_that_only_the_worker_finds_broken_frees_its_claim_and_a_fix_repins(dataset, bpe_tokenizer,
                                                                                         tmp_path):
    """Valid JSON whose merges name an unknown token passes the launcher's JSON read; the worker's
    load refuses it, freeing its claim, so the relaunch with the right tokenizer re-pins the job."""
    import hashlib

    from tokenizers import Tokenizer

    broken = tmp_path / "broken"
    broken.mkdir()
    data = orjson.loads((bpe_tokenizer / "tokenizer.json").read_bytes())
    data["model"]["merges"] = [["no-such-piece", "x"], *data["model"]["merges"]]
    (broken / "tokenizer.json").write_bytes(orjson.dumps(data))
    root = tmp_path / "out"
    proc = tokenize(dataset, root, broken, "--spawn-workers", "1", dtype=None, check=False)
    assert proc.returncode != 0 and "not a tokenizers JSON file" in proc.stderr
    assert not [p for p in (root / "locks").rglob("*") if p.is_file()]
    proc = tokenize(dataset, root, bpe_tokenizer, "--spawn-workers", "1", dtype=None)
    assert "re-pinned" in proc.stdout + proc.stderr
    canonical = Tokenizer.from_file(str(bpe_tokenizer / "tokenizer.json")).to_str()
    pinned = json.loads((root / "job.json").read_text())
    assert pinned["tokenizer_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
