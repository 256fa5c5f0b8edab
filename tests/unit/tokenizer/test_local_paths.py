"""A tokenizer source that names a local file is never asked of the Hub: a missing one is refused
at once, naming the path (issue 24, item 8: it used to be retried as a Hub id for ~24 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slimtok.errors import TokenizerError
from slimtok.tokenizer import loading


@pytest.fixture
def hub_calls(monkeypatch) -> list[str]:
    """Every source handed to the Hub loader (which here fetches nothing)."""
    calls: list[str] = []

    def fake_hub(source: str, tokenizer_class: str = ""):
        calls.append(source)
        raise TokenizerError(f"cannot fetch tokenizer {source!r} from the Hub")

    monkeypatch.setattr(loading, "_from_hub", fake_hub)
    return calls


@pytest.mark.parametrize("source", ["tokenizer.json", "mytok/tokenizer.json", "tok.model", "./qwen", "~/tok",
                                    "/no/such/folder", "a/b/c"])
def test_a_missing_local_path_is_refused_naming_it_without_the_hub(tmp_path, monkeypatch, hub_calls, source):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TokenizerError) as caught:
        loading.load_tokenizer(source)
    assert hub_calls == []
    message = str(caught.value)
    assert message.startswith(f"{Path(source).expanduser().absolute()}: no such file or folder"), message
    assert "--tokenizer" in message


def test_an_org_name_whose_org_is_a_local_folder_is_a_missing_path(tmp_path, monkeypatch, hub_calls):
    """``models/qwen`` beside a ``models/`` folder is a mistyped local path: refused at once, naming it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "qwen3").mkdir(parents=True)
    with pytest.raises(TokenizerError) as caught:
        loading.load_tokenizer("models/qwen")
    assert hub_calls == []
    assert str(caught.value).startswith(f"{tmp_path / 'models' / 'qwen'}: no such file or folder")


@pytest.mark.parametrize("source", ["gpt2", "Qwen/Qwen3-0.6B", "org/name.v2"])
def test_a_hub_repo_id_still_goes_to_the_hub(tmp_path, monkeypatch, hub_calls, source):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TokenizerError):
        loading.load_tokenizer(source)
    assert hub_calls == [source]
    assert not os.listdir(tmp_path)
