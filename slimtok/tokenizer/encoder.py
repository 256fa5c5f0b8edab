"""Step 4: turn document texts into token ids under a :class:`DocumentPolicy`.

Each document becomes ``[bos]? + tokens(text) + [eos]``: no other template tokens, and special-token
strings inside the text encoded as ordinary text (``literal``) or as their control ids (``parse``).
``tokenizers`` with ``add_special_tokens=False`` and the separators placed by hand is the reference;
fastokens encodes only when it gives exactly the reference's ids (checked at start and during the run).
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from tokenizers import Tokenizer

from ..errors import EncoderCrash, TokenizerError
from .loading import canonical_sha256, native_panics, normalizer_growth, read_tokenizer_file
from .policy import BACKENDS, DocumentPolicy
from .shape import SHAPE_TEXTS

# -- encoding backends -----------------------------------------------------------------------

#: During a run, one slice of real text is re-encoded by the reference per this many characters
#: (on average). The reference is ~100x slower than fastokens, so a 4096-character slice per 64 Mi
#: characters costs ~1% of the encoding time (per 8 Mi it cost ~10%: the Encoder's gap to raw
#: fastokens in run D).
VERIFY_EVERY_CHARS = 64 << 20
VERIFY_SLICE_CHARS = 4096
#: A deferred fastokens (``defer_fastokens``) is loaded once the reference has spent this many
#: times its own load's CPU on encoding. fastokens' load (and its start-up sample check) costs
#: 2-2.8 x a tokenizers load of the same file (docs/BENCHMARKS.md, run E; Qwen3 here: 1.0 vs 0.45
#: CPU-s) and encodes tens of times faster afterwards, so buying it once the encoding already paid for
#: it is the rent-or-buy rule: a worker never spends more than about twice the better of the two
#: choices (reference only, or fastokens from the start), whatever text is still to come.
FASTOKENS_LOAD_FACTOR = 2.5
#: Documents longer than this are encoded in pieces cut at checked boundaries (bounds memory).
HUGE_DOC_CHARS = 8 << 20
#: Characters on each side of a candidate cut that must encode the same whole and cut.
CUT_WINDOW_CHARS = 1024
#: The most a normalizer may lengthen a document's UTF-8 text (NFKC's worst case is 11x). A
#: tokenizer whose normalizer is not bounded by this from its parts alone (an unknown normalizer, a
#: Replace by a long string) has each text normalized first, in slices of at most
#: ``GROWTH_SLICE_BYTES`` of output, and a text that grows more fails its shard instead of
#: exhausting memory in the encoder.
GROWTH_LIMIT = 16.0
GROWTH_SLICE_BYTES = 16 << 20
#: Bytes a normalizer may add to a slice beyond ``GROWTH_LIMIT`` x its length (a Prepend per segment).
GROWTH_SLACK_BYTES = 1024
#: After a refused cut, the search goes on this many characters later: where nothing holds, the
#: window checks (~4 window lengths encoded each) cost ~6% of the encoding, not many times it.
CUT_RETRY_CHARS = 1 << 16

log = logging.getLogger("slimtok.tokenizer")

# Start-up sample: the shape sample's texts (scripts, code, whitespace shapes and digits that
# pre-tokenizer regexes treat differently) and a long repetitive one; special-token strings and
# random code points are added per tokenizer (below).
_SAMPLE_TEXTS = (
    *SHAPE_TEXTS,
    "a" * 3000 + " " + "ab" * 1500 + "\n" + " " * 500 + "x",
)


#: Right after a newline, before a letter: no match of a byte-level pre-tokenizer regex of the
#: GPT-2/GPT-4/Qwen families spans it (newline runs and letter runs are separate pieces).
_AFTER_NEWLINE = r"(?<=\n)(?=[^\W\d_])"
#: Before a space that follows a non-space and precedes a letter: a word starts there for every
#: pre-tokenizer that splits at spaces (byte-level regexes, Whitespace, BERT, Metaspace).
_BEFORE_SPACE = r"(?<=\S)(?= [^\W\d_])"


@dataclass(frozen=True)
class CutRule:
    """Where a huge document may be cut into separately encoded pieces, for one tokenizer.

    A cut at ``i`` encodes ``text[:i]`` and ``text[i + drop:]`` apart. ``places`` finds the
    candidate cuts (zero-width matches); each is still confirmed by :meth:`Encoder._cut_holds`.
    ``drop`` is 1 for a ``Prepend`` normalizer: the piece after the cut gets the prepended string
    (``"▁"``) at its start whatever it holds, so the cut goes at a character the normalizer
    replaces by exactly that string (a space under ``Replace(" ", "▁")``) and leaves that character
    out; the piece then normalizes to exactly the whole document's normalized text from there.
    """

    places: re.Pattern[str]
    drop: int = 0


def cut_rule(normalizer: dict[str, Any] | None, pre_tokenizer: dict[str, Any] | None) -> CutRule | None:
    """The :class:`CutRule` for a tokenizer with this normalizer and pre-tokenizer (their JSON), or
    None when no cut can be exact (the document is then encoded whole).

    * a ``Prepend(p)`` normalizer (Llama-2/Mistral): the piece after a cut starts with ``p``, so a
      cut goes at a character ``c`` the text's normalization turns into exactly ``p`` (``Replace(c,
      p)`` in the normalizer, or a space under a ``Metaspace`` of replacement ``p``), dropping it;
      without such a character no cut is exact;
    * a ``Metaspace`` pre-tokenizer (SentencePiece conversions, any prepend scheme): before a space,
      which Metaspace turns into its replacement, so a piece starting there is not prepended again
      (schemes ``first``/``always`` prepend only to text not starting with the replacement) and a
      word starts there in the whole document too;
    * any other: after a newline before a letter, or before a space before a letter.
    """
    normal = _components(normalizer, "normalizers")
    pre = _components(pre_tokenizer, "pretokenizers")
    prepends = [n.get("prepend") for n in normal if n.get("type") == "Prepend"]
    metaspace = [p.get("replacement") for p in pre if p.get("type") == "Metaspace"]
    if prepends:
        if len(prepends) > 1 or not isinstance(prepends[0], str) or not prepends[0]:
            return None
        swapped = {(n.get("pattern") or {}).get("String") for n in normal
                   if n.get("type") == "Replace" and n.get("content") == prepends[0]}
        if prepends[0] in metaspace:
            swapped.add(" ")
        chars = sorted(c for c in swapped if isinstance(c, str) and len(c) == 1)
        if not chars:
            return None
        return CutRule(re.compile(f"(?<=\\S)(?=[{re.escape(''.join(chars))}][^\\W\\d_])"), drop=1)
    if metaspace:
        return CutRule(re.compile(_BEFORE_SPACE))
    return CutRule(re.compile(f"{_AFTER_NEWLINE}|{_BEFORE_SPACE}"))


def _components(part: dict[str, Any] | None, children: str) -> list[dict[str, Any]]:
    """A normalizer's or pre-tokenizer's parts, Sequences flattened (none: [])."""
    if not isinstance(part, dict):
        return []
    if part.get("type") == "Sequence":
        return [c for p in part.get(children) or [] for c in _components(p, children)]
    return [part]


@dataclass(frozen=True)
class BackendReport:
    """Which backend encodes, why, and how it was checked against ``tokenizers``."""

    requested: str
    backend: str
    verification: str


def _start_sample(tok: Tokenizer, seed: int = 0) -> list[str]:
    """The start-up verification texts for ``tok``: fixed texts, its added tokens inside text, noise."""
    texts = list(_SAMPLE_TEXTS)
    added = [t.content for t in tok.get_added_tokens_decoder().values()]
    texts += [f"before{a}after {a} {a}{a}\n{a}" for a in added]
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x52F), (0x600, 0x6FF), (0x3040, 0x30FF),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x9, 0xD)]
    for _ in range(8):
        chars = [chr(rng.randint(*rng.choice(ranges))) for _ in range(2000)]
        texts.append("".join(chars))
    return texts


def _malloc_trim() -> None:
    """Give the heap freed by tokenizer loading (JSON parse buffers) back to the OS (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class LoadedBackends:
    """The tokenizers an :class:`Encoder` encodes with, as :func:`load_backends` loaded them.

    A launcher loads them once and forks its workers, which share the loaded memory copy-on-write
    instead of each parsing the same file (Qwen3: ~0.4 CPU-s for the reference, ~1.3 for fastokens)."""

    #: the tokenizer.json they were loaded from
    path: Path
    #: the reference, not yet configured (the encoder configures its own copy)
    reference: Tokenizer
    #: CPU seconds of the reference's load: a deferred fastokens is priced against it
    reference_cpu: float
    #: fastokens, when asked for and not deferred and it loaded; else None and ``why`` says why
    fast: object | None = None
    why: str = ""


def load_backends(path: Path, backend: str, defer_fastokens: bool = False) -> LoadedBackends:
    """Load what an :class:`Encoder` for ``backend`` needs from the ``tokenizer.json`` at ``path``:
    fastokens first when it is asked for now (the lower peak), then the reference.
    Raises TokenizerError when the reference does not load."""
    deferred = defer_fastokens and backend == "auto"
    fast, why = (None, "") if backend == "tokenizers" or deferred else _load_fastokens(path)
    _malloc_trim()  # loading peaks far above what a tokenizer keeps; return that before the next load
    started = time.thread_time()
    reference = read_tokenizer_file(path)
    return LoadedBackends(path, reference, time.thread_time() - started, fast, why)


class Encoder:
    """Encodes batches of documents into one flat id array under a :class:`DocumentPolicy`.

    The tokenizer passed in is configured in place (no padding or truncation, special-token
    strings in text per the policy) and owned by the encoder from then on.

    ``tokenizers`` is the reference. With ``backend="fastokens"`` or ``"auto"``, fastokens encodes
    when it is installed and gives exactly the reference's ids on a start-up sample; during the run
    a random slice of real text is re-encoded by both every ``VERIFY_EVERY_CHARS`` characters, and
    a mismatch switches this encoder to the reference for good. ``report`` says what happened.
    """

    def __init__(self, tokenizer: Tokenizer | Path, policy: DocumentPolicy, dtype: str, backend: str = "auto",
                 defer_fastokens: bool = False, loaded: LoadedBackends | None = None):
        """``tokenizer``: the reference, or the path of its ``tokenizer.json``; a path lets fastokens
        load first, which lowers the start-up peak (see :func:`_load_fastokens`).

        ``defer_fastokens`` (``auto`` with a path only): encode with the reference from the start and
        load fastokens (checked on the start-up sample as always) only once the reference has spent
        ``FASTOKENS_LOAD_FACTOR`` x its own load's CPU encoding; a small job never loads fastokens.

        ``loaded``: what :func:`load_backends` loaded from that path for these same ``backend`` and
        ``defer_fastokens`` (in a launcher, before its workers were forked); nothing is loaded again."""
        if backend not in BACKENDS:
            raise TokenizerError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        deferred = defer_fastokens and backend == "auto"
        if isinstance(tokenizer, Tokenizer):
            if deferred or loaded is not None:
                raise ValueError("defer_fastokens and loaded need the tokenizer's path: its load is what fastokens "
                                 "is weighed against")
            fast, why = (None, "") if backend == "tokenizers" else _load_fastokens(tokenizer)
            tok, reference_cpu = tokenizer, 0.0
        else:
            loaded = loaded or load_backends(Path(tokenizer), backend, defer_fastokens)
            tok, reference_cpu, fast, why = loaded.reference, loaded.reference_cpu, loaded.fast, loaded.why
        # The encoder configures and keeps the tokenizer it is given (no copy: a Qwen3-sized
        # tokenizer costs ~110 MB and half a second to copy); callers hand over their instance.
        # to_str of the reference is the fingerprint while padding and truncation are as loaded
        # (encode_special_tokens is not serialized); else canonical_sha256 loads the file afresh
        self._as_loaded = tok.padding is None and tok.truncation is None
        self._path = None if isinstance(tokenizer, Tokenizer) else Path(tokenizer)
        tok.no_padding()
        tok.no_truncation()
        tok.encode_special_tokens = policy.literal
        _malloc_trim()  # before the start-up sample: the first fastokens encode adds ~50 MB on top
        self._tok = tok
        normalizer, pre_tokenizer = (orjson.loads(part.__getstate__()) if part else None
                                     for part in (tok.normalizer, tok.pre_tokenizer))
        self._cut_rule = cut_rule(normalizer, pre_tokenizer)
        growth = normalizer_growth(normalizer)
        #: characters per slice of the run-time growth check; 0: the normalizer is bounded by its parts
        self._growth_slice = 0 if normalizer is None or (growth is not None and growth <= GROWTH_LIMIT) \
            else max(1, int(GROWTH_SLICE_BYTES // (growth or GROWTH_LIMIT * 256)))
        self.policy = policy
        self.dtype = np.dtype(dtype)
        self._prefix = np.array(policy.prefix, dtype=np.uint32)
        self._fast: object | None = None  # fastokens' tokenizer once checked; it has no type stubs
        self._rng = random.Random()
        self._until_check = self._rng.randrange(VERIFY_EVERY_CHARS)
        #: characters each backend has encoded (a slice check's second encoding not counted)
        self.chars = {"tokenizers": 0, "fastokens": 0}
        #: with a deferred fastokens: (its path, the reference's encode CPU-seconds that buy it, spent so far)
        self._deferred: tuple[Path, float, float] | None = None
        if backend == "tokenizers":
            self.report = BackendReport(backend, "tokenizers", "reference; not compared")
        elif deferred:
            price = FASTOKENS_LOAD_FACTOR * reference_cpu
            assert self._path is not None  # deferred needs the path: a Tokenizer was refused above
            self._deferred = (self._path, price, 0.0)
            self.report = BackendReport(backend, "tokenizers",
                                        f"reference; fastokens deferred until the reference has spent {price:.2f} "
                                        f"CPU-s encoding ({FASTOKENS_LOAD_FACTOR:g} x its own load)")
        else:
            self.report = self._try_fastokens(fast, why, backend)
        _malloc_trim()

    def canonical_sha256(self) -> str:
        """The job fingerprint of the reference as its file gives it: sha256 of its canonical JSON."""
        if self._as_loaded:
            return canonical_sha256(self._tok)
        if self._path is None:
            raise ValueError("the reference was given with padding or truncation, now cleared: its fingerprint "
                             "needs its file")
        return canonical_sha256(read_tokenizer_file(self._path))

    @property
    def backend(self) -> str:
        return self.report.backend

    @property
    def eos_id(self) -> int:
        return self.policy.eos_id

    # -- choosing --------------------------------------------------------------------------
    def _try_fastokens(self, fast: object | None, why: str, requested: str) -> BackendReport:
        """fastokens if it loaded and matches the reference on the start-up sample, else the reference."""
        if fast is None:
            return self._fall_back(requested, why)
        try:
            # bos and eos come from a template inside the encoder: the ids arrive with them in
            # place and need no copy to insert them (the start-up sample checks this too).
            fast.post_processor = self._policy_template()  # type: ignore[attr-defined]  # fast: see self._fast
        except Exception as exc:  # the Rust side raises bare exceptions
            return self._fall_back(requested, f"fastokens cannot take the bos/eos template: {exc}")
        texts = _start_sample(self._tok)
        with native_panics(lambda what: TokenizerError(f"the tokenizer's native encoder panicked on the start-up "
                                                       f"sample ({what})", self._path, "fix the tokenizer")):
            ref, ref_lengths = self._encode_reference(texts)
        got, got_lengths = self._encode_fast(fast, texts)
        if ref_lengths != got_lengths or not np.array_equal(ref, got):
            # not strict: a fastokens that returned fewer texts falls back below, like one with other ids
            bad = next((i for i, (a, b) in enumerate(zip(ref_lengths, got_lengths, strict=False)) if a != b), None)
            where = f"first differing text #{bad}: {texts[bad][:40]!r}" if bad is not None else "ids differ"
            return self._fall_back(requested, f"fastokens ids differ from tokenizers on the start-up sample "
                                              f"({where})")
        self._fast = fast
        version = getattr(sys.modules["fastokens"], "__version__", None) or _dist_version("fastokens")
        chars = sum(len(t) for t in texts)
        before = (f"; loaded after the reference had encoded {self.chars['tokenizers']} chars"
                  if self.chars["tokenizers"] else "")
        return BackendReport(requested, "fastokens",
                             f"fastokens {version}: ids identical to tokenizers on the start-up sample "
                             f"({len(texts)} texts, {chars} chars, special text {self.policy.special_text}); "
                             f"re-checked on random slices during the run{before}")

    def _weigh_fastokens(self, spent: float) -> None:
        """Count the reference's encode CPU; once it reaches the deferred fastokens' price, load and
        check fastokens (next batches use it if it matches, else the reference stays for good)."""
        assert self._deferred is not None  # called only while fastokens is deferred
        path, price, total = self._deferred
        total += spent
        if total < price:
            self._deferred = (path, price, total)
            return
        self._deferred = None
        fast, why = _load_fastokens(path)
        self.report = self._try_fastokens(fast, why, self.report.requested)
        _malloc_trim()

    def _policy_template(self) -> str:
        """A post-processor that puts bos (if any) before and eos after each text, nothing else."""
        seps = [(self.policy.bos_id, "bos"), (self.policy.eos_id, "eos")]
        names = {i: self._tok.id_to_token(i) for i, _ in seps if i is not None}
        bos_id = self.policy.bos_id
        bos = [{"SpecialToken": {"id": names[bos_id], "type_id": 0}}] if bos_id is not None else []
        eos = [{"SpecialToken": {"id": names[self.policy.eos_id], "type_id": 0}}]
        seq = [{"Sequence": {"id": "A", "type_id": 0}}]
        return orjson.dumps({
            "type": "TemplateProcessing",
            "single": bos + seq + eos,
            "pair": bos + seq + [{"Sequence": {"id": "B", "type_id": 0}}] + eos,
            "special_tokens": {name: {"id": name, "ids": [i], "tokens": [name]} for i, name in names.items()},
        }).decode()

    def _fall_back(self, requested: str, why: str) -> BackendReport:
        if requested == "fastokens":
            raise TokenizerError(f"--backend fastokens: {why}", None, "use --backend auto or tokenizers")
        log.warning("using the tokenizers backend: %s", why)
        return BackendReport(requested, "tokenizers", f"fallback: {why}")

    # -- encoding --------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """(flat ids, per-document lengths including bos/eos) for ``texts``."""
        texts = list(texts)
        if max(map(len, texts), default=0) > HUGE_DOC_CHARS:
            parts = [self._encode_huge(t) if len(t) > HUGE_DOC_CHARS else self.encode([t]) for t in texts]
            return np.concatenate([flat for flat, _ in parts]), [n for _, lengths in parts for n in lengths]
        return self._encode_batch(texts)

    def _encode_batch(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Every encoding of document text goes through here, so a native crash is caught once.

        A Rust panic surfaces as pyo3's ``PanicException``, a ``BaseException`` that the worker's
        shard handling (which fails a shard on an ``Exception``) would let kill the process; it
        becomes :class:`EncoderCrash`, which fails this shard alone. Python's own control flow
        (KeyboardInterrupt, SystemExit, GeneratorExit) and every ``Exception`` pass unchanged.
        """
        with native_panics(lambda what: EncoderCrash(
                f"the tokenizer's native encoder panicked on a batch of this shard ({what})",
                fix="the other shards go on: fix the tokenizer or leave this shard out")):
            if self._growth_slice:
                self._check_growth(texts)
            return self._encode_native(texts)

    def _check_growth(self, texts: list[str]) -> None:
        """TokenizerError (which fails the shard) when the normalizer lengthens a slice of some text
        more than ``GROWTH_LIMIT`` times (plus ``GROWTH_SLACK_BYTES``); each slice is small enough
        that even its normalized form stays within ``GROWTH_SLICE_BYTES`` at the normalizer's known
        bound (an unknown normalizer is assumed to grow at most 256 x the limit per slice)."""
        normalize = self._tok.normalizer.normalize_str
        step = self._growth_slice
        for text in texts:
            for start in range(0, len(text), step):
                part = text[start:start + step]
                size, grown = len(part.encode()), len(normalize(part).encode())
                if grown > GROWTH_LIMIT * size + GROWTH_SLACK_BYTES:
                    raise TokenizerError(f"the tokenizer's normalizer lengthens a document's text {grown / size:.0f} "
                                         f"times ({size} bytes at character {start} become {grown}), beyond the "
                                         f"{GROWTH_LIMIT:g} x slimtok bounds a document's encoding by",
                                         self._path, "fix the tokenizer's normalizer, or leave this shard out")

    def _encode_native(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        chars = sum(map(len, texts))
        if self._fast is None:
            started = time.thread_time()
            flat, lengths = self._encode_reference(texts)
            self.chars["tokenizers"] += chars
            if self._deferred is not None:
                self._weigh_fastokens(time.thread_time() - started)
        else:
            flat, lengths = self._encode_fast(self._fast, texts)
            self._until_check -= chars
            if self._until_check <= 0:
                self._until_check = self._rng.randrange(2 * VERIFY_EVERY_CHARS)
                if not self._check_slice(texts):
                    flat, lengths = self._encode_reference(texts)
            self.chars[self.backend] += chars
        if self.dtype != flat.dtype:
            if flat.size and int(flat.max()) > np.iinfo(self.dtype).max:
                raise TokenizerError(f"the tokenizer emitted id {int(flat.max())}, which {self.dtype} cannot hold",
                                     None, "use --dtype uint32")
            flat = flat.astype(self.dtype)
        return flat, lengths

    def _bare(self, flat: np.ndarray, first: bool, last: bool) -> np.ndarray:
        """One encoded part of a document with the bos dropped unless ``first``, the eos unless ``last``."""
        return flat[0 if first else self._prefix.size:None if last else -1]

    def _encode_huge(self, text: str) -> tuple[np.ndarray, list[int]]:
        """One huge document, encoded piece by piece so memory follows the piece size, not the text's."""
        flat = np.concatenate(list(self.encode_pieces([text])))
        return flat, [int(flat.size)]

    def encode_pieces(self, pieces: Iterable[str]) -> Iterator[np.ndarray]:
        """Ids of ONE document given as consecutive text pieces, in chunks.

        The chunks joined are exactly ``encode(["".join(pieces)])``'s ids: the first chunk starts
        with bos (if the policy has one), the last ends with eos. Where a piece joins the text
        before it, the document is cut at the first place from the join on that the tokenizer's
        :class:`CutRule` offers and :meth:`_cut_holds` confirms (none found: the text carries over
        and the search goes on in the next piece), so a chunk is about a piece long and only the
        text not yet encoded, at most a piece more than the longest stretch without a cut, is held.
        A piece longer than ``HUGE_DOC_CHARS`` is taken as pieces of half that.
        """
        rule = self._cut_rule
        text = ""
        scanned = -1  # the search goes on from here: candidates before were tried, or precede a join
        first = True
        for piece in _sliced(pieces):
            text += piece
            if scanned < 0 or rule is None:
                scanned = len(text)  # no cut inside the first piece: a chunk is at least a piece
                continue
            # a join is always tried (a skip after a refused cut ends there): readers join at good places
            cut, scanned = self._next_cut(text, min(scanned, len(text) - len(piece)), len(text) - CUT_WINDOW_CHARS)
            if cut is None:
                continue
            yield self._bare(self._encode_batch([text[:cut]])[0], first, False)
            text, first = text[cut + rule.drop:], False
            scanned = len(text)
        # the document ends here, so windows reaching its end are whole: the last join may be cut too
        if rule is not None and scanned >= 0 and (cut := self._next_cut(text, scanned, len(text))[0]) is not None:
            yield self._bare(self._encode_batch([text[:cut]])[0], first, False)
            text, first = text[cut + rule.drop:], False
        yield self._bare(self._encode_batch([text])[0], first, True)

    def _next_cut(self, text: str, start: int, stop: int) -> tuple[int | None, int]:
        """(the first confirmed cut in ``text[start:stop]``, or None; where the next search starts).

        After a refused candidate the search skips ``CUT_RETRY_CHARS``: a text where the rule's
        places never hold costs one window check per that many characters, not one per candidate.
        """
        rule = self._cut_rule
        assert rule is not None  # callers search only with a rule
        pos = start
        while pos < stop and (found := rule.places.search(text, pos, stop)):
            cut = found.start()
            if self._cut_holds(text[max(0, cut - CUT_WINDOW_CHARS):cut], text[cut:cut + CUT_WINDOW_CHARS]):
                return cut, cut
            pos = cut + CUT_RETRY_CHARS
        return None, max(pos, stop)

    def _cut_holds(self, left: str, right: str) -> bool:
        """Whether text may be cut between ``left`` (its tail) and ``right`` (its head), with the
        rule's ``drop`` characters of ``right`` left out of the piece after the cut: the two windows
        must encode to the same ids together and apart (separators aside)."""
        rule = self._cut_rule
        if rule is None or not right[rule.drop:]:
            return False
        whole, _ = self._encode_batch([left + right])
        apart, lengths = self._encode_batch([left, right[rule.drop:]])
        joined = np.concatenate([self._bare(apart[:lengths[0]], True, False),
                                 self._bare(apart[lengths[0]:], False, True)])
        return np.array_equal(whole, joined)

    def reference_ids(self, text: str) -> np.ndarray:
        """One document's ids by the reference alone (``tokenizers``, separators placed here),
        whatever backend encodes: what every backend's ids for ``text`` must equal."""
        return self._encode_reference([text])[0]

    def _encode_reference(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """tokenizers without its template, the policy's separators placed here."""
        prefix, eos = self.policy.prefix, self.policy.eos_id
        ids: list[int] = []
        lengths = []
        for enc in self._tok.encode_batch_fast(texts, add_special_tokens=False):
            doc = enc.ids
            ids += prefix
            ids += doc
            ids.append(eos)
            lengths.append(len(prefix) + len(doc) + 1)
        return np.array(ids, dtype=np.uint32), lengths

    def _encode_fast(self, fast: object, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        # add_special_tokens=True applies only the policy's template; split_special_tokens=True
        # keeps special-token strings in the text as text (literal), False parses them.
        # fast is fastokens' tokenizer, typed object (see self._fast)
        raw, offsets = fast.encode_batch_flat(texts, True, self.policy.literal)  # type: ignore[attr-defined]
        ends = np.frombuffer(offsets, dtype=np.uint64)
        return np.frombuffer(raw, dtype=np.uint32), np.diff(ends).tolist()

    def _check_slice(self, texts: list[str]) -> bool:
        """Re-encode a random slice of a random document with both backends; on a mismatch switch."""
        text = self._rng.choice(texts)
        start = self._rng.randrange(max(1, len(text) - VERIFY_SLICE_CHARS + 1))
        piece = [text[start:start + VERIFY_SLICE_CHARS]]
        if np.array_equal(self._encode_reference(piece)[0], self._encode_fast(self._fast, piece)[0]):
            return True
        log.error("fastokens ids differ from tokenizers on a slice of real text (%r...); switching this "
                  "worker to tokenizers. Shards this worker encoded with fastokens earlier were only checked "
                  "on samples", piece[0][:60])
        self._fast = None
        self.report = BackendReport(self.report.requested, "tokenizers",
                                    f"switched during the run: fastokens differed on {piece[0][:60]!r}")
        return False


def _sliced(pieces: Iterable[str]) -> Iterator[str]:
    """``pieces``, each longer than ``HUGE_DOC_CHARS`` as slices of half that (joined: the same text)."""
    step = HUGE_DOC_CHARS // 2
    for piece in pieces:
        if len(piece) <= HUGE_DOC_CHARS:
            yield piece
        else:
            yield from (piece[i:i + step] for i in range(0, len(piece), step))


def _load_fastokens(tokenizer: Tokenizer | Path) -> tuple[object | None, str]:
    """(fastokens tokenizer, ""), or (None, why it cannot be used).

    Called before the reference is loaded when the encoder is given a path: fastokens' JSON parse
    is the larger transient (Qwen3: ~250 MB, keeping ~90; tokenizers ~190, keeping ~50), so it
    should not stack on a loaded reference. Read from the file, no JSON string is held meanwhile.
    """
    # One encoder thread per worker process (the launcher shares cores out by process count);
    # fastokens reads this when a tokenizer is built. A value the user set is kept.
    os.environ.setdefault("FASTOKENS_BPE_THREADS", "1")
    try:
        import fastokens
    except ImportError:
        return None, "fastokens is not installed"
    try:
        if isinstance(tokenizer, Tokenizer):
            fast = fastokens.Tokenizer.from_json_str(tokenizer.to_str())
        else:
            fast = fastokens.Tokenizer.from_file(str(tokenizer))
        fast.no_padding()
        fast.no_truncation()
    except Exception as exc:  # the Rust loader raises bare exceptions for unsupported models
        return None, f"fastokens cannot load this tokenizer: {exc}"
    return fast, ""


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"
