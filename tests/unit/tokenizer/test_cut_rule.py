"""Huge documents are cut into pieces for every supported tokenizer family, and the pieces' ids
joined are byte for byte the whole document's ids by ``tokenizers`` alone; the memory of the piece
path does not grow with the document (Prepend/Metaspace families included, which before found no
cut at all)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import slimtok.tokenizer.encoder as tokmod
from helpers.corpus import sample_documents
from helpers.tokenizer_families import CUT_VARIANTS, FAMILIES, build_family, independent, slow_qwen3
from slimtok.tokenizer import Encoder, load_tokenizer
from slimtok.tokenizer.encoder import cut_rule

#: the families whose text gets a prepended "▁" (the ones that found no cut before)
PREPENDED = ["llama2", "unigram", *CUT_VARIANTS]
ALL = [slow_qwen3(n) for n in [*FAMILIES, *CUT_VARIANTS]]
SCRIPTS = "東京タワー Москва мир مرحبا بالعالم नमस्ते दुनिया 안녕하세요 e\u0301 naïve café 👩‍👩‍👧 Ω≈ç√ 12345"


def document(shape: str, chars: int, seed: int = 0) -> str:
    """A document of about ``chars`` characters: real text with many newlines, the same on one
    line (spaces only), or text mixed with many scripts, marks and emoji."""
    parts: list[str] = []
    size = 0
    while size < chars:
        for doc in sample_documents(200, seed=seed):
            if shape == "no_newlines":
                doc = " ".join(doc.split())
            elif shape == "unicode":
                doc = doc.replace(" ", f" {SCRIPTS[len(doc) % 40:][:12]} ", 3)
            parts.append(doc)
            size += len(doc) + 2
        seed += 1
    return ("\n\n" if shape != "no_newlines" else " ").join(parts)


_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def folder_of(tmp_path_factory):
    def get(name: str) -> Path:
        if name not in _BUILT:
            _BUILT[name] = build_family(name, tmp_path_factory.mktemp(name))
        return _BUILT[name]
    return get


@pytest.mark.parametrize("shape", ["newlines", "no_newlines", "unicode"])
@pytest.mark.parametrize("name", ALL)
def test_pieces_of_a_huge_document_are_the_whole_documents_ids(folder_of, name, shape, monkeypatch):
    """A ~400 kB document, cut about every 32 Ki characters (the threshold scaled down), as a str
    (``encode``) and as reader pieces (``encode_pieces``), against tokenizers on the whole text."""
    monkeypatch.setattr(tokmod, "HUGE_DOC_CHARS", 32 << 10)
    monkeypatch.setattr(tokmod, "CUT_RETRY_CHARS", 4 << 10)
    folder = folder_of(name)
    loaded = load_tokenizer(str(folder))
    enc = Encoder(loaded.tokenizer, loaded.policy, "uint32", "tokenizers")
    text = document(shape, 384 << 10)
    (want,) = independent(folder, [text], loaded.policy.bos_token, FAMILIES.get(name, CUT_VARIANTS.get(name)).eos,
                          "literal")
    flat, lengths = enc.encode([text])
    assert np.array_equal(flat, want) and lengths == [len(want)]
    step = 20_000
    chunks = list(enc.encode_pieces(text[i:i + step] for i in range(0, len(text), step)))
    assert np.array_equal(np.concatenate(chunks), want)
    if shape != "unicode" or name not in ("llama2", "wordpiece"):
        # really cut (the toy llama2 learned merges across spaces, so its cuts are rare but exact)
        assert len(chunks) > (3 if name == "llama2" else 10), len(chunks)


def test_the_rule_follows_the_normalizer_and_pre_tokenizer():
    """Prepend + Replace(" ") cuts at a space and drops it; Metaspace cuts before a space; a Prepend
    whose string no character turns into allows no cut; others cut after newlines or before spaces."""
    prepend = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                   {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    rule = cut_rule(prepend, None)
    assert rule is not None and rule.drop == 1
    assert [m.start() for m in rule.places.finditer("ab cd\nef  gh")] == [2]
    metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    rule = cut_rule(None, metaspace)
    assert rule is not None and rule.drop == 0 and [m.start() for m in rule.places.finditer("ab cd\nef")] == [2]
    assert cut_rule({"type": "Prepend", "prepend": "▁"}, None) is None
    rule = cut_rule(None, {"type": "ByteLevel"})
    assert rule is not None and [m.start() for m in rule.places.finditer("ab cd\nef\n1")] == [2, 6]


def _peak_rss_script(folder: Path, chars: int) -> str:
    """A child that encodes a ``chars``-character document through ``encode_pieces`` from a
    generator (the document never exists whole) and prints its peak RSS growth in bytes."""
    return f"""
import resource, sys
import slimtok.tokenizer.encoder as tokmod
from helpers.corpus import sample_documents
from slimtok.tokenizer import Encoder, load_tokenizer
tokmod.HUGE_DOC_CHARS = 256 << 10
loaded = load_tokenizer({str(folder)!r})
enc = Encoder(loaded.tokenizer, loaded.policy, "uint32", "tokenizers")
docs = [" ".join(d.split()) for d in sample_documents(400, seed=5)]
enc.encode(docs)  # warm up: caches and arenas of a normal batch
def pieces():
    left = {chars}
    while left > 0:
        for d in docs:
            yield d + " "
            left -= len(d) + 1
            if left <= 0:
                return
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tokens = sum(chunk.size for chunk in enc.encode_pieces(pieces()))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, tokens)
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama2_prepend", "metaspace_first", "gpt2"])
def test_piece_memory_stays_flat_as_the_document_grows(folder_of, name):
    """Peak RSS growth of the piece path for a 4 MB and a 16 MB document on one line (pieces of
    ~2.5 kB, as no newline ever ends one): the larger needs at most 48 MB more, where holding the
    text alone would need 12 MB more and encoding it whole ~85 bytes per byte (~1 GB)."""
    folder = folder_of(name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(tokmod.__file__).parents[2]),
                                                        str(Path(__file__).parents[2])])}
    grown = {}
    for mb in (4, 16):
        out = subprocess.run([sys.executable, "-c", _peak_rss_script(folder, mb << 20)], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        grown[mb] = int(out[0])
        assert int(out[1]) > (mb << 20) // 8  # it really encoded the text
    assert grown[16] - grown[4] < 48 << 20, grown
