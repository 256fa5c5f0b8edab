"""Every tokenizer family under every sensible document policy gives the ids an independent
encoding with ``tokenizers`` alone gives: ``[bos]? + tokens(text) + [eos]``, special-token strings
in text as text (literal) or as their ids (parse); warnings where text can produce eos; dtype widths."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from helpers.corpus import sample_documents
from helpers.tokenizer_families import FAMILIES, build_family, documents, expected_bos, independent, slow_qwen3
from slimtok.tokenizer import Encoder, TokenizerError, load_tokenizer, resolve_dtype

BACKENDS = ["tokenizers", pytest.param("auto", marks=pytest.mark.skipif(
    importlib.util.find_spec("fastokens") is None, reason="fastokens not installed"))]
#: fastokens cannot load these families (Metaspace, BertNormalizer): they must fall back, saying why.
FASTOKENS_UNSUPPORTED = {"unigram", "wordpiece"}
POLICIES = [("auto", "literal"), ("never", "literal"), ("always", "parse"), ("auto", "parse")]
_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """name -> folder, each family built once for this module, on first use."""
    def get(name: str) -> Path:
        if name not in _BUILT:
            _BUILT[name] = build_family(name, tmp_path_factory.mktemp(name))
        return _BUILT[name]
    return get


def _cases():
    for name in FAMILIES:
        for bos, special in POLICIES:
            if bos == "always" and expected_bos(name, "always") is None:
                continue  # no bos to add: refused, see test_bos_always_without_a_bos_is_refused
            yield name, bos, special


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,bos,special", [slow_qwen3(*case) for case in _cases()])
def test_encoder_gives_the_independent_ids(families, name, bos, special, backend):
    folder = families(name)
    loaded = load_tokenizer(str(folder), bos=bos, special_text=special)
    enc = Encoder(loaded.tokenizer, loaded.policy, "uint32", backend)
    if backend == "auto":
        want_backend = "tokenizers" if name in FASTOKENS_UNSUPPORTED else "fastokens"
        assert enc.backend == want_backend, enc.report
        if name in FASTOKENS_UNSUPPORTED:
            assert enc.report.verification.startswith("fallback: fastokens cannot load")
    texts = documents(folder)
    want = independent(folder, texts, expected_bos(name, bos), FAMILIES[name].eos, special)
    flat, lengths = enc.encode(texts)
    assert lengths == [len(w) for w in want]
    assert np.array_equal(flat, np.concatenate([np.array(w, dtype=np.uint32) for w in want]))


@pytest.mark.parametrize("name,cut", [("llama3", True), ("wordpiece", True),
                                      ("llama2", False)])  # its toy merges span the spaces: no cut holds here
def test_pieces_start_with_bos_and_end_with_eos(families, name, cut):
    loaded = load_tokenizer(str(families(name)))
    enc = Encoder(loaded.tokenizer, loaded.policy, "uint32", "tokenizers")
    pieces = [f"Part {doc}\n" for doc in sample_documents(20, seed=2)]  # each meets the next at "\nP"
    text = "".join(pieces)
    chunks = list(enc.encode_pieces(pieces))
    (want,) = independent(families(name), [text], FAMILIES[name].template_bos, FAMILIES[name].eos, "literal")
    assert (len(chunks) > 1) == cut and np.array_equal(np.concatenate(chunks), want)
    tok = Tokenizer.from_file(str(families(name) / "tokenizer.json"))
    assert chunks[0][0] == tok.token_to_id(FAMILIES[name].template_bos)
    assert chunks[-1][-1] == tok.token_to_id(FAMILIES[name].eos)


@pytest.mark.parametrize("name", [slow_qwen3("unigram"), slow_qwen3("qwen3")])
def test_bos_always_without_a_bos_is_refused(families, name):
    with pytest.raises(TokenizerError, match="--bos always"):
        load_tokenizer(str(families(name)), bos="always")


def test_auto_bos_follows_each_template(families):
    for name, fam in FAMILIES.items():
        policy = load_tokenizer(str(families(name))).policy
        assert policy.bos_token == fam.template_bos, name
        assert policy.eos_token == fam.eos, name


def test_eos_producible_from_text_is_warned_naming_the_token(families):
    notes = load_tokenizer(str(families("unigram"))).notes
    tok = Tokenizer.from_file(str(families("unigram") / "tokenizer.json"))
    tok.encode_special_tokens = True
    assert tok.token_to_id("</s>") in tok.encode("a</s>", add_special_tokens=False).ids  # the premise
    assert any(n.startswith("warning: eos '</s>'") for n in notes), notes
    clean = load_tokenizer(str(families("qwen3"))).notes
    assert not any(n.startswith("warning") for n in clean), clean


def test_an_ordinary_eos_id_is_warned(families):
    tok = Tokenizer.from_file(str(families("qwen3") / "tokenizer.json"))
    dot = tok.token_to_id(".")
    loaded = load_tokenizer(str(families("qwen3")), eos_id=dot)
    assert loaded.policy.eos_id == dot and loaded.policy.eos_reason == f"--eos-id {dot}"
    assert any(n.startswith("warning: eos '.'") and "ordinary token" in n for n in loaded.notes), loaded.notes


def test_parse_notes_that_eos_strings_in_text_become_eos(families):
    notes = load_tokenizer(str(families("qwen3")), special_text="parse").notes
    assert any("<|im_end|>" in n and "--special-text parse" in n for n in notes), notes


def test_folder_without_config_says_which_eos_candidate_was_chosen(families, tmp_path):
    shutil.copy(families("qwen3") / "tokenizer.json", tmp_path / "tokenizer.json")
    loaded = load_tokenizer(str(tmp_path))
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert loaded.policy.eos_id == tok.token_to_id("<|endoftext|>")
    assert "no tokenizer_config.json" in loaded.notes[0] and "<|endoftext|>" in loaded.notes[0]


def test_qwen3_defaults_are_todays(families):
    loaded = load_tokenizer(str(families("qwen3")))
    p = loaded.policy
    assert (p.eos_id, p.bos_id, p.special_text) == (151645, None, "literal")


@pytest.mark.parametrize("name", [slow_qwen3(n) for n in FAMILIES])
def test_dtype_auto_width_follows_the_highest_id(families, name):
    loaded = load_tokenizer(str(families(name)))
    tok = Tokenizer.from_file(str(families(name) / "tokenizer.json"))
    highest = max(tok.get_vocab(with_added_tokens=True).values())
    assert loaded.vocab_size == highest + 1
    dtype, reason = resolve_dtype("auto", loaded)
    assert dtype == ("uint16" if highest < 65536 else "uint32") and "auto" in reason
    assert resolve_dtype("uint32", loaded)[0] == "uint32"
    if highest >= 65536:
        with pytest.raises(TokenizerError, match="uint16"):
            resolve_dtype("uint16", loaded)


def test_fingerprint_and_file_form_match_the_canonical_json(families):
    folder = families("qwen3")
    loaded = load_tokenizer(str(folder))
    canonical = Tokenizer.from_file(str(folder / "tokenizer.json")).to_str()
    import hashlib

    assert loaded.sha256 == hashlib.sha256(canonical.encode()).hexdigest()
    compact = loaded.file_text().decode()  # what a job copies: the merges as "a b" strings
    assert compact != canonical and Tokenizer.from_str(compact).to_str() == canonical


def test_offline_hub_id_gets_slimtoks_hint(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = ("from slimtok.tokenizer import load_tokenizer, TokenizerError\n"
            "try:\n    load_tokenizer('acme/no-such-tokenizer')\n"
            "except TokenizerError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "HF_HUB_OFFLINE" in out and "slimtok mirror acme/no-such-tokenizer" in out


@pytest.mark.parametrize("name", [slow_qwen3(n) for n in FAMILIES])
def test_the_one_parse_pins_the_canonical_fingerprint_and_the_copy_loads_back_to_it(families, name):
    """The file is parsed once as it is: the fingerprint is the sha256 of its canonical JSON (an
    independent from_file + to_str), and the copy a job keeps loads back to exactly that JSON."""
    import hashlib

    folder = families(name)
    loaded = load_tokenizer(str(folder))
    canonical = Tokenizer.from_file(str(folder / "tokenizer.json")).to_str()
    assert loaded.canonical_json == canonical
    assert loaded.sha256 == hashlib.sha256(canonical.encode()).hexdigest()
    assert Tokenizer.from_str(loaded.file_text().decode()).to_str() == canonical


@pytest.mark.parametrize("name", [slow_qwen3(n) for n in FAMILIES])
def test_the_token_bound_holds_for_every_family(families, name):
    """The disk budget may skip its encoded sample on the bound: no text may exceed it, including
    text that the normalization forms and lowercasing lengthen."""
    from slimtok.job.disk import _bound_count
    from slimtok.protocol import JobSettings

    folder = families(name)
    loaded = load_tokenizer(str(folder), bos="never")
    if loaded.growth is None:
        pytest.skip(f"{name}: its normalizer or pre-tokenizer allows no bound (the sample is encoded)")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    job = JobSettings(manifest_sha256="", shards=0, tokenizer="", tokenizer_sha256="", vocab_size=0, eos_token_id=0,
                      eos_token=None, dtype="uint32", text_key="text")
    texts = documents(folder) + ["\ufdfa" * 50, "\u0130\u023a" * 40, "ﬃ㍿" * 30, "東" * 100, " " * 300, "a b " * 99]
    bound = _bound_count(loaded.growth, job)
    for text in texts:
        assert len(tok.encode(text, add_special_tokens=False).ids) + 1 <= bound([text]), (name, text[:20])


#: Families whose separators the JSON cannot decide (is the special token's string, in the model's
#: vocabulary, producible from text?): pinned through the parse, as before.
UNDECIDED_FROM_JSON = {"unigram", "wordpiece"}
#: (--bos, --special-text, --eos-id): the defaults, each policy, and an ordinary token as eos (a
#: model token that is no added token: the JSON cannot tell whether text produces it).
JSON_CASES = [("auto", "literal", None), ("never", "parse", None), ("always", "literal", None), ("auto", "literal", 7)]


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory):
    from helpers.cli import slimtok
    from helpers.corpus import make_dataset
    tmp = tmp_path_factory.mktemp("json-route")
    make_dataset(tmp / "ds", train_shards=1, docs_per_shard=3, holdout_docs=1)
    slimtok("manifest", "--dataset-dir", tmp / "ds", "--output-dir", tmp / "m")
    return tmp / "m" / "manifest.jsonl"


def _pin_and_work(manifest: Path, root: Path, folder: Path, bos: str, special: str, eos_id: int | None) -> dict:
    """job.json after a real pin_job and one worker's whole run, without the fields that name the
    copy's bytes and the backend's timings."""
    import json

    from slimtok.job import TokenizeSettings, open_job, pin_job
    from slimtok.worker import Worker

    settings = TokenizeSettings(manifest=str(manifest), output_root=str(root), tokenizer=str(folder), bos=bos,
                                special_text=special, eos_id=eos_id, backend="tokenizers")
    pin_job(settings)
    assert Worker(open_job(settings), 0).run() == 0
    job = json.loads((root / "job.json").read_text())
    return {k: v for k, v in job.items()
            if k not in ("tokenizer_file_sha256", "backend_requested", "backend", "backend_verification")}


@pytest.mark.parametrize("name", [slow_qwen3(n) for n in FAMILIES])
def test_the_json_route_pins_what_the_parse_pins(families, name, tiny_manifest, tmp_path, monkeypatch):
    """From the JSON alone the launcher pins every fact the parse pins (notes and warnings word for
    word), or declines; once the worker has recorded the fingerprint, job.json equals the parse
    route's, whose fingerprint is an independent from_file + to_str."""
    import hashlib

    from slimtok.tokenizer import loading

    folder = families(name)
    data = (folder / "tokenizer.json").read_bytes()
    canonical_json = Tokenizer.from_file(str(folder / "tokenizer.json")).to_str()
    canonical = hashlib.sha256(canonical_json.encode()).hexdigest()
    routed = 0
    for n, (bos, special, eos_id) in enumerate(JSON_CASES):
        try:
            parsed = load_tokenizer(str(folder), eos_id, bos, special)
        except TokenizerError as exc:  # the JSON route refuses the same way, or leaves it to the parse
            try:
                assert loading.pin_facts_from_json(str(folder), data, eos_id, bos, special) is None
            except TokenizerError as again:
                assert str(again) == str(exc)
            continue
        facts = loading.pin_facts_from_json(str(folder), data, eos_id, bos, special)
        if facts is None:
            assert name in UNDECIDED_FROM_JSON or eos_id is not None, (name, bos, special, eos_id)
            continue
        assert name not in UNDECIDED_FROM_JSON
        assert (facts.tokenizer, facts.sha256) == (None, "")
        assert Tokenizer.from_str(facts.file_text().decode()).to_str() == canonical_json  # the copy
        for field in ("vocab_size", "policy", "notes", "growth", "source_file_sha256"):
            assert getattr(facts, field) == getattr(parsed, field), (name, field)
        by_json = _pin_and_work(tiny_manifest, tmp_path / f"json-{n}", folder, bos, special, eos_id)
        with monkeypatch.context() as m:
            m.setattr(loading, "pin_facts_from_json", lambda *a, **k: None)
            by_parse = _pin_and_work(tiny_manifest, tmp_path / f"parse-{n}", folder, bos, special, eos_id)
        assert by_json == by_parse and by_json["tokenizer_sha256"] == canonical
        assert (tmp_path / f"json-{n}" / "tokenizer" / "tokenizer.json").read_bytes() == facts.file_text()
        routed += 1
    assert routed or name in UNDECIDED_FROM_JSON


def test_an_undecidable_separator_takes_the_parse_route(families, tiny_manifest, tmp_path):
    """Unigram's eos is a special token inside its model vocabulary: the JSON cannot tell whether
    text produces it, so the launcher parses (and the fingerprint is pinned at once)."""
    import hashlib
    import json

    from slimtok.job import TokenizeSettings, pin_job
    from slimtok.tokenizer.loading import pin_facts_from_json

    folder = families("unigram")
    assert pin_facts_from_json(str(folder), (folder / "tokenizer.json").read_bytes()) is None
    settings = TokenizeSettings(manifest=str(tiny_manifest), output_root=str(tmp_path / "out"), tokenizer=str(folder))
    pin_job(settings)
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    canonical = Tokenizer.from_file(str(folder / "tokenizer.json")).to_str()
    assert job["tokenizer_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
