"""Loading a tokenizer and the facts a job is pinned to: fingerprint, id count, document policy.

A tokenizer comes from a ``tokenizer.json`` file, a local folder, or a Hugging Face Hub repo id.
It is parsed once (from the file's bytes as they are) and serialized once
(:attr:`LoadedTokenizer.canonical_json`), whose sha256 is the fingerprint; a job copies that JSON
with its merges in the compact form that loads back to it (:attr:`LoadedTokenizer.file_bytes`).

A local ``tokenizer.json`` is first read as JSON only (:func:`pin_facts_from_json`): every fact a
job pins but the fingerprint, exactly as the parse gives them, or None when the JSON cannot tell
(then it is parsed). The fingerprint is then taken by the first worker that loads the tokenizer.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import SlimtokError, TokenizerError
from .policy import (
    SPECIAL_TEXT,
    DocumentPolicy,
    TokenizerConfig,
    TokenLookup,
    producible_by_encoding,
    separator_warnings,
    settle_bos,
    settle_eos,
    special_ids_of,
)

if TYPE_CHECKING:  # imported where a tokenizer is parsed: reading the JSON alone needs no tokenizers
    from tokenizers import Tokenizer

DTYPES = ("uint32", "uint16", "auto")
_REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
#: A source ending in one of these names a file (``tokenizer.json``, ``out/tokenizer.json``), never
#: a Hub repo: a missing one is refused at once instead of being asked of the Hub (and retried).
_FILE_SUFFIXES = (".json", ".model")
_UINT16_IDS = 1 << 16


@dataclass(frozen=True)
class LoadedTokenizer:
    """A tokenizer with the identity facts a job is pinned to and the lines to print at start."""

    #: None when read from the JSON alone (:func:`pin_facts_from_json`)
    tokenizer: Tokenizer | None
    source: str
    #: "" when read from the JSON alone: the first worker that loads the tokenizer records it
    sha256: str
    vocab_size: int
    policy: DocumentPolicy
    #: start-up lines: which separators were chosen and why, then warnings
    notes: tuple[str, ...] = ()
    #: ``Tokenizer.to_str()`` taken once at load; ``sha256`` is its digest
    canonical_json: str = field(default="", repr=False, compare=False)
    #: what a job copies: the canonical JSON with merges as "a b" strings (empty: the canonical
    #: JSON itself, see :func:`_compact_copy`); read from the JSON alone, the file's bytes or the
    #: same with merge pairs as strings (:func:`_without_merges`)
    file_bytes: bytes = field(default=b"", repr=False, compare=False)
    #: sha256 of the tokenizer.json as read (empty when built through transformers)
    source_file_sha256: str = ""
    #: an upper bound on tokens per UTF-8 byte of a document's text (separators aside), from the
    #: normalizer and pre-tokenizer (:func:`text_growth`); None when they allow no bound
    growth: float | None = None

    @property
    def eos_token_id(self) -> int:
        return self.policy.eos_id

    @property
    def eos_token(self) -> str | None:
        return self.policy.eos_token

    def to_json(self) -> str:
        """The canonical JSON, whose sha256 is ``sha256``."""
        return self.canonical_json

    def file_text(self) -> bytes:
        """What a job copies into its root: the bytes it was parsed from, else the canonical JSON."""
        return self.file_bytes or self.canonical_json.encode()

    def parsed(self) -> Tokenizer:
        """The tokenizer, parsed from the file's bytes when it was read from the JSON alone."""
        return self.tokenizer or _parse(Path(self.source), self.file_bytes)


def load_tokenizer(source: str, eos_id: int | None = None, bos: str = "auto",
                   special_text: str = "literal", tokenizer_class: str = "") -> LoadedTokenizer:
    """Load ``source`` and settle its document policy (see :mod:`slimtok.tokenizer.policy`).

    ``tokenizer_class``: the transformers class that builds a tokenizer without a tokenizer.json
    (a folder or Hub repo of vocabulary files); without one such a tokenizer is refused, and with
    one a tokenizer.json is refused (:func:`check_tokenizer_class`)."""
    if special_text not in SPECIAL_TEXT:
        raise TokenizerError(f"--special-text {special_text!r} is not one of {', '.join(SPECIAL_TEXT)}")
    (tok, file_bytes, canonical, source_sha), config = _resolve(source, tokenizer_class)
    id_count = max_id_plus_one(tok)
    post_processor = orjson.loads(tok.post_processor.__getstate__()) if tok.post_processor else None
    policy = _settle(tok, config, eos_id, bos, special_text, id_count, post_processor, source)
    notes = _policy_notes(policy) + separator_warnings(policy, special_ids_of(tok),
                                                       lambda i, t: producible_by_encoding(tok, i, t))
    sha = hashlib.sha256(canonical.encode()).hexdigest()
    growth = text_growth(*(orjson.loads(part.__getstate__()) if part else None
                           for part in (tok.normalizer, tok.pre_tokenizer)))
    return LoadedTokenizer(tok, source, sha, id_count, policy, tuple(notes), canonical, file_bytes, source_sha, growth)


def _settle(tok: TokenLookup, config: TokenizerConfig, eos_id: int | None, bos: str, special_text: str,
            id_count: int, post_processor: dict[str, Any] | None, source: str) -> DocumentPolicy:
    eos, eos_token, eos_reason = settle_eos(tok, config, eos_id, id_count, source)
    bos_id, bos_token, bos_reason = settle_bos(tok, config, bos, post_processor, source)
    return DocumentPolicy(eos, eos_token, bos_id, bos_token, special_text, eos_reason, bos_reason)


def _policy_notes(policy: DocumentPolicy) -> list[str]:
    """The start-up lines naming each separator and why, and what special-token text becomes."""
    return [f"eos: {policy.eos_token!r} (id {policy.eos_id}) from {policy.eos_reason}",
            f"bos: {policy.bos_token!r} (id {policy.bos_id}) from {policy.bos_reason}" if policy.bos_id is not None
            else f"bos: none ({policy.bos_reason})",
            "special-token strings in text: " + ("ordinary text (--special-text literal)" if policy.literal
                                                 else "their control ids (--special-text parse)")]


class JsonVocabulary:
    """The ids a tokenizer.json gives its tokens, read from the JSON as ``tokenizers`` assigns them:
    an added token is looked up before the model's vocabulary (both ways).

    Built only when that is exact (:meth:`read`): a BPE, WordPiece or WordLevel vocabulary whose ids
    are unique, a Unigram one (id = index) whose pieces are unique, and added tokens, each non-empty
    and named once, whose recorded ids are the ones ``tokenizers`` gives them on load (the model's
    id for a token it holds, else the next id after the vocabulary and the added tokens so far),
    listed in ascending id order.
    """

    def __init__(self, model_ids: dict[str, int], added: dict[str, int], special_ids: set[int]):
        self.model_ids = model_ids
        self.added = added
        self.special_ids = special_ids
        self._model_tokens = {i: t for t, i in model_ids.items()}
        self._added_tokens = {i: t for t, i in added.items()}

    @classmethod
    def read(cls, data: dict[str, Any]) -> JsonVocabulary | None:
        model = data.get("model")
        added_tokens = data.get("added_tokens") or []
        if not isinstance(model, dict) or not isinstance(added_tokens, list):
            return None
        vocab = model.get("vocab")
        if model.get("type") == "Unigram" and isinstance(vocab, list):
            model_ids = {piece[0]: i for i, piece in enumerate(vocab)
                         if isinstance(piece, list) and piece and isinstance(piece[0], str)}
        elif model.get("type") in ("BPE", "WordPiece", "WordLevel") and isinstance(vocab, dict):
            model_ids = vocab
            if len(set(vocab.values())) != len(vocab):
                return None
        else:
            return None
        if len(model_ids) != len(vocab) or not all(type(i) is int for i in model_ids.values()):
            return None
        added: dict[str, int] = {}
        special: set[int] = set()
        for token in added_tokens:
            content = token.get("content") if isinstance(token, dict) else None
            if not isinstance(content, str) or not content or content in added:
                return None
            expected = model_ids.get(content)
            if expected is None:
                top = max(added.values(), default=None)
                expected = len(vocab) if top is None or (top < len(vocab) and vocab) else top + 1
            # in ascending id order, so the order tokenizers adds them in is the file's either way
            if token.get("id") != expected or expected <= max(added.values(), default=-1):
                return None
            added[content] = expected
            if token.get("special") is True:
                special.add(expected)
        return cls(model_ids, added, special)

    def token_to_id(self, token: str) -> int | None:
        found = self.added.get(token)
        return self.model_ids.get(token) if found is None else found

    def id_to_token(self, token_id: int) -> str | None:
        found = self._added_tokens.get(token_id)
        return self._model_tokens.get(token_id) if found is None else found

    def id_count(self) -> int:
        """:func:`max_id_plus_one`, by the same rule."""
        n = len(self.model_ids)
        added = max(self.added.values(), default=-1) + 1
        if n == 0 or self.id_to_token(n - 1) is not None:
            return max(n, added)
        return max(max(self.model_ids.values()), added - 1) + 1

    def producible(self, token_id: int, token: str, load_model: Callable[[], dict[str, Any]]) -> bool | None:
        """Whether ``token`` as literal text can encode to ``token_id``, when the JSON tells; None
        (cannot tell) otherwise. Special tokens are not matched in literal text, so a special added
        token's id comes only from the model: never from one that lacks it, and never from a BPE
        (without ``ignore_merges``) whose every output is a one-character symbol, a merge's join,
        its unk or a byte-fallback token, when the token is none of those."""
        if token_id not in self.special_ids:
            return None
        if token_id not in self._model_tokens:
            return False
        model = load_model()
        if model.get("type") != "BPE" or model.get("ignore_merges") or model.get("dropout"):
            return None
        prefix, suffix = model.get("continuing_subword_prefix") or "", model.get("end_of_word_suffix") or ""
        if not prefix.isascii() or token == model.get("unk_token") or \
                (model.get("byte_fallback") and re.fullmatch(r"<0x[0-9A-F]{2}>", token)):
            return None
        if any(token.startswith(p) and token.endswith(s) and len(token) - len(p) - len(s) == 1
               for p in {"", prefix} for s in {"", suffix}):
            return None
        merges = model.get("merges")
        if not isinstance(merges, list):
            return None
        cut = len(prefix)  # tokenizers joins a merge as a + b[len(prefix):]
        for merge in merges:
            pair = merge.split(" ") if isinstance(merge, str) else merge
            if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
                return None
            if pair[0] + pair[1][cut:] == token:
                return None
        return False


def pin_facts_from_json(source: str, data: bytes, eos_id: int | None = None, bos: str = "auto",
                        special_text: str = "literal", file_sha256: str = "") -> LoadedTokenizer | None:
    """What :func:`load_tokenizer` gives for the local tokenizer.json ``source`` whose bytes are
    ``data`` (sha256 ``file_sha256``, computed when not given), from its JSON alone: no tokenizer
    (``tokenizer`` None), no fingerprint (``sha256`` ""), the copy the file's bytes or their
    compact form (:func:`_without_merges`). None when
    the JSON cannot tell some fact exactly (see :class:`JsonVocabulary`,
    :meth:`JsonVocabulary.producible`): the caller parses the tokenizer. A file that is valid JSON
    but that tokenizers cannot load is refused by the first worker, not here.

    Invariant: every other field, notes included, equals :func:`load_tokenizer`'s."""
    if special_text not in SPECIAL_TEXT:
        raise TokenizerError(f"--special-text {special_text!r} is not one of {', '.join(SPECIAL_TEXT)}")
    file = local_tokenizer_file(source)
    try:
        parsed, copy = _without_merges(data) or (orjson.loads(data), data)
    except orjson.JSONDecodeError:
        return None  # the parse says what is wrong
    if file is None or not isinstance(parsed, dict):
        return None
    vocab = JsonVocabulary.read(parsed)
    if vocab is None:
        return None
    id_count = vocab.id_count()
    try:
        policy = _settle(vocab, _config(file.parent), eos_id, bos, special_text, id_count,
                         parsed.get("post_processor"), source)
    except (KeyError, TypeError, ValueError, IndexError):
        return None  # a template shaped otherwise than the parse serializes it: let the parse read it
    def model() -> dict[str, Any]:  # with its merges: they are parsed only when a separator asks
        return parsed["model"] if "merges" in parsed["model"] else orjson.loads(data)["model"]

    decided = {(i, t): vocab.producible(i, t, model) for i, t in ((policy.eos_id, policy.eos_token),
                                                            (policy.bos_id, policy.bos_token))
               if i is not None and t is not None}
    if None in decided.values():
        return None
    notes = _policy_notes(policy) + separator_warnings(policy, vocab.special_ids, lambda i, t: bool(decided[i, t]))
    growth = text_growth(parsed.get("normalizer"), parsed.get("pre_tokenizer"))
    return LoadedTokenizer(None, source, "", id_count, policy, tuple(notes), "", copy,
                           file_sha256 or hashlib.sha256(data).hexdigest(), growth)


#: Outside its strings, the tail of a tokenizer.json from its last ``"merges"`` key is the colon,
#: an array of arrays or strings (brackets and commas), then the model's and the file's closing
#: braces: before the first string, between two, after the last (or all of it, with no string).
_WS = rb"[ \t\n\r]*"
_PUNCT = rb"[\[\], \t\n\r]*"
_TAIL_FIRST = re.compile(_WS + rb":" + _WS + rb"\[" + _PUNCT)
_TAIL_BETWEEN = re.compile(_PUNCT)
_TAIL_LAST = re.compile(_PUNCT + rb"\]" + _WS + rb"\}" + _WS + rb"\}" + _WS)
_TAIL_ALL = re.compile(_WS + rb":" + _WS + rb"\[" + _PUNCT + rb"\]" + _WS + rb"\}" + _WS + rb"\}" + _WS)


def _without_merges(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(the tokenizer.json parsed without the merges of a file that ends with them, what a job
    copies), else None. The merges are a BPE's usual last field and most of the file, and only a
    separator check needs them. The copy is the file with its merge pairs written as ``"a b"``
    strings when every pair can be (:func:`_pairs_as_strings`), else the file's bytes.

    Exact: the tail from the last ``"merges"`` key holds, outside strings (escaped backslashes and
    quotes masked, :func:`_mask_escapes`), no key and no object, only an array and two closing
    braces; so every other key and value lies in the head, which is parsed closed by the same two
    braces. The check splits the tail at its quotes once (~4x cheaper than parsing the merges)."""
    at = data.rfind(b'"merges"')
    head = data[:at].rstrip()
    if at < 0 or not head.endswith(b",") or b"\x00" in data:
        return None
    tail = data[at + len(b'"merges"'):]
    masked = _mask_escapes(tail) if b"\\" in tail else tail
    parts = masked.split(b'"')
    if len(parts) % 2 == 0:
        return None
    if len(parts) == 1:
        if not _TAIL_ALL.fullmatch(parts[0]):
            return None
    elif not (_TAIL_FIRST.fullmatch(parts[0]) and _TAIL_LAST.fullmatch(parts[-1])
              and all(_TAIL_BETWEEN.fullmatch(p) for p in set(parts[2:-1:2]))):
        return None
    try:
        parsed = orjson.loads(head[:-1] + b"}}")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("model"), dict):
        return None
    pairs = _pairs_as_strings(masked, parts)
    return parsed, data[:at] + b'"merges":' + pairs + b"}}" if pairs else data


#: Outside the strings of merges written as pairs: within a pair, between two pairs, and around.
_IN_PAIR = re.compile(_WS + rb"," + _WS)
_BETWEEN_PAIRS = re.compile(_WS + rb"\]" + _WS + rb"," + _WS + rb"\[" + _WS)
_PAIRS_FIRST = re.compile(_WS + rb":" + _WS + rb"\[" + _WS + rb"\[" + _WS)
_PAIRS_LAST = re.compile(_WS + rb"\]" + _WS + rb"\]" + _WS + rb"\}" + _WS + rb"\}" + _WS)


def _pairs_as_strings(masked: bytes, parts: list[bytes]) -> bytes:
    """The merges array with each pair as one ``"a b"`` string, from the masked tail (see
    :func:`_mask_escapes`) and its split at its quotes (strings at odd places), or b"" unless the
    tail is exactly an array of two-string pairs with no space in any string. tokenizers and fastokens
    split such a string at its one space, so it loads to the same pairs and faster (see
    :func:`_compact_copy`)."""
    if len(parts) % 4 != 1 or len(parts) < 5 or not _PAIRS_FIRST.fullmatch(parts[0]) \
            or not _PAIRS_LAST.fullmatch(parts[-1]):
        return b""
    within, between = set(parts[2::4]), set(parts[4:-1:4])
    if not all(_IN_PAIR.fullmatch(p) for p in within) or not all(_BETWEEN_PAIRS.fullmatch(p) for p in between):
        return b""
    if len(within) == 1 and len(between) <= 1:  # one layout throughout: count the spaces outside strings
        pairs = len(parts) // 4
        outside = parts[0].count(b" ") + parts[-1].count(b" ") + pairs * next(iter(within)).count(b" ") \
            + (pairs - 1) * (next(iter(between)).count(b" ") if between else 0)
        if masked.count(b" ") != outside:
            return b""
    elif b" " in b"".join(parts[1::2]):
        return b""
    return _unmask_escapes(b'["' + b'","'.join(map(b" ".join, zip(parts[1::4], parts[3::4], strict=True))) + b'"]')


@contextmanager
def native_panics(error: Callable[[str], SlimtokError]) -> Iterator[None]:
    """Inside, a Rust panic of the tokenizer library becomes ``error(what)``, ``what`` naming it on
    one line. A panic surfaces as pyo3's ``PanicException``, a ``BaseException`` that handlers of
    ``Exception`` let through (a traceback in a launcher, a dead worker); Python's own control flow
    (KeyboardInterrupt, SystemExit, GeneratorExit) and every ``Exception`` pass unchanged."""
    try:
        yield
    except (Exception, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        raise error(f"{type(exc).__name__}: {exc}".replace("\n", " ")) from exc


def canonical_sha256(tok: Tokenizer) -> str:
    """The fingerprint a job pins: sha256 of the tokenizer's canonical JSON (``to_str``)."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def max_id_plus_one(tok: Tokenizer) -> int:
    """Number of ids a reader must allow: highest id + 1, added tokens included.

    A model of n ids whose id n-1 exists is taken to hold ids 0..n-1 (every trained or converted
    vocabulary does), which needs no vocabulary walk; one without id n-1 has gaps and is walked. The
    encoder refuses any id its dtype cannot hold, so a vocabulary that breaks this rule cannot
    write wrong ids.
    """
    model_ids = tok.get_vocab_size(with_added_tokens=False)
    added = max(tok.get_added_tokens_decoder(), default=-1) + 1
    if model_ids == 0 or tok.id_to_token(model_ids - 1) is not None:
        return max(model_ids, added)
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1


def resolve_dtype(requested: str, tok: LoadedTokenizer) -> tuple[str, str]:
    """(on-disk dtype, why): ``auto`` is uint16 when every id the tokenizer can emit is < 65,536."""
    if requested not in DTYPES:
        raise TokenizerError(f"dtype {requested!r} is not one of {', '.join(DTYPES)}")
    ids = tok.vocab_size
    fits16 = ids <= _UINT16_IDS
    if requested == "uint16" and not fits16:
        raise TokenizerError(f"--dtype uint16 cannot hold {ids} ids (at most 65536)", tok.source,
                             "use --dtype uint32 or auto")
    if requested != "auto":
        return requested, f"--dtype {requested}"
    dtype = "uint16" if fits16 else "uint32"
    return dtype, f"--dtype auto: the tokenizer emits ids 0..{ids - 1}, {'<' if fits16 else '>='} 65,536"


def _config(folder: Path) -> TokenizerConfig:
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return TokenizerConfig()
    try:
        data = orjson.loads(config.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise TokenizerError(f"not valid JSON ({exc})", config, "fix or remove the file") from exc
    return TokenizerConfig(True, _token_name(data.get("eos_token")), _token_name(data.get("bos_token")))


def _token_name(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def check_tokenizer_class(source: str, file: Path | None, tokenizer_class: str) -> None:
    """A tokenizer.json is read as it is, so a transformers class goes only with a tokenizer that
    has none (TokenizerError otherwise). ``file``: ``source``'s tokenizer.json (local or fetched)."""
    if tokenizer_class and file is not None:
        raise TokenizerError(f"has a tokenizer.json, which is read as it is; --tokenizer-class {tokenizer_class} "
                             "is only for a tokenizer without one", file, "leave --tokenizer-class out")


def _from_transformers(source: str, tokenizer_class: str) -> tuple[_Parsed, TokenizerConfig]:
    """Build through the transformers class ``tokenizer_class``, for folders and repos without a
    tokenizer.json; refused without a class. Remote code is never run (``trust_remote_code=False``):
    a tokenizer whose config asks for it is refused by transformers, without its prompt."""
    if not tokenizer_class:
        raise TokenizerError("has no tokenizer.json; slimtok does not let transformers guess a tokenizer from "
                             "tokenizer_config.json (without its vocabulary files it builds one of 2 or 3 ids, "
                             "which turns every document into a lone eos)", source,
                             "pass the folder or file of the model's tokenizer.json, or name the transformers "
                             "class that builds it from the vocabulary files with --tokenizer-class "
                             "(e.g. GPT2Tokenizer, LlamaTokenizer)")
    try:
        import transformers

        cls = getattr(transformers, tokenizer_class, None)
        if not isinstance(cls, type) or not hasattr(cls, "from_pretrained"):
            raise TokenizerError(f"--tokenizer-class {tokenizer_class!r} is not a transformers tokenizer class",
                                 source, "name a class transformers exports, e.g. GPT2Tokenizer or LlamaTokenizer")
        tok = cls.from_pretrained(source, trust_remote_code=False)
    except TokenizerError:
        raise
    except Exception as exc:  # transformers raises many types; all mean "cannot load"
        raise TokenizerError(f"cannot load tokenizer {source!r} with {tokenizer_class}: {exc}") from exc
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"tokenizer {source!r} has no fast (tokenizers) version", source,
                             "convert it and save a tokenizer.json")
    canonical = backend.to_str()
    return (backend, _compact_copy(canonical), canonical, ""), TokenizerConfig(True, tok.eos_token, tok.bos_token)


def local_tokenizer_file(source: str) -> Path | None:
    """The tokenizer.json a local ``source`` (a file, or a folder holding one) names; None for a
    folder without one or a Hub repo id. Its folder's tokenizer_config.json goes with it."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return path / "tokenizer.json"
    return None


#: (tokenizer, the bytes it was parsed from, its canonical JSON, sha256 of the file as read)
_Parsed = tuple["Tokenizer", bytes, str, str]


def _resolve(source: str, tokenizer_class: str) -> tuple[_Parsed, TokenizerConfig]:
    file = local_tokenizer_file(source)
    check_tokenizer_class(source, file, tokenizer_class)
    if file is not None:
        return _read_file(file), _config(file.parent)
    if Path(source).expanduser().is_dir():
        return _from_transformers(str(Path(source).expanduser()), tokenizer_class)
    if looks_local(source):
        raise TokenizerError("no such file or folder (a path, not a Hub repo id, so nothing was fetched)",
                             Path(source).expanduser().absolute(),
                             "check the path given to --tokenizer (an org/name is asked of the Hub only when no "
                             "local folder is named org)")
    return _from_hub(source, tokenizer_class)


def looks_local(source: str) -> bool:
    """Whether a tokenizer source that exists nowhere locally is still a local path, never a Hub id:
    anything not shaped ``name`` or ``org/name``, a name starting with ``.`` or ``~``, a file name
    (``.json``, ``.model``), and an ``org/name`` whose ``org`` is a folder here (``models/qwen``
    beside a ``models/`` folder is a mistyped path; a Hub org is not a local folder)."""
    if not _REPO_ID.fullmatch(source) or source.startswith((".", "~")) or source.endswith(_FILE_SUFFIXES):
        return True
    return "/" in source and Path(source).parent.is_dir()


def read_tokenizer_file(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust loader raises a bare Exception
        raise TokenizerError(f"not a tokenizers JSON file ({exc})", path) from exc


def _parse(path: Path, data: bytes) -> Tokenizer:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(data.decode())
    except Exception as exc:  # the Rust loader raises a bare Exception; decode a UnicodeDecodeError
        raise TokenizerError(f"not a tokenizers JSON file ({exc})", path) from exc


def _read_file(path: Path) -> _Parsed:
    """Parse ``path`` once, as it is, and serialize it once; the copy a job keeps is the canonical
    JSON with its merges as ``"a b"`` strings when every merge can be written so (see
    :func:`_compact_copy`), else the canonical JSON itself (``file_bytes`` empty)."""
    data = path.read_bytes()
    tok = _parse(path, data)
    canonical = tok.to_str()
    return tok, _compact_copy(canonical), canonical, hashlib.sha256(data).hexdigest()


def _compact_copy(canonical: str) -> bytes:
    """The canonical JSON with its BPE merges as ``"a b"`` strings, or b"" when some merge holds a
    space (its string would be ambiguous) or the model has no merges. tokenizers and fastokens
    split such a string at its one space, so it loads back to the same pairs, i.e. to exactly the
    canonical JSON; the string form loads faster (Qwen3 here: tokenizers 0.38 vs 0.49 CPU-s in a
    fresh python, fastokens 0.97 vs 1.38).

    The merges are the last field of the canonical JSON (``"merges":[["a","b"],...]}}``: a key
    cannot occur inside a JSON string, whose quotes are escaped). They are rewritten as bytes, not
    parsed (an orjson parse of Qwen3's 151k pairs costs ~0.2 CPU-s): with escaped backslashes and
    quotes masked (control characters are always escaped, so NUL bytes are free to mask with),
    every remaining quote delimits a string, and the pieces between them must be exactly the
    array's punctuation, else nothing is rewritten.
    """
    text = canonical.encode()
    at = text.rfind(b'"merges":[[')
    if at < 0 or not text.endswith(b"]]}}") or b"\x00" in text:
        return b""
    masked = _mask_escapes(text[at + len(b'"merges"'):])
    pairs = _pairs_as_strings(masked, masked.split(b'"'))
    return text[:at] + b'"merges":' + pairs + b"}}" if pairs else b""


def _mask_escapes(text: bytes) -> bytes:
    """JSON text with its escaped backslashes and quotes masked by NUL pairs (a JSON text holds no
    raw NUL), so that every remaining quote delimits a string; undone by :func:`_unmask_escapes`."""
    return text.replace(b"\\\\", b"\x00\x01").replace(b'\\"', b"\x00\x02")


def _unmask_escapes(text: bytes) -> bytes:
    return text.replace(b"\x00\x02", b'\\"').replace(b"\x00\x01", b"\\\\")


def _from_hub(repo_id: str, tokenizer_class: str) -> tuple[_Parsed, TokenizerConfig]:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    mirror = f"`slimtok mirror {repo_id} --repo-type model --include 'tokenizer*'`"
    try:
        path = Path(hf_hub_download(repo_id, "tokenizer.json"))
    except LocalEntryNotFoundError as exc:  # a subclass of EntryNotFoundError: caught first
        if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise TokenizerError(f"tokenizer {repo_id!r} is not in the local Hugging Face cache and "
                                 "HF_HUB_OFFLINE is set, so it cannot be fetched", None,
                                 f"pass a tokenizer folder or file, or mirror it with {mirror} on a host "
                                 "with network and pass the folder") from exc
        raise TokenizerError(f"cannot fetch tokenizer {repo_id!r} from the Hub: {exc}", None,
                             f"mirror it with {mirror} and pass the folder instead") from exc
    except EntryNotFoundError:
        return _from_transformers(repo_id, tokenizer_class)
    except (HfHubHTTPError, OSError) as exc:
        raise TokenizerError(f"cannot fetch tokenizer {repo_id!r} from the Hub: {exc}", None,
                             f"mirror it with {mirror} and pass the folder instead") from exc
    check_tokenizer_class(repo_id, path, tokenizer_class)
    try:
        hf_hub_download(repo_id, "tokenizer_config.json")
    except (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError):
        pass
    return _read_file(path), _config(path.parent)


#: Upper bounds on how much a normalizer can lengthen UTF-8 text: the Unicode normalization forms
#: expand one code point at most 3x (NFC, NFD) or 11x (NFKC, NFKD: U+FDFA) in UTF-8 (UAX #15);
#: lowercasing 1.5x (U+0130 and U+023A: 2 bytes to 3), taken as 3x to be safe; stripping never lengthens.
_NORMALIZER_GROWTH = {"NFC": 3.0, "NFD": 3.0, "NFKC": 11.0, "NFKD": 11.0, "Lowercase": 3.0, "Strip": 1.0,
                      "StripAccents": 1.0}
#: Pre-tokenizers that only split (or drop) text: they add no byte.
_SPLITTING = {"Split", "Whitespace", "WhitespaceSplit", "Punctuation", "Digits", "BertPreTokenizer",
              "UnicodeScripts", "CharDelimiterSplit"}


def text_growth(normalizer: dict[str, Any] | None, pre_tokenizer: dict[str, Any] | None) -> float | None:
    """An upper bound on tokens per UTF-8 byte of text (at least one byte per document), or None.

    Every token of every model covers at least one byte of the text the model sees (a byte-fallback
    token exactly one), so the bound is how much the normalizer and pre-tokenizer can lengthen the
    text. A prepended string counts once per segment (text between added tokens), and a segment
    holds at least one byte. Only the components listed here are bounded; any other gives None.
    """
    n = normalizer_growth(normalizer)
    p = _growth(pre_tokenizer, "pretokenizers", _pre_tokenizer_growth)
    return None if n is None or p is None else n * p


def normalizer_growth(normalizer: dict[str, Any] | None) -> float | None:
    """An upper bound on how many times the normalizer (its JSON) can lengthen UTF-8 text, or None
    when it has a part not listed here (then only a look at the normalized text can tell)."""
    return _growth(normalizer, "normalizers", _normalizer_growth)


def _growth(part: dict[str, Any] | None, children: str,
            own: Callable[[dict[str, Any]], float | None]) -> float | None:
    """The growth bound of a component: 1 for none, the product over a Sequence, else ``own``'s."""
    if part is None:
        return 1.0
    if part.get("type") == "Sequence":
        return _product(_growth(p, children, own) for p in part.get(children, []))
    return own(part)


def _normalizer_growth(part: dict[str, Any]) -> float | None:
    kind = part.get("type", "")  # "" when absent: no growth entry, as for an unknown type
    if kind == "Prepend" and isinstance(part.get("prepend"), str):
        return 1.0 + len(part["prepend"].encode())
    if kind == "Replace" and isinstance(part.get("content"), str) and (part.get("pattern") or {}).get("String"):
        return max(1.0, len(part["content"].encode()) / len(part["pattern"]["String"].encode()))
    if kind == "BertNormalizer":  # spaces around each CJK character (3 bytes -> 5), lowercasing, accents
        return 5 / 3 * _NORMALIZER_GROWTH["Lowercase"]
    return _NORMALIZER_GROWTH.get(kind)


def _pre_tokenizer_growth(part: dict[str, Any]) -> float | None:
    kind = part.get("type")
    if kind == "ByteLevel":  # each byte becomes one character of at most 2 bytes
        return 2.0
    if kind == "Metaspace" and isinstance(part.get("replacement"), str):
        # a space becomes the replacement, and one more is put before each word
        width = len(part["replacement"].encode())
        return max(1.0, width) + width
    return 1.0 if kind in _SPLITTING else None


def _product(factors: Iterable[float | None]) -> float | None:
    total = 1.0
    for f in factors:
        if f is None:
            return None
        total *= f
    return total
