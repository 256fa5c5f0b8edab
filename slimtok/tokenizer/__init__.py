"""Tokenizers: loading and pinning (:mod:`.loading`), the document policy (:mod:`.policy`) and the
encoder with its backends (:mod:`.encoder`).

The names below are imported from their module on first use: a launcher reads a tokenizer.json's
pinned facts through :mod:`.loading` alone and so never imports the encoder, numpy or tokenizers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ..errors import TokenizerError

#: Each public name and the submodule that defines it.
_HOMES = {
    **dict.fromkeys(("BackendReport", "Encoder", "LoadedBackends", "load_backends"), "encoder"),
    **dict.fromkeys(("DTYPES", "LoadedTokenizer", "load_tokenizer", "max_id_plus_one", "read_tokenizer_file",
                     "resolve_dtype"), "loading"),
    **dict.fromkeys(("BACKENDS", "BOS_CHOICES", "COMMON_EOS", "SPECIAL_TEXT", "DocumentPolicy"), "policy"),
    **dict.fromkeys(("IdShape", "check_start_sample"), "shape"),
}

__all__ = ["BACKENDS", "BOS_CHOICES", "COMMON_EOS", "DTYPES", "SPECIAL_TEXT", "BackendReport", "DocumentPolicy",
           "Encoder", "IdShape", "LoadedBackends", "LoadedTokenizer", "TokenizerError", "check_start_sample",
           "load_backends", "load_tokenizer", "max_id_plus_one", "read_tokenizer_file", "resolve_dtype"]

if TYPE_CHECKING:
    from .encoder import BackendReport, Encoder, LoadedBackends, load_backends
    from .loading import DTYPES, LoadedTokenizer, load_tokenizer, max_id_plus_one, read_tokenizer_file, resolve_dtype
    from .policy import BACKENDS, BOS_CHOICES, COMMON_EOS, SPECIAL_TEXT, DocumentPolicy
    from .shape import IdShape, check_start_sample


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(import_module(f".{home}", __name__), name)
    return value
