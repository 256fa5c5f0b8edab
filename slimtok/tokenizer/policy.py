"""The document policy: every document is ``[bos]? + tokens(text) + [eos]``, and how it is chosen.

``eos`` comes from ``--eos-id``, tokenizer_config.json's ``eos_token``, or the first of
:data:`COMMON_EOS` the tokenizer knows. ``bos`` follows ``--bos``: ``auto`` takes what the
tokenizer's own post-processor puts before a single sequence (Llama-3 ``<|begin_of_text|> $A``,
Llama-2 ``<s> $A``; Qwen3 puts nothing), ``always`` the tokenizer's bos, ``never`` none.
``special_text`` says what special-token strings inside a document's text become: ordinary text
(``literal``) or their control ids (``parse``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import TokenizerError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

#: eos strings tried, in order, when neither --eos-id nor tokenizer_config.json names one.
COMMON_EOS = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")
BOS_CHOICES = ("auto", "always", "never")
SPECIAL_TEXT = ("literal", "parse")
#: Encoding backends (--backend; see slimtok.tokenizer.encoder.Encoder); here, with the other
#: choices, so the command line lists them without importing the encoder.
BACKENDS = ("auto", "tokenizers", "fastokens")


@dataclass(frozen=True)
class DocumentPolicy:
    """Separators around each document and what special-token strings in text become.

    Invariant: a document of text ``t`` encodes to ``[bos_id]`` (if not None) + the tokenizer's
    ids of ``t`` without any template + ``[eos_id]``; reasons are one human line each.
    """

    eos_id: int
    eos_token: str | None
    bos_id: int | None = None
    bos_token: str | None = None
    special_text: str = "literal"
    eos_reason: str = ""
    bos_reason: str = ""

    @property
    def prefix(self) -> list[int]:
        return [] if self.bos_id is None else [self.bos_id]

    @property
    def literal(self) -> bool:
        """Whether special-token strings in text are encoded as ordinary text."""
        return self.special_text == "literal"


class TokenLookup(Protocol):
    """What the policy asks of a tokenizer: a ``tokenizers.Tokenizer``, or the same answers read
    from its JSON (``slimtok.tokenizer.loading.JsonVocabulary``)."""

    def token_to_id(self, token: str) -> int | None: ...

    def id_to_token(self, token_id: int) -> str | None: ...


@dataclass(frozen=True)
class TokenizerConfig:
    """What tokenizer_config.json says, if the folder has one (``found`` False otherwise)."""

    found: bool = False
    eos_token: str | None = None
    bos_token: str | None = None


def settle_eos(tok: TokenLookup, config: TokenizerConfig, eos_id: int | None, id_count: int,
               source: str) -> tuple[int, str | None, str]:
    """(eos id, its token, why it was chosen)."""
    if eos_id is not None:
        if not 0 <= eos_id < id_count:
            raise TokenizerError(f"--eos-id {eos_id} is outside the vocabulary (0..{id_count - 1})", source,
                                 "pass an id the tokenizer has, or leave --eos-id out")
        return eos_id, tok.id_to_token(eos_id), f"--eos-id {eos_id}"
    if config.eos_token is not None:
        found = tok.token_to_id(config.eos_token)
        if found is None:
            raise TokenizerError(f"tokenizer_config.json names eos_token {config.eos_token!r}, which the "
                                 "tokenizer does not know", source, "pass --eos-id")
        return found, config.eos_token, "tokenizer_config.json eos_token"
    for name in COMMON_EOS:
        found = tok.token_to_id(name)
        if found is not None:
            where = "tokenizer_config.json names no eos_token" if config.found else "no tokenizer_config.json"
            return found, name, (f"{where}; {name} is the first of {', '.join(COMMON_EOS)} the tokenizer knows "
                                 "(pass --eos-id to choose another)")
    raise TokenizerError(f"the tokenizer names no eos token that it knows (tried {', '.join(COMMON_EOS)})",
                         source, "pass --eos-id")


def template_prefix(post_processor: dict[str, Any] | None) -> list[tuple[str, int]]:
    """The (token, id) pairs the post-processor puts before a single sequence."""
    if not post_processor:
        return []
    kind = post_processor.get("type")
    if kind == "Sequence":
        return [pair for p in post_processor.get("processors", []) for pair in template_prefix(p)]
    if kind in ("BertProcessing", "RobertaProcessing"):
        token, token_id = post_processor["cls"]
        return [(token, token_id)]
    if kind != "TemplateProcessing":
        return []
    specials = post_processor.get("special_tokens", {})
    prefix = []
    for item in post_processor.get("single", []):
        if "Sequence" in item:
            break
        name = item["SpecialToken"]["id"]
        # not strict: tokenizers refuses a special token whose ids and tokens differ in length when it loads
        prefix += list(zip(specials[name]["tokens"], specials[name]["ids"], strict=False))
    return prefix


def settle_bos(tok: TokenLookup, config: TokenizerConfig, bos: str, post_processor: dict[str, Any] | None,
               source: str) -> tuple[int | None, str | None, str]:
    """(bos id or None, its token, why) for ``--bos bos``."""
    if bos not in BOS_CHOICES:
        raise TokenizerError(f"--bos {bos!r} is not one of {', '.join(BOS_CHOICES)}")
    if bos == "never":
        return None, None, "--bos never"
    prefix = template_prefix(post_processor)
    if len(prefix) > 1:
        raise TokenizerError(f"the tokenizer's template puts {len(prefix)} tokens before a document "
                             f"({', '.join(t for t, _ in prefix)}); slimtok places at most one", source,
                             "pass --bos never, or --bos always to use tokenizer_config.json's bos_token")
    if bos == "auto":
        if not prefix:
            return None, None, "--bos auto: the tokenizer's template puts nothing before a document"
        return prefix[0][1], prefix[0][0], "--bos auto: the tokenizer's template puts it before a document"
    if config.bos_token is not None and tok.token_to_id(config.bos_token) is not None:
        return tok.token_to_id(config.bos_token), config.bos_token, "--bos always: tokenizer_config.json bos_token"
    if prefix:
        return prefix[0][1], prefix[0][0], "--bos always: the tokenizer's template"
    raise TokenizerError("--bos always, but the tokenizer has no bos: tokenizer_config.json names no bos_token "
                         "it knows and its template puts nothing before a document", source,
                         "pass --bos never, or use a tokenizer folder whose tokenizer_config.json names bos_token")


def separator_warnings(policy: DocumentPolicy, special_ids: set[int],
                       producible: Callable[[int, str], bool]) -> list[str]:
    """One warning per separator that text could also produce, naming the token.

    ``special_ids``: the ids of the special added tokens; ``producible(id, token)``: whether the
    token written as literal text encodes to its id (:func:`producible_by_encoding`)."""
    notes = []
    for role, token_id, token in (("eos", policy.eos_id, policy.eos_token), ("bos", policy.bos_id, policy.bos_token)):
        if token_id is None:
            continue
        label = f"{role} {token!r} (id {token_id})"
        made = token is not None and producible(token_id, token)
        if token_id not in special_ids or made:
            what = "is an ordinary token, not a special one" if token_id not in special_ids else "is special"
            how = ", and encoding its own string as text produces it" if made else ""
            notes.append(f"warning: {label} {what}{how}: a document may hold {role} ids inside it; the "
                         "document table is the record of document boundaries")
        elif not policy.literal:
            notes.append(f"note: with --special-text parse the text {token!r} inside a document becomes {role} "
                         f"id {token_id}; the document table is the record of document boundaries")
    return notes


def special_ids_of(tok: Tokenizer) -> set[int]:
    """The ids of ``tok``'s special added tokens."""
    return {i for i, t in tok.get_added_tokens_decoder().items() if t.special}


def producible_by_encoding(tok: Tokenizer, token_id: int, token: str) -> bool:
    """Whether ``token`` written as literal text, alone or next to other text, encodes to ``token_id``."""
    before = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        contexts = [token, f"a{token}", f" {token}", f"{token}a", f"a {token} a"]
        return any(token_id in e.ids for e in tok.encode_batch(contexts, add_special_tokens=False))
    finally:
        tok.encode_special_tokens = before
