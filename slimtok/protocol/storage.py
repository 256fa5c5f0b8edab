"""The storage seam: every file operation the protocol performs on an output root, in one interface.

Nothing outside ``slimtok.protocol`` opens, renames, links, deletes or stats a file under an output
root by itself: it asks :class:`OutputRoot` for the path and the root's :class:`Storage` (or a
protocol helper built on it, such as ``write_record``) for the operation. :class:`PosixStorage` is
the only implementation today; it does exactly what slimtok always did on a shared POSIX file
system (link(2)-based exclusive create, temp + fsync + rename, fsync of the folder after a rename).

Why the interface has these operations, and how an object store (S3 and its look-alikes) would
implement them without a change to any stage:

* ``create_exclusive``: the claim, done-record and pin primitive. POSIX: link(2) of a private
  file, because O_EXCL is not atomic on every NFS. Object store: ``PUT`` with ``If-None-Match: *``
  (412 = someone else created it).
* ``write_whole``: readers see the old or the new bytes, never a mix. POSIX: temporary name,
  fsync, rename, fsync of the folder. Object store: a plain ``PUT`` already replaces atomically.
* ``replace``: the steal of a stale lock and a publish rely on a rename being one step. Object
  store: a lock is replaced by ``PUT`` with ``If-Match: <etag the stealer read>``, so the identity
  in :class:`FileStat` (inode here, ETag there) is what a stealer compares; a publish becomes the
  intent record plus copies, which ``roll_forward`` already completes after a kill.
* ``open_write``/``open_read``: streamed data (part files, logs, journals, combined splits).
  Object store: a writer that uploads numbered parts (multipart upload, completed on ``sync``
  of the whole file) and a reader doing ranged ``GET``s. ``fileno()`` of a POSIX stream is used
  only by the kernel copies of :mod:`slimtok.spans`, which an object store replaces with
  ``UploadPartCopy``.
* ``stat``: size, mtime and an identity that changes whenever the content is replaced (inode and
  ctime here, ETag/version there); claims watch it to decide staleness.
* ``now``/``set_mtime``: the clock used for ages is the store's, never a host's. POSIX: touch a
  probe and read its mtime (the file server's clock). Object store: the ``Last-Modified`` of a
  ``PUT`` of the probe; a heartbeat rewrites the lock conditionally instead of moving its mtime.
* ``exists``/``is_folder``: the questions a stage asks before it reads or decides (is a done
  record, a lock, a combined split there?). POSIX: a stat that follows symlinks, as
  ``Path.exists``/``Path.is_dir``. Object store: a ``HEAD`` of the key; a folder is a prefix that a
  ``ListObjectsV2`` of one key finds anything under.
* ``list_names``/``files_under``: listings (one directory walk; ``ListObjectsV2`` by prefix).
* ``copy``: a file copied whole (a tokenizer folder into a new root). POSIX: ``shutil.copy2``
  (bytes, mode and times). Object store: ``CopyObject``.
* ``make_folders``/``sync_folder``/``remove_folder``: folders exist only on POSIX; an object
  store implements them as no-ops (``remove_folder`` returns False: nothing was removed).

:func:`storage_for` maps a root path to its storage; an object store brings its own path type and
is registered there, so ``OutputRoot(root)`` and every helper pick it up.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from .identity import new_token

#: How :meth:`Storage.open_write` opens a data file: ``create`` (must not exist), ``truncate``
#: (created or emptied), ``append`` (created if missing, written at its end), ``keep`` (created if
#: missing, its bytes kept, written from the start), ``update`` (as ``keep``, but must exist).
WriteMode = Literal["create", "truncate", "append", "keep", "update"]

_FLAGS: dict[str, int] = {
    "create": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "truncate": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "append": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "keep": os.O_WRONLY | os.O_CREAT,
    "update": os.O_WRONLY,
}


@dataclass(frozen=True)
class FileStat:
    """What a reader may know of a file without opening it.

    ``identity`` names the file's current incarnation (the inode number on POSIX, so a file
    replaced by a rename gets a new one); ``change_ns`` moves on any change to it or its metadata.
    """

    size: int
    mtime_ns: int
    change_ns: int
    identity: str

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9


class Storage(Protocol):
    """Every file operation the protocol needs (see the module docstring for each one's reason)."""

    def create_exclusive(self, path: Path, payload: bytes, durable: bool = True) -> bool:
        """Create ``path`` with ``payload`` unless it exists; True when this call created it."""

    def write_whole(self, path: Path, payload: bytes, durable: bool = True) -> None:
        """Replace ``path`` with ``payload`` so readers see the old or the new bytes, never a mix."""

    def read_whole(self, path: Path) -> bytes:
        """All of ``path``'s bytes (FileNotFoundError when missing)."""

    def open_read(self, path: Path) -> io.BufferedReader:
        """``path`` opened for streamed reading (FileNotFoundError when missing)."""

    def open_write(self, path: Path, mode: WriteMode) -> BinaryIO:
        """``path`` opened for streamed (buffered) writing; its folder is created as needed. A caller
        that writes through ``fileno()`` (kernel copies) does not also write through the stream."""

    def sync(self, stream: BinaryIO, data_only: bool = False) -> None:
        """Flush ``stream`` and make what was written durable (``data_only``: not its metadata)."""

    def stat(self, path: Path) -> FileStat:
        """``path``'s size, times and identity (FileNotFoundError when missing)."""

    def delete(self, path: Path) -> None:
        """Remove ``path``; a missing file is not an error."""

    def replace(self, source: Path, target: Path) -> None:
        """Move ``source`` to ``target`` in one step, replacing it."""

    def link(self, source: Path, target: Path) -> None:
        """A second name ``target`` for the existing ``source`` (FileExistsError when taken)."""

    def list_names(self, folder: Path) -> list[str]:
        """The names in ``folder`` (empty when it does not exist)."""

    def files_under(self, folder: Path, suffix: str, hidden: bool = False) -> Iterator[tuple[str, Path]]:
        """(id, path) of every ``<id><suffix>`` file below ``folder``, ``.*`` names excluded unless
        ``hidden`` (the temporary and work files a clean-up looks for)."""

    def exists(self, path: Path) -> bool:
        """Whether ``path`` exists (a file, or on POSIX a folder too)."""

    def is_folder(self, path: Path) -> bool:
        """Whether ``path`` is a folder (something is stored below it)."""

    def copy(self, source: Path, target: Path) -> None:
        """Copy the file ``source`` whole to ``target``, replacing it; its folder is created as needed."""

    def make_folders(self, folder: Path) -> None:
        """Make ``folder`` and its parents exist."""

    def sync_folder(self, folder: Path) -> None:
        """Make renames and links inside ``folder`` durable."""

    def remove_folder(self, folder: Path) -> bool:
        """Remove ``folder`` if it is empty; False when it is not (FileNotFoundError when gone)."""

    def now(self, probe: Path) -> float:
        """The storage's own clock (seconds since the epoch), read through the file ``probe``."""

    def set_mtime(self, path: Path, mtime_ns: int) -> None:
        """Set ``path``'s modification time (a claim's heartbeat)."""


class PosixStorage:
    """A local or network-mounted POSIX file system; see the module docstring for the choices."""

    def create_exclusive(self, path: Path, payload: bytes, durable: bool = True) -> bool:
        """Uses link(2) of a private file rather than O_EXCL, because O_EXCL is not atomic on every
        NFS setup; a link whose reply was lost is recognised by the private file's link count.
        ``durable`` also syncs the content and the directory entry (two syncs)."""
        tmp = self._write_tmp(path, payload, durable)
        try:
            try:
                os.link(tmp, path)
                created = True
            except FileExistsError:
                created = False
            except OSError:
                created = os.stat(tmp).st_nlink == 2
            if not created and os.stat(tmp).st_nlink == 2:
                created = True
        finally:
            tmp.unlink(missing_ok=True)
        if created and durable:
            self.sync_folder(path.parent)
        return created

    def write_whole(self, path: Path, payload: bytes, durable: bool = True) -> None:
        tmp = self._write_tmp(path, payload, durable)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if durable:
            self.sync_folder(path.parent)

    def _write_tmp(self, path: Path, payload: bytes, durable: bool) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        fd = os.open(tmp, _FLAGS["create"], 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp

    def read_whole(self, path: Path) -> bytes:
        return path.read_bytes()

    def open_read(self, path: Path) -> io.BufferedReader:
        return open(path, "rb")

    def open_write(self, path: Path, mode: WriteMode) -> BinaryIO:
        if mode != "update":
            path.parent.mkdir(parents=True, exist_ok=True)
        # 0o644 as every slimtok file always had (open() would give 0o666 minus the umask)
        return os.fdopen(os.open(path, _FLAGS[mode], 0o644), "ab" if mode == "append" else "wb")

    def sync(self, stream: BinaryIO, data_only: bool = False) -> None:
        stream.flush()
        (os.fdatasync if data_only else os.fsync)(stream.fileno())

    def stat(self, path: Path) -> FileStat:
        st = os.stat(path)
        return FileStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, str(st.st_ino))

    def delete(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def link(self, source: Path, target: Path) -> None:
        os.link(source, target)

    def list_names(self, folder: Path) -> list[str]:
        try:
            return os.listdir(folder)
        except FileNotFoundError:
            return []

    def files_under(self, folder: Path, suffix: str, hidden: bool = False) -> Iterator[tuple[str, Path]]:
        for dirpath, _dirs, files in os.walk(folder):
            rel = os.path.relpath(dirpath, folder)
            prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for name in files:
                if name.endswith(suffix) and (hidden or not name.startswith(".")):
                    yield prefix + name[: len(name) - len(suffix)], Path(dirpath, name)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def is_folder(self, path: Path) -> bool:
        return path.is_dir()

    def copy(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)

    def make_folders(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)

    def sync_folder(self, folder: Path) -> None:
        """A no-op where directories can't be opened."""
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def remove_folder(self, folder: Path) -> bool:
        try:
            folder.rmdir()
        except FileNotFoundError:
            raise
        except OSError:  # not empty
            return False
        return True

    def now(self, probe: Path) -> float:
        """The file server's idea of now: the mtime of ``probe`` touched just now (created if needed)."""
        try:
            os.utime(probe, None)
        except FileNotFoundError:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.touch()
        return os.stat(probe).st_mtime

    def set_mtime(self, path: Path, mtime_ns: int) -> None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


POSIX = PosixStorage()


def storage_for(path: Path) -> Storage:
    """The storage that holds ``path``. Every path is a POSIX one today; an object store adds its
    path type here, so stages and helpers that only see paths need no change."""
    return POSIX


def temp_path(path: Path) -> Path:
    """A private temporary name beside ``path`` (``.<name>.<token>.tmp``: never listed as an id)."""
    return path.with_name(f".{path.name}.{new_token()}.tmp")


def temp_glob(name: str) -> str:
    """The glob of every :func:`temp_path` of a file called ``name``."""
    return f".{name}.*.tmp"
