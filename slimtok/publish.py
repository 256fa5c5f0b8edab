"""Files that belong together appear together: the one way combine and export replace outputs.

A :class:`PendingSet` names the target files of one folder that readers use together (``train.bin``
with ``train.idx`` and ``meta.*``; a Megatron ``.bin`` with its ``.idx``; packed parts with their
manifest). The new files are written under temporary names (:meth:`PendingSet.tmp`); then
:meth:`PendingSet.publish`:

1. durably writes an intent record ``.<first target>.publish.json`` listing the renames;
2. removes the old *partners* (the files that must never survive beside a new data file: the old
   ``.idx``, ``meta.*``, a packed manifest), so a reader of the data file finds its partner
   missing, a clear error, never an old partner describing new data;
3. renames every temporary file into place, partners last, removes the files the new set makes
   obsolete (parts of an older, longer packed export), and removes the intent.

A kill at any moment leaves either the old complete set (before the intent exists) or an intent
that :func:`roll_forward` completes; every combine, export, validate and ``slimtok.data`` open
calls it first. Entering a set also removes the temporary files a killed run left beside its
targets. A set left without :meth:`publish` (an error, a signal) removes its temporary files; a
full disk becomes an :class:`~slimtok.errors.OutputError` naming the file (exit 3), as it does
inside :func:`full_disk_is_fatal` for the stages that write outside a set (mix chunks, dedup units).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import OutputError
from .protocol import (
    PUBLISH_INTENT,
    PublishIntent,
    publish_intent,
    read_record,
    storage_for,
    temp_glob,
    temp_path,
    write_record,
)
from .space import lacks_room

INTENT_SUFFIX = "." + PUBLISH_INTENT
_FULL = {errno.ENOSPC, errno.EDQUOT}


@contextlib.contextmanager
def full_disk_is_fatal(doing: str, path: Path, fix: str) -> Iterator[None]:
    """A full disk inside (OSError ENOSPC or EDQUOT) becomes the one-line :class:`OutputError`
    ``<file>: the disk filled up while <doing> (<reason>); <fix>`` (exit 3), naming the file the
    error names, else ``path``; any other error passes unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        raise OutputError(f"the disk filled up while {doing} ({exc.strerror})", exc.filename or path, fix) from exc


def _complete(folder: Path, intent: PublishIntent) -> None:
    storage = storage_for(folder)
    pending = {name for tmp, name in intent.renames if storage.exists(folder / tmp)}
    for name in intent.partners:
        if name in pending:  # only an old partner: a renamed one is already the new file
            storage.delete(folder / name)
    for tmp, name in intent.renames:
        if storage.exists(folder / tmp):
            storage.replace(folder / tmp, folder / name)
            # rename(2) between two links of one file does nothing: the target already is the new file
            storage.delete(folder / tmp)
    for name in intent.obsolete:
        storage.delete(folder / name)
    storage.sync_folder(folder)


def roll_forward(folder: Path) -> list[str]:
    """Complete every publish a killed run left in ``folder``; returns the targets it renamed."""
    storage = storage_for(folder)
    done: list[str] = []
    intents = sorted(folder / name for name in storage.list_names(folder)
                     if name.startswith(".") and name.endswith(INTENT_SUFFIX))
    for path in intents:
        intent = read_record(path, PublishIntent)
        if intent is not None:
            _complete(folder, intent)
            done += [name for _, name in intent.renames]
        storage.delete(path)
        storage.sync_folder(folder)
    return done


def remove_stale(folder: Path, names: Sequence[str]) -> int:
    """Remove ``.<name>.<token>.tmp`` files of ``names`` left by a killed run; returns how many."""
    storage = storage_for(folder)
    removed = 0
    present = storage.list_names(folder)
    for name in names:
        for stale in fnmatch.filter(present, temp_glob(name)):
            storage.delete(folder / stale)
            removed += 1
    return removed


def require_free(folder: Path, needed: int, what: str) -> None:
    """Refuse (OutputError) when ``folder``'s filesystem has less than ``needed`` bytes free."""
    space = lacks_room(folder, needed)
    if space is not None:
        raise OutputError(f"{what} needs {needed:,} bytes but the filesystem has {space.free:,} free", folder,
                          f"free at least {needed - space.free:,} bytes there, then run the command again")


class PendingSet:
    """New versions of ``targets`` (one folder) written under temporary names, published together.

    ``partners`` (default: every target but the first) are removed before any rename."""

    def __init__(self, targets: Sequence[Path], partners: Sequence[Path] | None = None):
        self.folder = targets[0].parent
        if any(t.parent != self.folder for t in targets):
            raise ValueError("a PendingSet's targets must share one folder")
        self.targets = list(targets)
        self.partners = list(targets[1:] if partners is None else partners)
        self._tmp: dict[Path, Path] = {}
        self._adopted: set[Path] = set()
        self.published = self._committed = False

    def __enter__(self) -> PendingSet:
        storage = storage_for(self.folder)
        storage.make_folders(self.folder)
        for path in self.targets + self.partners:  # a planted link would only be removed: say so before any work
            storage.refuse_link(path)
        roll_forward(self.folder)
        remove_stale(self.folder, [t.name for t in self.targets] + [f"*{INTENT_SUFFIX}"])  # any set's intent
        return self

    def tmp(self, target: Path) -> Path:
        """The temporary file to write ``target``'s new version to (one per target)."""
        if target not in self.targets:
            raise ValueError(f"{target} is not a target of this set")
        return self._tmp.setdefault(target, temp_path(target))

    def adopt(self, target: Path, path: Path) -> None:
        """Publish the existing file ``path`` (same folder) as ``target``; never removed on failure."""
        if target not in self.targets or path.parent != self.folder:
            raise ValueError(f"{path} cannot become {target} in this set")
        self._tmp[target] = path
        self._adopted.add(path)

    def add(self, target: Path, partner: bool = True) -> None:
        """Another target of the set (e.g. a packed part whose count is known only while writing)."""
        if target.parent != self.folder:
            raise ValueError("a PendingSet's targets must share one folder")
        self.targets.append(target)
        if partner:
            self.partners.append(target)

    def publish(self, obsolete: Sequence[Path] = ()) -> None:
        """Make every written temporary file its target's new version, atomically as a set, and
        remove ``obsolete`` files of the folder (e.g. parts an older, longer export left)."""
        order = [t for t in self.targets if t not in self.partners] + [t for t in self.targets if t in self.partners]
        intent = PublishIntent([[self._tmp[t].name, t.name] for t in order if t in self._tmp],
                               [p.name for p in self.partners], [p.name for p in obsolete])
        path = publish_intent(self.targets[0])
        write_record(path, intent)
        self._committed = True  # from here on the temporary files belong to the intent
        _complete(self.folder, intent)
        storage = storage_for(self.folder)
        storage.delete(path)
        storage.sync_folder(self.folder)
        self.published = True

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if self.published or self._committed:
            return
        for tmp in set(self._tmp.values()) - self._adopted:
            try:
                storage_for(tmp).delete(tmp)
            except OSError:  # the cleanup must never hide the error that brought us here
                pass
        if isinstance(exc, OSError) and exc.errno in _FULL:
            raise OutputError(f"the disk filled up while writing {self.targets[0].name} (temporary files removed)",
                              exc.filename or self.targets[0],
                              "free space there and run the command again") from exc
