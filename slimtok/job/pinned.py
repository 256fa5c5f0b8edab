"""A pinned job, read back: ``job.json``, the manifest copy and the tokenizer copy of an output root.

Reads only. Every stage after tokenize starts here: :func:`load_job` for the settings and
manifest, :func:`pinned_tokenizer_path` for the exact tokenizer the job encodes with.

Invariant: the tokenizer copy is used only when its sha256 is one job.json records.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import JobMismatch, TokenizerError
from ..manifest import ShardEntry, read_manifest
from ..protocol import JobSettings, OutputRoot, read_record

if TYPE_CHECKING:  # a launcher of a relaunch imports this module and never loads a tokenizer
    from tokenizers import Tokenizer

    from ..tokenizer import DocumentPolicy


def read_job(root: OutputRoot) -> JobSettings:
    """job.json of an output root; JobMismatch saying what to do when it is missing or unreadable."""
    job = read_record(root.job, JobSettings)
    if job is None and root.storage.exists(root.job):
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


def document_policy(job: JobSettings) -> DocumentPolicy:
    """The pinned document policy of a job, as the encoder applies it."""
    from ..tokenizer import DocumentPolicy

    return DocumentPolicy(eos_id=job.eos_token_id, eos_token=job.eos_token, bos_id=job.bos_token_id,
                          bos_token=job.bos_token, special_text=job.special_text)


def pinned_tokenizer_path(root: OutputRoot, job: JobSettings) -> Path:
    """The job's own copy of ``tokenizer.json``, checked against the pinned fingerprint.

    The copy was written as the tokenizer's canonical JSON (sha256 = the fingerprint), in the
    compact form that was proven to load back to it, or as the given file's bytes (a job pinned
    from the JSON alone); the last two have their sha256 recorded beside the fingerprint, so
    the file's own sha256 suffices: no re-serialization or vocabulary walk at every worker start.
    """
    path = root.tokenizer_file
    try:
        digest = hashlib.sha256(root.storage.read_whole(path)).hexdigest()
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
    from ..tokenizer.loading import canonical_sha256, read_tokenizer_file

    try:
        return canonical_sha256(read_tokenizer_file(pinned_tokenizer_path(root, job)))
    except TokenizerError:
        return ""


def load_pinned_tokenizer(root: OutputRoot, job: JobSettings) -> Tokenizer:
    """The job's own copy of the tokenizer, checked as :func:`pinned_tokenizer_path` says."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(pinned_tokenizer_path(root, job)))  # from_file peaks lower than from_str
