"""A pinned job, read back: ``job.json``, the manifest copy and the tokenizer copy of an output root.

Reads only. Every stage after tokenize starts here: :func:`load_job` for the settings and
manifest, :func:`pinned_tokenizer_path` for the exact tokenizer the job encodes with.

Invariant: the tokenizer copy is used only when its sha256 is one job.json records. The one write
here, :func:`complete_pin`, finishes a pin a kill cut short with the staged copies job.json names.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from ..errors import JobMismatch, ManifestError, TokenizerError
from ..manifest import ShardEntry, manifest_digest, read_manifest
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


def pin_copies(root: OutputRoot) -> tuple[Path, ...]:
    """The copies a pin publishes with job.json: the manifest, the tokenizer and its config."""
    return root.manifest, root.tokenizer_file, root.tokenizer_config_file


def staged_copy(stage: Path, copy: Path) -> Path:
    """Where a pin stages ``copy`` (one of :func:`pin_copies`) inside its stage folder."""
    return stage / copy.name


def tokenizer_config(job: JobSettings) -> bytes:
    """The bytes of the job's ``tokenizer/tokenizer_config.json`` (a function of job.json)."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": job.eos_token}
    if job.bos_token is not None:
        config["bos_token"] = job.bos_token
    return orjson.dumps(config, option=orjson.OPT_INDENT_2)


def stage_matches(root: OutputRoot, stage: Path, job: JobSettings) -> bool:
    """Whether the copies still staged in ``stage`` (a kill may have published some) are the ones
    ``job`` pins, each checked against job.json: the tokenizer's sha256 is one it records, the
    manifest's digest is the pinned one, the config is the one it gives. A loser's stage never
    matches unless its copies are these very bytes."""
    staged = [copy for copy in pin_copies(root) if root.storage.exists(staged_copy(stage, copy))]
    try:
        for copy in staged:
            payload = root.storage.read_whole(staged_copy(stage, copy))
            if copy == root.tokenizer_file:
                good = hashlib.sha256(payload).hexdigest() in {job.tokenizer_sha256, job.tokenizer_file_sha256} - {""}
            elif copy == root.manifest:
                entries = read_manifest(staged_copy(stage, copy), check_files=False)
                good = manifest_digest(entries) == job.manifest_sha256
            else:
                good = payload == tokenizer_config(job)
            if not good:
                return False
    except (FileNotFoundError, ManifestError):  # published or discarded by another launch meanwhile
        return False
    return bool(staged)


def publish_stage(root: OutputRoot, stage: Path) -> None:
    """Move the staged copies of ``stage`` into place (each rename atomic; one a kill skipped is
    still staged, so this can be called again) and remove the stage folder."""
    for copy in pin_copies(root):
        staged = staged_copy(stage, copy)
        if root.storage.exists(staged):
            root.storage.make_folders(copy.parent)
            try:
                root.storage.replace(staged, copy)
            except FileNotFoundError:  # another launch of the same job published it since
                pass
    root.storage.sync_folder(root.tokenizer_dir)
    root.storage.sync_folder(root.root)
    discard_stage(root, stage)


def discard_stage(root: OutputRoot, stage: Path) -> None:
    """Remove a stage folder and whatever it holds (its temporary files too); a missing one is fine."""
    for _name, path in root.storage.files_under(stage, "", hidden=True):
        root.storage.delete(path)
    try:
        root.storage.remove_folder(stage)
    except FileNotFoundError:
        pass


def complete_pin(root: OutputRoot, job: JobSettings) -> bool:
    """Finish the pin of ``job`` if a kill cut it short after job.json was created: when a copy is
    missing, the stage whose copies ``job`` names is published. True when every copy is in place.
    A stage whose copies are another pin's is never published (it is a loser's, or a killed one's)."""
    if all(root.storage.exists(copy) for copy in pin_copies(root)):
        return True
    for stage in root.pin_stages():
        if stage_matches(root, stage, job):
            publish_stage(root, stage)
            break
    return all(root.storage.exists(copy) for copy in pin_copies(root))


def load_job(root: OutputRoot) -> tuple[JobSettings, list[ShardEntry]]:
    """The pinned settings and the pinned copy of the manifest of an output root."""
    job = read_job(root)
    complete_pin(root, job)  # a pin a kill cut short between job.json and its copies
    return job, read_manifest(root.manifest, check_files=False)  # checked when it was pinned


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
    complete_pin(root, job)  # a pin a kill cut short between job.json and its copies
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
