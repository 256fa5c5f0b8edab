"""The job: what ``slimtok tokenize`` was asked to do, pinned once in ``job.json``.

Reads the manifest and the tokenizer a launch names; writes (first launch only) ``job.json``,
``manifest.jsonl`` and ``tokenizer/`` into the output root. Every later stage loads the job from
there: :func:`load_job` for the settings and manifest, :func:`pinned_tokenizer_path` for the exact
tokenizer the job encodes with.

Invariant: a relaunch runs only if every pinned setting (``JobSettings.PINNED``) equals what it
asks for; the output root's tokenizer copy always loads to the pinned fingerprint.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from typing import TYPE_CHECKING

import orjson

from . import __version__
from .budget import (check_free_space, describe_estimate, disk_space, estimate_token_bytes, format_bytes, has_room,
                     sample_ratios)
from .errors import JobMismatch, ManifestError, TokenizerError
from .executor import refresh_interval
from .manifest import ShardEntry, manifest_digest, read_manifest
from .protocol import (DEFAULT_SOURCE_KEY, PROTOCOL_VERSION, SPLITS, JobSettings, OutputRoot, create_exclusive,
                       new_token, read_record, write_atomic, write_record)
from .tokenizer.loading import local_tokenizer_file

if TYPE_CHECKING:  # the launcher of a relaunch imports this module and never loads a tokenizer
    from tokenizers import Tokenizer

    from .tokenizer import DocumentPolicy, LoadedTokenizer

#: Defaults of ``slimtok tokenize`` (the CLI shows these; nothing else re-types them).
TOKENS_PER_WRITE = 131072
CHECKPOINT_EVERY = 5.0
STALE_AFTER = 300.0
MIN_FREE_FRACTION = 0.1


@dataclass
class TokenizeSettings:
    """What ``slimtok tokenize`` was asked to do; the pinned subset lives in job.json."""

    manifest: str
    output_root: str
    tokenizer: str
    tokens_per_write: int = TOKENS_PER_WRITE
    #: seconds of work between checkpoints (0: at every write); a crash redoes at most this much
    checkpoint_every: float = CHECKPOINT_EVERY
    splits: tuple[str, ...] = SPLITS
    text_key: str = "text"
    eos_id: int | None = None
    #: auto|always|never: the bos before each document (auto: what the tokenizer's template adds)
    bos: str = "auto"
    #: literal|parse: what special-token strings inside a document's text become
    special_text: str = "literal"
    #: auto: uint16 when every id fits, else uint32
    dtype: str = "auto"
    #: dotted path whose value names a document's source ("" for none); pinned in job.json
    source_key: str = DEFAULT_SOURCE_KEY
    #: encoder backend (auto|tokenizers|fastokens); not pinned: every backend gives the reference ids
    backend: str = "auto"
    retry_failed: bool = False
    #: refuse to start when the estimated token files would leave less than this share of the disk free
    min_free_fraction: float = MIN_FREE_FRACTION
    stale_after: float = STALE_AFTER
    process_index: int = 0
    process_count: int = 1
    workers: int = 1
    launch: str = field(default_factory=new_token)

    @property
    def heartbeat_interval(self) -> float:
        return refresh_interval(self.stale_after)


def requested_job(settings: TokenizeSettings, entries: list[ShardEntry], tok: LoadedTokenizer) -> JobSettings:
    """The job record this launch asks for (compared with job.json by :meth:`JobSettings.differences`)."""
    from .tokenizer import resolve_dtype

    dtype, why = resolve_dtype(settings.dtype, tok)
    p = tok.policy
    return JobSettings(manifest_sha256=manifest_digest(entries), shards=len(entries), tokenizer=tok.source,
                       tokenizer_sha256=tok.sha256, vocab_size=tok.vocab_size, eos_token_id=p.eos_id,
                       eos_token=p.eos_token, dtype=dtype, text_key=settings.text_key, source_key=settings.source_key,
                       bos_token_id=p.bos_id, bos_token=p.bos_token, special_text=p.special_text,
                       policy_notes=[*tok.notes, f"dtype: {dtype} ({why})"])


def document_policy(job: JobSettings) -> DocumentPolicy:
    """The pinned document policy of a job, as the encoder applies it."""
    from .tokenizer import DocumentPolicy

    return DocumentPolicy(eos_id=job.eos_token_id, eos_token=job.eos_token, bos_id=job.bos_token_id,
                          bos_token=job.bos_token, special_text=job.special_text)


def request_digest(settings: TokenizeSettings, tokenizer_file_sha256: str, folder: Path) -> str:
    """sha256 of everything a launch asks that decides the pinned record besides the manifest: the
    bytes of a local tokenizer.json (``tokenizer_file_sha256``) and of its folder's
    tokenizer_config.json, the raw tokenizer and text flags, the slimtok and protocol versions.
    Equal digests give equal records (the record is a function of these), so a relaunch with the
    recorded digest needs no tokenizer. A tokenizer that is not a local file (a Hub id, a folder
    for transformers) has none ("" in job.json): those always load."""
    config = folder / "tokenizer_config.json"
    config_sha256 = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None
    asked = [__version__, PROTOCOL_VERSION, tokenizer_file_sha256, config_sha256, settings.eos_id, settings.bos,
             settings.special_text, settings.dtype, settings.text_key, settings.source_key]
    return hashlib.sha256(orjson.dumps(asked)).hexdigest()


def pin_job(settings: TokenizeSettings, say: Callable[[str], None] | None = None) -> JobSettings:
    """Create job.json on first use, or check a relaunch against it; copy manifest and tokenizer.

    ``say`` gets the start-up lines: which separators and dtype were chosen and why, and warnings.
    A relaunch asking what job.json records (:func:`request_digest`) loads no tokenizer, nor does a
    new job from a local tokenizer.json whose JSON tells every pinned fact
    (:func:`slimtok.tokenizer.loading.pin_facts_from_json`; its fingerprint is recorded by the first
    worker, and the copy is the file's bytes, merge pairs as strings); otherwise the tokenizer is
    parsed once. Raises
    JobMismatch naming each differing setting before anything else is written, unless no shard is
    done or claimed under the pinned settings: then the job is re-pinned (:func:`_repin`).
    """
    root = OutputRoot(settings.output_root)
    entries = read_manifest(settings.manifest)
    file = local_tokenizer_file(settings.tokenizer)
    data = file.read_bytes() if file is not None else None  # read once: digest, facts and copy agree
    file_sha256 = hashlib.sha256(data).hexdigest() if data is not None else ""
    key = request_digest(settings, file_sha256, file.parent) if file is not None else ""
    stored = read_job(root) if root.job.exists() else None
    pinned = stored
    if (pinned is not None and key and pinned.request_sha256 == key and root.manifest.exists()
            and root.tokenizer_file.exists() and pinned.manifest_sha256 == manifest_digest(entries)):
        for line in pinned.policy_notes if say else ():
            say(line)
        check_disk_budget(settings, root, entries, pinned, None, say)
        return pinned
    from .tokenizer import load_tokenizer
    from .tokenizer.loading import pin_facts_from_json

    tok, copied = None, ""
    # The JSON tells every pinned fact but the fingerprint, which the first worker records; a job
    # pinned before needs it now, so only one whose copy holds these very bytes skips the parse.
    if data is not None:
        tok = pin_facts_from_json(settings.tokenizer, data, settings.eos_id, settings.bos, settings.special_text,
                                  file_sha256)
        copied = "" if tok is None else file_sha256 if tok.file_bytes is data else \
            hashlib.sha256(tok.file_bytes).hexdigest()
        if pinned is not None and pinned.tokenizer_file_sha256 != copied:
            tok = None
    if tok is None:
        tok = load_tokenizer(settings.tokenizer, settings.eos_id, settings.bos, settings.special_text)
        if file is not None:  # of the bytes actually parsed (the file may have changed since the read above)
            key = request_digest(settings, tok.source_file_sha256, file.parent)
    requested = requested_job(settings, entries, tok)
    for line in requested.policy_notes if say else ():
        say(line)
    if pinned is not None and not requested.tokenizer_sha256:  # read from the JSON of the pinned bytes
        requested = replace(requested, tokenizer_sha256=pinned.tokenizer_sha256)
    elif pinned is not None and not pinned.tokenizer_sha256:  # parsed, against a job not yet fingerprinted
        pinned = replace(pinned, tokenizer_sha256=tokenizer_fingerprint(root, pinned))
    if tok.tokenizer is not None:
        copied = hashlib.sha256(tok.file_text()).hexdigest()
    extras = {"tokenizer_file_sha256": copied, "request_sha256": key}
    bounds: dict[str, list[float]] | None = None
    if pinned is None:
        root.root.mkdir(parents=True, exist_ok=True)
        # The disk-budget sample is taken here, once per job, over every split, and pinned, unless
        # an upper bound on the tokens already leaves room (then nothing is encoded or pinned).
        sampled, bounds = _disk_sample(settings, root, entries, requested, tok)
        create_exclusive(root.job, replace(requested, **extras, sampled_ratios=sampled).to_json())
        pinned = read_job(root)
    diffs = pinned.differences(requested)
    if pinned.manifest_sha256 != requested.manifest_sha256:
        diffs = [d for d in diffs if not d.startswith("manifest_sha256:")]
        diffs.insert(0, manifest_change(root, entries))
    if diffs:
        sampled, bounds = _disk_sample(settings, root, entries, requested, tok)  # the old one used the old settings
        pinned = _repin(root, replace(requested, **extras, sampled_ratios=sampled), diffs, say)
    else:  # pinned by an older slimtok, or the same job asked through another file: record this request
        # (a split without a pinned sample is estimated by check_disk_budget, as at every launch)
        noted = replace(pinned, request_sha256=key)
        if noted != stored:
            write_record(root.job, noted)
        pinned = noted
    if not root.manifest.exists():
        write_atomic(root.manifest, Path(settings.manifest).read_bytes())
    if not root.tokenizer_file.exists():
        write_atomic(root.tokenizer_config_file, _tokenizer_config(pinned))
        # The bytes the fingerprint was taken from; a job pinned from another form of the same
        # tokenizer (another file, or transformers) gets the canonical JSON, whose sha256 is pinned.
        text = tok.file_text()
        if hashlib.sha256(text).hexdigest() != pinned.tokenizer_file_sha256:
            text = tok.canonical_json.encode()
        write_atomic(root.tokenizer_file, text)
    check_disk_budget(settings, root, entries, pinned, tok, say, bounds)
    return pinned


def _disk_sample(settings: TokenizeSettings, root: OutputRoot, entries: list[ShardEntry], job: JobSettings,
                 tok: LoadedTokenizer) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(the disk-budget sample to pin, the upper bounds used instead): no encoding when the
    bounded estimate of the shards to go already leaves room (the encoded one is lower, so the
    check cannot refuse), else the encoded sample of every split."""
    if tok.growth is not None:
        bounds = sample_ratios(entries, _bound_count(tok.growth, job), job.text_key)
        if _bounded_room(settings, root, _todo(settings, root, entries), job, bounds):
            return {}, bounds
    return sample_ratios(entries, _encode_count(tok.parsed(), job), job.text_key), {}


def _bound_count(growth: float, job: JobSettings) -> Callable[[list[str]], int]:
    """An upper bound on the tokens the worker writes for ``texts``: ``growth`` tokens per UTF-8
    byte (one byte at least: a tokenizer may put a token before empty text) plus the separators."""
    separators = 1 + (job.bos_token_id is not None)

    def count(texts: list[str]) -> int:
        return sum(math.ceil(growth * max(len(t.encode()), 1)) + separators for t in texts)

    return count


def _bounded_room(settings: TokenizeSettings, root: OutputRoot, todo: list[ShardEntry], job: JobSettings,
                  bounds: dict[str, list[float]]) -> bool:
    """Whether the shards to go (``todo``) fit by the bounded estimate (every split bounded)."""
    estimate = estimate_token_bytes(todo, job.token_width, bounds=bounds)
    return not estimate.unestimated_source_bytes and has_room(root.root, estimate.high, settings.min_free_fraction)


def _todo(settings: TokenizeSettings, root: OutputRoot, entries: list[ShardEntry]) -> list[ShardEntry]:
    done = root.done_ids()
    return [e for e in entries if e.split in settings.splits and e.id not in done]


def _repin(root: OutputRoot, requested: JobSettings, diffs: list[str], say: Callable[[str], None] | None) -> JobSettings:
    """Replace job.json by ``requested`` when nothing was kept under the pinned settings: no shard
    done, claimed or checkpointed (a launch whose every shard failed, e.g. on a wrong --text-key).
    Their failed records, manifest copy and tokenizer copy are removed first, so a kill part way
    leaves the old job with fewer records, never the new job with the old failures. Else JobMismatch."""
    current = read_job(root)
    if not current.differences(requested):
        # Another launcher of the same corrected command (another node) re-pinned it since this
        # one read job.json; its workers may hold claims already, which are this job's own.
        return current
    mismatch = "was started with other settings; refusing to mix outputs: " + "; ".join(diffs)
    done, held, partial = root.done_ids(), root.locked_ids(), root.checkpointed_ids()
    if done:
        raise JobMismatch(f"{mismatch} ({len(done)} shard(s) are done under the pinned settings)", root.job,
                          "use the original settings, or a new --output-root for the new ones")
    if held or partial:
        raise JobMismatch(f"{mismatch}; no shard is done, but {len(held)} claim(s) under locks/ and {len(partial)} "
                          "checkpoint(s) under checkpoints/ hold work of the pinned settings", root.job,
                          "wait for the launch that holds them to end; if none runs, remove locks/ and checkpoints/ "
                          "and relaunch: the job is then re-pinned to the new settings")
    failed = sorted(root.failed_ids())
    for shard in failed:
        root.failed(shard).unlink(missing_ok=True)
    for copy in (root.manifest, root.tokenizer_file, root.tokenizer_config_file):
        copy.unlink(missing_ok=True)
    write_record(root.job, requested)
    if say:
        say(f"job.json re-pinned: no shard was done under its old settings; removed their {len(failed)} failed "
            f"record(s); changed: {'; '.join(diffs)}")
    return requested


def _encode_count(encoder: Tokenizer, job: JobSettings) -> Callable[[list[str]], int]:
    """Tokens the worker writes for ``texts`` (separators included), by ``encoder``."""
    separators = 1 + (job.bos_token_id is not None)

    def count(texts: list[str]) -> int:
        return sum(len(e.ids) + separators for e in encoder.encode_batch(texts, add_special_tokens=False))

    return count


def check_disk_budget(settings: TokenizeSettings, root: OutputRoot, entries: list[ShardEntry], job: JobSettings,
                      tok: LoadedTokenizer | None, say: Callable[[str], None] | None,
                      bounds: dict[str, list[float]] | None = None) -> None:
    """Estimate the token bytes still to write, print it with the free space, and refuse
    (OutputError) when less than ``min_free_fraction`` of the disk would remain.

    Per split: job.json's pinned sample; for a split it lacks, ``bounds`` or an upper bound from
    the sample's text bytes (:func:`_bound_count`) when that leaves room; else a sample encoded by
    ``tok``, or by the pinned copy when a bound exists but shows no room."""
    todo = _todo(settings, root, entries)
    if not todo:
        return
    width = job.token_width
    missing = {e.split for e in todo} - job.sampled_ratios.keys()
    if missing and bounds is None:
        growth = tok.growth if tok else _file_growth(root.tokenizer_file)
        bounds = {} if growth is None else sample_ratios([e for e in entries if e.split in missing],
                                                         _bound_count(growth, job), job.text_key)
    bounds = bounds or {}
    encoder = None
    if missing and not _bounded_room(settings, root, todo, job, {**bounds, **job.sampled_ratios}):
        # only an encoded sample tells; without ``tok``, worth loading the copy when the texts are readable
        encoder = tok.parsed() if tok else load_pinned_tokenizer(root, job) if bounds else None
        bounds = {}
    estimate = estimate_token_bytes(todo, width, _encode_count(encoder, job) if encoder else None,
                                    text_key=job.text_key, sampled=job.sampled_ratios, bounds=bounds)
    space = disk_space(root.root)
    if say:
        amount, basis = describe_estimate(estimate)
        say(f"disk: {amount} of token files still to write ({basis}); "
            f"{format_bytes(space.free)} free of {format_bytes(space.total)} under {root.root}")
    check_free_space(root.root, estimate.high, settings.min_free_fraction)


def _file_growth(path: Path) -> float | None:
    """:func:`text_growth` of a tokenizer.json's normalizer and pre-tokenizer (None: unreadable)."""
    from .tokenizer.loading import text_growth

    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return text_growth(data.get("normalizer"), data.get("pre_tokenizer")) if isinstance(data, dict) else None


def manifest_change(root: OutputRoot, entries: list[ShardEntry]) -> str:
    """What differs between the pinned copy of the manifest and ``entries``, in words."""
    try:
        pinned = read_manifest(root.manifest, check_files=False)
    except ManifestError:
        return "manifest: differs from the one the job was pinned to (its copy in the output root is unreadable)"
    where = next((i for i, (a, b) in enumerate(zip(pinned, entries))
                  if (a.id, a.split, a.size) != (b.id, b.split, b.size)), min(len(pinned), len(entries)))
    text = f"manifest: pinned {len(pinned)} shards, requested {len(entries)}"
    if where < min(len(pinned), len(entries)):
        a, b = pinned[where], entries[where]
        text += (f"; line {where + 1} differs: pinned {a.id} ({a.split}, {a.size} bytes), "
                 f"requested {b.id} ({b.split}, {b.size} bytes)")
    elif len(pinned) != len(entries):
        extra = (pinned if len(pinned) > len(entries) else entries)[where]
        text += f"; first shard only in the {'pinned' if len(pinned) > len(entries) else 'requested'} one: {extra.id}"
    return text


def read_job(root: OutputRoot) -> JobSettings:
    """job.json of an output root; JobMismatch saying what to do when it is missing or unreadable."""
    job = read_record(root.job, JobSettings)
    if job is None and root.job.exists():
        raise JobMismatch("cannot be parsed (damaged or cut short); it pins the settings every shard of this "
                          "output root was tokenized with, so no stage can go on without it", root.job,
                          "restore job.json from a backup or copy of the output root; slimtok will not guess "
                          "it. To start over, tokenize into a new --output-root")
    if job is None:
        raise JobMismatch(f"is missing: is {root.root} a slimtok output root?", root.job,
                          "run `slimtok tokenize` with this --output-root to create the job")
    return job


def load_job(root: OutputRoot) -> tuple[JobSettings, list[ShardEntry]]:
    """The pinned settings and the pinned copy of the manifest of an output root."""
    return read_job(root), read_manifest(root.manifest, check_files=False)  # checked when it was pinned


def _tokenizer_config(job: JobSettings) -> bytes:
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": job.eos_token}
    if job.bos_token is not None:
        config["bos_token"] = job.bos_token
    return orjson.dumps(config, option=orjson.OPT_INDENT_2)


def pinned_tokenizer_path(root: OutputRoot, job: JobSettings) -> Path:
    """The job's own copy of ``tokenizer.json``, checked against the pinned fingerprint.

    The copy was written as the tokenizer's canonical JSON (sha256 = the fingerprint), in the
    compact form that was proven to load back to it, or as the given file's bytes (a job pinned
    from the JSON alone); the last two have their sha256 recorded beside the fingerprint, so
    the file's own sha256 suffices: no re-serialization or vocabulary walk at every worker start.
    """
    path = root.tokenizer_file
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise TokenizerError("is missing: the output root's tokenizer copy was removed", path,
                             "relaunch `slimtok tokenize` with the original --tokenizer to write it again") from None
    if digest not in {job.tokenizer_sha256, job.tokenizer_file_sha256}:
        raise TokenizerError("does not match job.json's tokenizer_sha256: the output root was modified", path,
                             "delete it and relaunch `slimtok tokenize` with the original --tokenizer")
    return path


def tokenizer_fingerprint(root: OutputRoot, job: JobSettings) -> str:
    """The job's ``tokenizer_sha256``: as job.json records it, or, while no worker has recorded it
    yet (a job pinned from the JSON alone), computed from the job's copy (one parse and one
    ``to_str``); "" when the copy is missing or does not load."""
    if job.tokenizer_sha256:
        return job.tokenizer_sha256
    from .tokenizer.loading import canonical_sha256, read_tokenizer_file

    try:
        return canonical_sha256(read_tokenizer_file(pinned_tokenizer_path(root, job)))
    except TokenizerError:
        return ""


def load_pinned_tokenizer(root: OutputRoot, job: JobSettings) -> Tokenizer:
    """The job's own copy of the tokenizer, checked as :func:`pinned_tokenizer_path` says."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(pinned_tokenizer_path(root, job)))  # from_file peaks lower than from_str
