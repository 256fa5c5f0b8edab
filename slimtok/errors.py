"""Every error slimtok raises, in one place, and the exit status each one ends a command with.

A :class:`SlimtokError` renders as one line in one style::

    <file>: <what happened>; <what to do next>

``path`` is the file or folder at fault (omitted when none is), ``fix`` the next command or
setting to try. The CLI catches ``SlimtokError`` once and exits with its ``exit_code``; Python
callers catch it (or a stage's subclass) the same way.

Exit statuses (docs/OPERATIONS.md): 0 done; 1 some shard failed and is named in ``failed/`` (or a
validation check failed); 2 the command cannot run as asked (bad input, settings, tokenizer,
missing stage); 3 the output root cannot be written (full disk, permissions) or an unexpected
error outside any shard; 75 stopped on a signal, relaunch to resume.
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_SHARDS_FAILED = 1
EXIT_USAGE = 2
EXIT_FATAL = 3
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped on request; relaunching resumes


class SlimtokError(Exception):
    """Base of every error a user can act on; ``str()`` is the one-line message."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None, fix: str | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text}; {self.fix}" if self.fix else text


# -- stages, in data order -------------------------------------------------------------------

class MirrorError(SlimtokError):
    """A download from the Hub cannot be done (repository, revision, disk space)., e.g.::

        dataset acme/SlimPajama: revision 'v9' does not exist; pass a branch, a tag or a commit hash on the Hub
    """


class ObjectStoreError(SlimtokError):
    """An object store (``s3://``, ``hf://``) refused or lacks what was asked, named by URL, e.g.::

        s3://corpus/sp/: bucket 'corpus' does not exist at http://127.0.0.1:9000; check the bucket name
        and AWS_ENDPOINT_URL
    """


class ManifestError(SlimtokError):
    """A dataset folder or manifest cannot be listed or read., e.g.::

        hub/datasets--acme--sp/refs/main: names snapshot 1a2b, but hub/datasets--acme--sp/snapshots/1a2b does
        not exist; re-run `slimtok mirror` or point --dataset-dir at a snapshot folder
    """


class TokenizerError(SlimtokError):
    """A tokenizer cannot be loaded, or does not give the reference ids., e.g.::

        out/tokenizer/tokenizer.json: is missing: the output root's tokenizer copy was removed; relaunch
        `slimtok tokenize` with the original --tokenizer to write it again
    """


class JobMismatch(SlimtokError):
    """A relaunch asked for settings other than those pinned in job.json, or job.json is unusable., e.g.::

        out/job.json: is missing: is out a slimtok output root?; run `slimtok tokenize` with this
        --output-root to create the job
    """


class LaunchError(SlimtokError):
    """Workers cannot be started as asked (process index, worker count, environment)., e.g.::

        process index 8 is not in 0..7 (process count 8)
    """


class OutputError(SlimtokError):
    """The output root cannot be written: full disk, permissions, a broken filesystem., e.g.::

        out: meta.json needs 4,096 bytes but the filesystem has 0 free; free at least 4,096 bytes there,
        then run the command again
    """

    exit_code = EXIT_FATAL


class Stopped(SlimtokError):
    """A signal stopped a run part way: what was finished is kept, and a relaunch resumes., e.g.::

        out: stopped on a signal; finished units are kept; run `slimtok dedup --output-root out` again to resume
    """

    exit_code = EXIT_INTERRUPTED


class RootKindError(SlimtokError):
    """A command was pointed at an output root of a kind it cannot work on (or a mix at a folder
    that holds something else); the fix names the command that can., e.g.::

        out: is a mix output root (job.json records it): a mix holds no intermediate data to clean; free disk
        with `slimtok clean --output-root ROOT` on the roots it was mixed from
    """


class CombineError(SlimtokError):
    """A split cannot be combined; the message names the shards and what to do., e.g.::

        out/done/train/x.json: its file '../../etc/passwd' is outside the output root; the record was not
        written by slimtok; delete it and relaunch tokenize
    """


class CleanError(SlimtokError):
    """A finished job's intermediate files cannot be removed safely yet; the message says why., e.g.::

        out/locks: 2 worker claim(s) are live: train/a, train/b; wait for those workers to finish (or stop
        them), then run clean again
    """


class ValidateError(SlimtokError):
    """An output root cannot be validated at all (as opposed to a check that fails)., e.g.::

        out/meta.json: is missing; run `slimtok combine --output-root out` first
    """


class ExportError(SlimtokError):
    """An export cannot be written as asked., e.g.::

        out2: several --output-root need --data-args-path
    """


class DataError(SlimtokError):
    """Combined token files cannot be read for training., e.g.::

        out/train.idx: is missing; re-run `slimtok combine` to write it
    """


class DedupError(SlimtokError):
    """Deduplication cannot run on this output root., e.g.::

        out/dedup/job.json: no finished dedup here; run `slimtok dedup --output-root out` first
    """


class MixError(SlimtokError):
    """A mix spec cannot be resolved or written., e.g.::

        mix.yaml: no --output-root given; pass --output-root OUT, or --plan to only print the table
    """


class IntegrityError(SlimtokError):
    """A file differs from what its writer recorded (size, checksum, counts); every reader checks
    before it uses a file, so nothing is built from damaged bytes. The fix says how to redo it, e.g.::

        out/documents/train/x.docs: sha256 does not match its done record (changed after it was written); delete
        done/train/x.json and relaunch tokenize to redo the shard
    """


# -- one shard -------------------------------------------------------------------------------

class ShardError(SlimtokError):
    """One shard cannot be tokenized; the worker records it in ``failed/`` and goes on (its
    subclasses say why)."""

    exit_code = EXIT_SHARDS_FAILED


class ShardReadError(ShardError):
    """A shard file cannot be read or decoded; ``reason`` names the line where there is one, e.g.::

        sp/train/x.jsonl.zst: is 1,024 bytes but the manifest lists 2,048; rebuild the manifest with
        `slimtok manifest` (and a new --output-root if the data really changed)
    """

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.reason = reason
        super().__init__(reason, path)


class EmptyShard(ShardError):
    """Lines were read but none held a usable document: almost always the wrong file or key, e.g.::

        sp/train/x.jsonl.zst: no usable document in 9 lines (skipped: no text 9); check the file and
        --text-key 'text'
    """


class EncoderCrash(ShardError):
    """The native encoder raised something that is not an ``Exception`` (pyo3's ``PanicException``,
    a Rust panic, derives from ``BaseException``) while encoding this shard's documents, e.g.::

        the tokenizer's native encoder panicked on a batch of this shard (PanicException: regex
        backtrack limit exceeded); the other shards go on: fix the tokenizer or leave this shard out
    """


class ParityMismatch(ShardError):
    """A document's ids as the worker wrote them differ from the reference encoder's ids for its text
    (the per-job parity sample), e.g.::

        sp/train/x.jsonl.zst: document 17 (line 18) encodes to other ids than the reference tokenizers gives
        (first difference at id 5: 318 written, 262 expected); relaunch with --backend tokenizers and
        --retry-failed, and report the document
    """


# -- control flow inside a worker (never shown to a user as an error) --------------------------

class LostClaim(Exception):
    """Another worker took this shard over; stop writing it."""


class Interrupted(Exception):
    """SIGTERM or SIGINT: progress is checkpointed, the claim released."""
