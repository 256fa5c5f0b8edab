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
    """A download from the Hub cannot be done (repository, revision, disk space)."""


class ManifestError(SlimtokError):
    """A dataset folder or manifest cannot be listed or read."""


class FormatError(SlimtokError):
    """A shard file's format is not one slimtok reads (see slimtok.formats)."""


class TokenizerError(SlimtokError):
    """A tokenizer cannot be loaded, or does not give the reference ids."""


class JobMismatch(SlimtokError):
    """A relaunch asked for settings other than those pinned in job.json, or job.json is unusable."""


class LaunchError(SlimtokError):
    """Workers cannot be started as asked (process index, worker count, environment)."""


class OutputError(SlimtokError):
    """The output root cannot be written: full disk, permissions, a broken filesystem."""

    exit_code = EXIT_FATAL


class Stopped(SlimtokError):
    """A signal stopped a run part way: what was finished is kept, and a relaunch resumes."""

    exit_code = EXIT_INTERRUPTED


class CombineError(SlimtokError):
    """A split cannot be combined; the message names the shards and what to do."""


class CleanError(SlimtokError):
    """A finished job's intermediate files cannot be removed safely yet; the message says why."""


class ValidateError(SlimtokError):
    """An output root cannot be validated at all (as opposed to a check that fails)."""


class ExportError(SlimtokError):
    """An export cannot be written as asked."""


class DataError(SlimtokError):
    """Combined token files cannot be read for training."""


class DedupError(SlimtokError):
    """Deduplication cannot run on this output root."""


class MixError(SlimtokError):
    """A mix spec cannot be resolved or written."""


# -- one shard -------------------------------------------------------------------------------

class ShardError(SlimtokError):
    """One shard cannot be tokenized; the worker records it in ``failed/`` and goes on."""

    exit_code = EXIT_SHARDS_FAILED


class ShardReadError(ShardError):
    """A shard file cannot be read or decoded; ``reason`` names the line where there is one."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.reason = reason
        super().__init__(reason, path)


class EmptyShard(ShardError):
    """Lines were read but none held a usable document: almost always the wrong file or key."""


# -- control flow inside a worker (never shown to a user as an error) --------------------------

class LostClaim(Exception):
    """Another worker took this shard over; stop writing it."""


class Interrupted(Exception):
    """SIGTERM or SIGINT: progress is checkpointed, the claim released."""
