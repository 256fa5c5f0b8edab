"""A Rust panic of the tokenizer library (pyo3's PanicException, a BaseException) on the launcher's
start-up samples is a TokenizerError naming the tokenizer and the panic, one line and exit 2 at the
command line, never a traceback; in a worker's encoding it stays an EncoderCrash failing the shard."""

from __future__ import annotations

import pytest

from slimtok.errors import EncoderCrash, TokenizerError
from slimtok.job import disk
from slimtok.protocol import JobSettings
from slimtok.tokenizer import DocumentPolicy, Encoder, check_start_sample
from slimtok.tokenizer.loading import native_panics


class PanicException(BaseException):
    """What pyo3 raises for a Rust panic: not an Exception."""


class Panicking:
    """A tokenizer stand-in whose every encode panics, as a pathological pre-tokenizer regex does."""

    def encode(self, text: str, add_special_tokens: bool = True):
        raise PanicException("regex backtrack limit exceeded\nat src/pre_tokenizers/split.rs")

    encode_batch = encode


def test_the_shape_sample_turns_a_panic_into_a_one_line_tokenizer_error():
    with pytest.raises(TokenizerError) as caught:
        check_start_sample(Panicking(), 1000, "tok/tokenizer.json")  # type: ignore[arg-type]
    assert str(caught.value) == ("tok/tokenizer.json: the tokenizer's native encoder panicked on the start-up sample "
                                 "(PanicException: regex backtrack limit exceeded at src/pre_tokenizers/split.rs); "
                                 "fix the tokenizer")


def test_the_disk_budget_sample_turns_a_panic_into_a_tokenizer_error():
    job = JobSettings(manifest_sha256="", shards=1, tokenizer="tok", tokenizer_sha256="", vocab_size=10,
                      eos_token_id=0, eos_token="<eos>", dtype="uint16", text_key="text")
    count = disk._encode_count(Panicking(), job)  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match=r"^tok: .*panicked on the disk-budget sample \(PanicException"):
        count(["some text"])


def test_control_flow_and_ordinary_errors_pass_unchanged():
    for exc in (KeyboardInterrupt(), SystemExit(3), ValueError("x")):
        with pytest.raises(type(exc)), native_panics(lambda what: TokenizerError(what)):
            raise exc


def test_a_panic_while_encoding_documents_is_an_encoder_crash(bpe_tokenizer, monkeypatch):
    enc = Encoder(bpe_tokenizer / "tokenizer.json", DocumentPolicy(0, "<|endoftext|>"), "uint32", "tokenizers")
    monkeypatch.setattr(Encoder, "_encode_native", lambda self, texts: Panicking().encode(texts[0]))
    with pytest.raises(EncoderCrash, match="panicked on a batch of this shard"):
        enc.encode(["a"])
