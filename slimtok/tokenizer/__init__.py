"""Tokenizers: loading and pinning (:mod:`.loading`), the document policy (:mod:`.policy`) and the
encoder with its backends (:mod:`.encoder`)."""

from ..errors import TokenizerError
from .encoder import BACKENDS, BackendReport, Encoder
from .loading import DTYPES, LoadedTokenizer, load_tokenizer, max_id_plus_one, read_tokenizer_file, resolve_dtype
from .policy import BOS_CHOICES, COMMON_EOS, SPECIAL_TEXT, DocumentPolicy

__all__ = ["BACKENDS", "BOS_CHOICES", "COMMON_EOS", "DTYPES", "SPECIAL_TEXT", "BackendReport", "DocumentPolicy",
           "Encoder", "LoadedTokenizer", "TokenizerError", "load_tokenizer", "max_id_plus_one",
           "read_tokenizer_file", "resolve_dtype"]
