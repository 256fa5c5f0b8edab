"""Whether a tokenizer's ids have the shape of encoded text, and the thresholds past which they do not.

A tokenizer can load and still be useless: a folder holding only tokenizer_config.json loads
through transformers as an empty vocabulary (every document becomes a lone eos), a vocabulary that
lacks the text's words maps nearly every word to its unk id. Both write valid-looking token files.
:class:`IdShape` measures a sample of encoded documents (tokens per byte, documents of at most one
token, id entropy, the most common id's share) and :meth:`IdShape.faults` names each threshold it
crosses. Two callers: :func:`check_start_sample` (the launcher, on :data:`SHAPE_TEXTS`, before any
shard is claimed) and ``slimtok validate`` (sampled documents of a combined split).

Invariant: the measures are of text ids only; the bos/eos separators the document policy adds are
never counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import TokenizerError
from .loading import native_panics

if TYPE_CHECKING:
    from tokenizers import Tokenizer

#: Natural text of several scripts, code, whitespace shapes, digits and punctuation runs, 60 to 130
#: bytes each (~1 kB in all): what every tokenizer slimtok supports encodes to several ids per text.
SHAPE_TEXTS = (
    "The quick brown fox jumps over the lazy dog. It's 3:45pm; they'll say \"we've won\" -- don't they?",
    "def f(x):\n\tif x >= 10_000:\n        return {'a': [1, 2.5e-3]}  # comment\r\n    return None\n\n\n",
    "Über naïve café façade — «quoted» ‹text› … 1,234.56 € 99% ½ ² ³",
    "东京是日本的首都。北京是中国的首都，人口超过两千万。漢字とひらがなとカタカナ。",
    "Москва — столица России. Привет, мир! Съешь ещё этих мягких французских булок.",
    "مرحبا بالعالم. שלום עולם. नमस्ते दुनिया। สวัสดีชาวโลก 안녕하세요 세계",
    "emoji 👩‍👩‍👧‍👦 🇩🇪 👍🏽 e\u0301 a\u0308 \u200b\u200d \ufeff \ufffd \u00a0nbsp",
    "    leading spaces\n\n\n\n   \t \n trailing   \r\r\n\u2028\u2029 end   ",
    "0123456789 3.14159265358979 1e100 0x1F 12,345,678 ５６７ ١٢٣",
    "'s 'T 'RE 've 'M 'll 'D ''' \"\" `` ~~~ !!!??? ... ----- ===== ***** #####",
)

#: Fewer ids than this cannot spell text: the families slimtok supports start from 256 byte ids or
#: an alphabet of about a hundred characters; the empty vocabulary transformers builds for a folder
#: without its files has 2 or 3 (its special tokens).
MIN_IDS = 16
#: More than this share of documents encoding to at most one id: a document is a sentence or more
#: (60+ bytes in the start-up sample), which no real vocabulary holds as one token. Half, not all,
#: so one unusual document (a long whitespace run some vocabularies keep whole) is not a verdict.
ONE_TOKEN_SHARE = 0.5
#: Id entropy below this many bits: real vocabularies give 6.5-7.5 bits on :data:`SHAPE_TEXTS`
#: (a 600-id byte-level BPE 6.9, Qwen3 7.3) and a character-level one about 5, while output made
#: of one id (the unk of a vocabulary that lacks the text) gives under 1; 3 bits lies between.
MIN_ENTROPY_BITS = 3.0
#: One id more than this share of all ids: in text the most common token (a space, "the", a
#: comma) is under 10%; a majority is an unk or a collapsed id.
TOP_ID_SHARE = 0.5
#: Entropy and the top share are judged only over at least this many ids: fewer cannot show
#: 3 bits reliably (the most n ids can show is log2(n)).
MIN_JUDGED_TOKENS = 64


@dataclass(frozen=True)
class IdShape:
    """The shape of a sample of encoded documents: counts over their text ids (separators removed)."""

    documents: int
    #: text ids in all the sample's documents
    tokens: int
    #: UTF-8 bytes of the documents' text
    text_bytes: int
    #: documents whose text encoded to zero or one id
    short_documents: int
    distinct: int
    entropy_bits: float
    #: the share of all ids that the most common id takes (0 for no ids)
    top_share: float

    @classmethod
    def of(cls, documents: Sequence[Sequence[int] | np.ndarray], text_bytes: int) -> IdShape:
        """The shape of ``documents`` (each its text ids) whose text is ``text_bytes`` bytes long."""
        arrays = [np.asarray(d, dtype=np.int64) for d in documents]
        ids = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        counts = np.unique(ids, return_counts=True)[1]
        p = counts / max(ids.size, 1)
        return cls(documents=len(arrays), tokens=int(ids.size), text_bytes=text_bytes,
                   short_documents=sum(a.size <= 1 for a in arrays), distinct=int(counts.size),
                   entropy_bits=0.0 - float((p * np.log2(p)).sum()),  # 0.0 - : never -0.0
                   top_share=float(p.max()) if ids.size else 0.0)

    @property
    def tokens_per_byte(self) -> float:
        return self.tokens / self.text_bytes if self.text_bytes else 0.0

    def describe(self) -> str:
        """The numbers, in one phrase."""
        return (f"{self.documents} documents, {self.tokens:,} text ids over {self.text_bytes:,} bytes "
                f"({self.tokens_per_byte:.3f} tokens per byte), {self.short_documents} of at most one id, "
                f"id entropy {self.entropy_bits:.2f} bits over {self.distinct} distinct ids, the most common "
                f"{self.top_share:.0%} of all")

    def faults(self, id_count: int | None = None) -> list[str]:
        """Each threshold the sample crosses, with its numbers; empty when it has the shape of text.
        ``id_count``: the tokenizer's number of ids, when known."""
        found = []
        if id_count is not None and id_count < MIN_IDS:
            found.append(f"only {id_count} ids (a tokenizer of text has at least {MIN_IDS})")
        if self.documents and self.short_documents > ONE_TOKEN_SHARE * self.documents:
            found.append(f"{self.short_documents} of {self.documents} documents encode to at most one id "
                         f"(more than {ONE_TOKEN_SHARE:.0%})")
        if self.tokens >= MIN_JUDGED_TOKENS and self.entropy_bits < MIN_ENTROPY_BITS:
            found.append(f"id entropy {self.entropy_bits:.2f} bits (text gives at least {MIN_ENTROPY_BITS:g})")
        if self.tokens >= MIN_JUDGED_TOKENS and self.top_share > TOP_ID_SHARE:
            found.append(f"one id is {self.top_share:.0%} of all ids (more than {TOP_ID_SHARE:.0%})")
        return found


def check_start_sample(tok: Tokenizer, id_count: int, source: str) -> IdShape:
    """The shape of ``tok``'s ids for :data:`SHAPE_TEXTS`; TokenizerError naming ``source`` and the
    numbers when it is degenerate (:meth:`IdShape.faults`)."""
    # one text at a time: encode_batch would start tokenizers' thread pool in a launcher about to fork
    with native_panics(lambda what: TokenizerError(f"the tokenizer's native encoder panicked on the start-up "
                                                   f"sample ({what})", source, "fix the tokenizer")):
        encoded = [tok.encode(text, add_special_tokens=False).ids for text in SHAPE_TEXTS]
    shape = IdShape.of(encoded, sum(len(text.encode()) for text in SHAPE_TEXTS))
    faults = shape.faults(id_count)
    if faults:
        raise TokenizerError(f"degenerate on the start-up sample: {'; '.join(faults)} ({shape.describe()}); "
                             "refusing to tokenize with it", source,
                             "pass the model's own tokenizer.json (or a folder holding it): a folder without "
                             "tokenizer.json, or a vocabulary that lacks the text, writes meaningless ids")
    return shape
