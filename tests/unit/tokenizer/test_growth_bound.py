"""A normalizer that multiplies text is bounded at run time: a document it would grow beyond
``GROWTH_LIMIT`` times is refused (failing its shard, naming why) before the encoder sees it, and
text it does not grow encodes to tokenizers' own ids."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

from slimtok.tokenizer import DocumentPolicy, Encoder, TokenizerError
from slimtok.tokenizer.encoder import GROWTH_LIMIT


def multiplying(normalizer: normalizers.Normalizer) -> tuple[Encoder, Tokenizer, int]:
    """(encoder, reference, eos) of a character-level tokenizer with ``normalizer``."""
    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz .")}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="."))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.add_special_tokens(["<eos>"])
    reference = Tokenizer.from_str(tok.to_str())
    eos = tok.token_to_id("<eos>")
    return Encoder(tok, DocumentPolicy(eos, "<eos>"), "uint32", "tokenizers"), reference, eos


@pytest.mark.parametrize("normalizer", [
    normalizers.Replace("q", "z" * 1000),  # a growth its parts state (1000 x)
    normalizers.Replace(Regex("q"), "z" * 1000),  # one they do not (a regex pattern): unknown
], ids=["known", "unknown"])
def test_a_document_the_normalizer_multiplies_is_refused_naming_the_growth(normalizer):
    enc, reference, eos = multiplying(normalizer)
    plain = "the quick brown fox " * 50  # one q per 20 characters: 50 x growth
    assert len(reference.normalizer.normalize_str(plain)) > GROWTH_LIMIT * len(plain)  # independent
    with pytest.raises(TokenizerError, match=r"normalizer lengthens a document's text \d+ times"):
        enc.encode(["fine", plain])
    # text without the multiplied character is encoded as tokenizers encodes it
    ok = "the lazy brown dog " * 50
    flat, _ = enc.encode(["fine", ok])
    want = [*reference.encode("fine").ids, eos, *reference.encode(ok).ids, eos]
    assert np.array_equal(flat, want)


def test_a_normalizer_bounded_by_its_parts_is_not_checked(monkeypatch):
    """Lowercase (bounded by construction) never pays for the run-time normalization."""
    enc, reference, eos = multiplying(normalizers.Lowercase())
    monkeypatch.setattr(Encoder, "_check_growth", lambda self, texts: pytest.fail("checked"))
    flat, _ = enc.encode(["The Fox"])
    assert np.array_equal(flat, [*reference.encode("The Fox").ids, eos])
