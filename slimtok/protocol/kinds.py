"""What made an output root: its kind, recorded by the record that creates the root.

``slimtok tokenize`` creates a root with ``job.json`` (``JobSettings.kind`` "tokenize"); ``slimtok
mix`` with ``mix.json`` (a :class:`~.records.MixRecord`, created before any other file of the mix),
and the mix's job.json records "mix". Roots created before kinds were recorded have ``kind`` ""
in job.json: a mix.json beside it makes them a mix, else they are a tokenize root, and every
refusal says the kind was inferred and from what.

Invariant: every command asks :func:`require_kind` before it reads or writes anything else of a
root; what a command cannot do on a kind (:data:`REFUSALS`) it refuses in one line naming the
command that can, having changed nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RootKindError
from .atomic import read_record
from .layout import OutputRoot
from .records import JobSettings

TOKENIZE = "tokenize"
MIX = "mix"
KINDS = (TOKENIZE, MIX)

#: (kind, command) -> (why the command cannot work on that kind, the fix naming the command that can);
#: ``{root}`` in a fix is the root. A pair not listed is allowed.
REFUSALS: dict[tuple[str, str], tuple[str, str]] = {
    (MIX, "tokenize"): ("tokenize writes only into a root it created",
                        "use a new --output-root; to finish or rebuild this mix, relaunch `slimtok mix SPEC "
                        "--output-root {root}` with its spec"),
    (MIX, "combine"): ("`slimtok mix` writes its split files and meta.json itself, and its chunk records name the "
                       "split files, not shard files",
                       "to finish or rebuild them, relaunch `slimtok mix SPEC --output-root {root}` with its spec"),
    (MIX, "clean"): ("a mix holds no intermediate data to clean (its chunk records name the split files themselves)",
                     "free disk with `slimtok clean --output-root ROOT` on the roots it was mixed from"),
    (MIX, "dedup"): ("dedup reads the document tables of tokenize roots, and a mix has none",
                     "run `slimtok dedup --output-root ROOT` on the roots it was mixed from, or set `dedup: true` "
                     "in the mix spec"),
    (MIX, "mix source"): ("a mix's output has no document tables for another mix to draw documents from",
                          "name the roots it was mixed from as sources instead (its mix.json lists them)"),
    (TOKENIZE, "mix"): ("a mix writes only into an empty folder or its own earlier output",
                        "use a new, empty --output-root for the mix (to mix from this root, name it as a source's "
                        "`root` in the spec)"),
}


@dataclass(frozen=True)
class RootKind:
    """An output root's kind (None: no job there, or its job.json cannot be read) and how it is known."""

    kind: str | None
    how: str


def root_kind(root: OutputRoot) -> RootKind:
    """The kind job.json records; for a root created before kinds were recorded, inferred (mix.json
    there: a mix, else tokenize). Reads job.json and looks for mix.json; writes nothing."""
    job = read_record(root.job, JobSettings)
    if job is not None and job.kind:
        return RootKind(job.kind, "job.json records it")
    if root.storage.exists(root.mix_json):
        return RootKind(MIX, "inferred: mix.json is there" if job is not None else "mix.json is there")
    if job is not None:
        return RootKind(TOKENIZE, "inferred: its job.json predates recorded kinds and there is no mix.json")
    return RootKind(None, "job.json cannot be parsed" if root.storage.exists(root.job) else "no job.json or mix.json")


def require_kind(root: OutputRoot, command: str) -> RootKind:
    """The root's kind, unless ``command`` cannot work on it: then RootKindError naming the command
    that can (a kind this version does not know is refused by every command). A root without a
    readable job.json passes: each command's own reading of job.json says what is wrong."""
    found = root_kind(root)
    if found.kind is not None and found.kind not in KINDS:
        raise RootKindError(f"is a {found.kind!r} output root ({found.how}), a kind this slimtok does not know",
                            root.root, "use the slimtok version that wrote it")
    refusal = REFUSALS.get((found.kind or "", command))
    if refusal is not None:
        what, fix = refusal
        raise RootKindError(f"is a {found.kind} output root ({found.how}): {what}", root.root,
                            fix.format(root=root.root))
    return found


def splits_command(root: OutputRoot) -> str:
    """The command that writes a root's split files and meta.json, for the fixes of the stages
    that read them: combine for a tokenize root, the mix itself for a mix."""
    if root_kind(root).kind == MIX:
        return f"relaunch `slimtok mix SPEC --output-root {root.root}` with its spec"
    return f"run `slimtok combine --output-root {root.root}`"
