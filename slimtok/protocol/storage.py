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
* ``refuse_link``: nothing is written through a symbolic link planted in a root (see
  :class:`PosixStorage`); a publish asks before any work. An object store has no links: a no-op.
* ``make_folders``/``sync_folder``/``remove_folder``: folders exist only on POSIX; an object
  store implements them as no-ops (``remove_folder`` returns False: nothing was removed).

:func:`storage_for` maps a root path to its storage; an object store brings its own path type and
is registered there, so ``OutputRoot(root)`` and every helper pick it up.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat as stat_mode
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from ..errors import OutputError
from .identity import new_token

#: How :meth:`Storage.open_write` opens a data file: ``create`` (must not exist), ``truncate``
#: (created or emptied), ``append`` (created if missing, written at its end), ``keep`` (created if
#: missing, its bytes kept, written from the start), ``update`` (as ``keep``, but must exist).
WriteMode = Literal["create", "truncate", "append", "keep", "update"]

#: Every write opens with O_NOFOLLOW: a symbolic link planted where slimtok writes (by another user
#: of a shared root) must never redirect token data into the file it points at.
_FLAGS: dict[str, int] = {
    "create": os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
    "truncate": os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
    "append": os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
    "keep": os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW,
    "update": os.O_WRONLY | os.O_NOFOLLOW,
}


def link_refused(path: Path) -> OutputError:
    """The refusal of a symbolic link found where slimtok writes (see :class:`PosixStorage`)."""
    return OutputError("is a symbolic link where slimtok writes its own file; slimtok never writes through a link",
                       path, "remove the link (nothing was written through it) and run the command again")


def _is_link(path: Path) -> bool:
    try:
        return stat_mode.S_ISLNK(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _refuse_link(path: Path) -> None:
    if _is_link(path):
        raise link_refused(path)


#: The output roots this process opened (absolute, not resolved: the root itself may be a link).
_ROOTS: set[str] = set()


def mark_root(root: Path) -> None:
    """Record ``root`` as an output root: folders below it are checked for links before a write."""
    _ROOTS.add(os.path.abspath(root))


def _refuse_folder_links(folder: Path) -> None:
    """Refuse a link among ``folder`` and its parents below the nearest marked output root; a folder
    under no marked root is not checked (there is no telling which of its parents the user made)."""
    below = []
    current = os.path.abspath(folder)
    while current not in _ROOTS:
        parent = os.path.dirname(current)
        if parent == current:
            return
        below.append(current)
        current = parent
    for name in reversed(below):  # the outermost first: the link the user must remove
        _refuse_link(Path(name))


_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY


def _marked_root_of(folder: str) -> tuple[str, list[str]] | None:
    """(the nearest marked output root at or above ``folder``, the names from it down to ``folder``)."""
    below = []
    current = folder
    while current not in _ROOTS:
        parent = os.path.dirname(current)
        if parent == current:
            return None
        below.append(os.path.basename(current))
        current = parent
    return current, below[::-1]


def _refuse_link_at(folder_fd: int, path: Path) -> None:
    """Refuse a link at ``path``, whose folder is the open ``folder_fd``."""
    try:
        if stat_mode.S_ISLNK(os.stat(path.name, dir_fd=folder_fd, follow_symlinks=False).st_mode):
            raise link_refused(path)
    except (FileNotFoundError, NotADirectoryError):
        pass


def _open_child(folder_fd: int, name: str, path: str, create: bool) -> int:
    """The folder ``name`` inside the open ``folder_fd`` (``path`` is its full name, for the refusal),
    opened without following a link and made first when missing and ``create``."""
    for attempt in (1, 2):
        try:
            return os.open(name, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=folder_fd)
        except FileNotFoundError:
            if not create or attempt == 2:
                raise
            with suppress(FileExistsError):  # made by a concurrent writer: open it as ours
                os.mkdir(name, 0o777, dir_fd=folder_fd)
        except OSError as exc:
            # O_NOFOLLOW on a link fails with ELOOP (ENOTDIR with O_DIRECTORY on some kernels)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                _refuse_link_at(folder_fd, Path(path))
            raise
    raise AssertionError("unreachable")


def _open_folder(folder: Path, create: bool) -> int:
    """A descriptor of ``folder`` (made with its parents when ``create``), reached by an openat(2)
    walk from its output root (:func:`mark_root`): every folder below the root is opened relative to
    its parent's descriptor with O_NOFOLLOW, so a link there is refused, naming the outermost one.

    Why this is race-free where a check of the path followed by a write by path is not: the file is
    then created, renamed, linked or touched relative to the descriptor, which names the folder that
    was inside the root when it was opened; a folder swapped for a link afterwards (``shards/``
    renamed away and ``shards -> /elsewhere`` put in its place) changes what the *name* resolves to,
    never what the descriptor is. A folder under no marked root is opened by its path as before
    (there is no telling which of its parents the user made links on purpose)."""
    absolute = os.path.abspath(folder)
    found = _marked_root_of(absolute)
    if found is None:
        if create:
            os.makedirs(absolute, exist_ok=True)
        return os.open(absolute, _FOLDER_FLAGS)
    current, names = found
    if create:
        os.makedirs(current, exist_ok=True)  # the root itself (and above) may be the user's links
    fd = os.open(current, _FOLDER_FLAGS)
    try:
        for name in names:
            current = os.path.join(current, name)
            child = _open_child(fd, name, current, create)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def _folder_of(path: Path, create: bool = True) -> Iterator[int]:
    """The open folder of ``path`` (:func:`_open_folder`) for one operation. When the operation ends,
    the folders are checked by name again: a folder swapped for a link while it ran got nothing
    written outside the root (the descriptor held the real folder), but readers would now follow the
    link, so the swap is refused, naming the link, instead of going unnoticed."""
    fd = _open_folder(path.parent, create)
    try:
        yield fd
    finally:
        os.close(fd)
    _refuse_folder_links(path.parent)


def _fsync_folder(fd: int) -> None:
    with suppress(OSError):
        os.fsync(fd)


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

    def sizes_under(self, folder: Path, suffix: str) -> dict[str, int]:
        """{id: size} of every ``<id><suffix>`` file below ``folder`` (``.*`` names excluded): the
        listing of :meth:`files_under` with each file's size, for status over 100,000 done records."""

    def exists(self, path: Path) -> bool:
        """Whether ``path`` exists (a file, or on POSIX a folder too)."""

    def is_folder(self, path: Path) -> bool:
        """Whether ``path`` is a folder (something is stored below it)."""

    def is_link(self, path: Path) -> bool:
        """Whether ``path`` itself is a symbolic link (False where the store has none)."""

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

    def refuse_link(self, path: Path) -> None:
        """Raise :func:`link_refused` when ``path`` (or a folder between it and its output root) is a
        symbolic link: a publish checks its targets before any work. An object store has no links."""


class PosixStorage:
    """A local or network-mounted POSIX file system; see the module docstring for the choices.

    Nothing is written through a symbolic link: whole files are written to an exclusively created
    temporary name and renamed (a rename replaces a link, never its target), every other open for
    writing uses O_NOFOLLOW, links and times are set without following, and a link found at the
    name slimtok writes is refused with :func:`link_refused`, naming it, before anything is
    written. The folders between a written file and its output root (:func:`mark_root`) are checked
    the same way before and after they are made, since a planted ``shards -> /elsewhere`` would redirect every
    file created in it; the root and the folders above it are not: the user may have made those
    links (a scratch file system mounted elsewhere), and nothing inside the root can plant them.
    A folder swapped for a link between a check and the write cannot redirect it either: files are
    created, renamed, linked and touched relative to a descriptor of their folder reached by an
    openat(2) walk from the root (:func:`_open_folder`), and the swap is refused once noticed.
    """

    def create_exclusive(self, path: Path, payload: bytes, durable: bool = True) -> bool:
        """Uses link(2) of a private file rather than O_EXCL, because O_EXCL is not atomic on every
        NFS setup; a link whose reply was lost is recognised by the private file's link count.
        ``durable`` also syncs the content and the directory entry (two syncs)."""
        with _folder_of(path) as folder:
            tmp = _write_tmp(folder, path, lambda f: f.write(payload), durable)
            try:
                try:
                    os.link(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
                    created = True
                except FileExistsError:
                    created = False
                except OSError:
                    created = os.stat(tmp, dir_fd=folder).st_nlink == 2
                if not created and os.stat(tmp, dir_fd=folder).st_nlink == 2:
                    created = True
            finally:
                with suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=folder)
            if not created:  # a planted link is not "someone else's record": say so rather than read through it
                _refuse_link_at(folder, path)
            if created and durable:
                _fsync_folder(folder)
        return created

    def write_whole(self, path: Path, payload: bytes, durable: bool = True) -> None:
        with _folder_of(path) as folder:
            _install(folder, _write_tmp(folder, path, lambda f: f.write(payload), durable), path)
            if durable:
                _fsync_folder(folder)

    def read_whole(self, path: Path) -> bytes:
        return path.read_bytes()

    def open_read(self, path: Path) -> io.BufferedReader:
        return open(path, "rb")

    def open_write(self, path: Path, mode: WriteMode) -> BinaryIO:
        with _folder_of(path, create=mode != "update") as folder:
            try:
                # 0o644 as every slimtok file always had (open() would give 0o666 minus the umask)
                fd = os.open(path.name, _FLAGS[mode], 0o644, dir_fd=folder)
            except OSError as exc:
                # O_NOFOLLOW fails with ELOOP on a link; O_EXCL with EEXIST, even on a dangling one
                if exc.errno in (errno.ELOOP, errno.EEXIST):
                    _refuse_link_at(folder, path)
                raise
        return os.fdopen(fd, "ab" if mode == "append" else "wb")

    def sync(self, stream: BinaryIO, data_only: bool = False) -> None:
        stream.flush()
        (os.fdatasync if data_only else os.fsync)(stream.fileno())

    def stat(self, path: Path) -> FileStat:
        st = os.stat(path)
        return FileStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, str(st.st_ino))

    def delete(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def replace(self, source: Path, target: Path) -> None:
        with _folder_of(source, create=False) as origin, _folder_of(target, create=False) as folder:
            _refuse_link_at(origin, source)  # moving a planted link aside (a corrupt record's, a stale lock's) hides it
            _refuse_link_at(folder, target)
            os.replace(source.name, target.name, src_dir_fd=origin, dst_dir_fd=folder)

    def link(self, source: Path, target: Path) -> None:
        with _folder_of(source, create=False) as origin, _folder_of(target, create=False) as folder:
            _refuse_link_at(origin, source)
            try:
                # linkat without AT_SYMLINK_FOLLOW: a link swapped in after the check is linked itself
                os.link(source.name, target.name, src_dir_fd=origin, dst_dir_fd=folder, follow_symlinks=False)
            except FileExistsError:
                _refuse_link_at(folder, target)
                raise

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

    def sizes_under(self, folder: Path, suffix: str) -> dict[str, int]:
        """One ``scandir`` per folder and one stat per file (as ``stat`` does, following links), with
        no ``Path`` built per file: what ``files_under`` then ``stat`` cost, several times faster."""
        sizes: dict[str, int] = {}
        pending = [(os.fspath(folder), "")]
        while pending:
            where, prefix = pending.pop()
            try:
                listing = os.scandir(where)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with listing:
                for entry in listing:
                    name = entry.name
                    try:
                        if entry.is_dir():
                            if not entry.is_symlink():  # as os.walk: a linked folder is not entered
                                pending.append((entry.path, prefix + name + "/"))
                        elif name.endswith(suffix) and not name.startswith("."):
                            sizes[prefix + name[: len(name) - len(suffix)]] = entry.stat().st_size
                    except FileNotFoundError:
                        continue  # removed since the listing
        return sizes

    def exists(self, path: Path) -> bool:
        return path.exists()

    def is_folder(self, path: Path) -> bool:
        return path.is_dir()

    def is_link(self, path: Path) -> bool:
        return path.is_symlink()

    def copy(self, source: Path, target: Path) -> None:
        """shutil.copy2's bytes, mode and times, but into an exclusively created temporary name that
        is then renamed over ``target`` (copy2 would open a link at ``target`` and write through it);
        mode and times are set through the open file, never by a name that a swap could redirect."""
        def fill(dst: BinaryIO) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, dst)
                dst.flush()
                st = os.fstat(src.fileno())
                os.fchmod(dst.fileno(), stat_mode.S_IMODE(st.st_mode))
                os.utime(dst.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))

        with _folder_of(target) as folder:
            _install(folder, _write_tmp(folder, target, fill, durable=False), target)

    def make_folders(self, folder: Path) -> None:
        os.close(_open_folder(folder, create=True))
        _refuse_folder_links(folder)  # a swap while they were made (see _folder_of)

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
        with _folder_of(probe) as folder:
            _refuse_link_at(folder, probe)
            try:
                os.utime(probe.name, None, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                os.close(os.open(probe.name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=folder))
            return os.stat(probe.name, dir_fd=folder, follow_symlinks=False).st_mtime

    def set_mtime(self, path: Path, mtime_ns: int) -> None:
        with _folder_of(path, create=False) as folder:
            _refuse_link_at(folder, path)
            os.utime(path.name, ns=(mtime_ns, mtime_ns), dir_fd=folder, follow_symlinks=False)

    def refuse_link(self, path: Path) -> None:
        _refuse_folder_links(path.parent)
        _refuse_link(path)


POSIX = PosixStorage()


def storage_for(path: Path) -> Storage:
    """The storage that holds ``path``. Every path is a POSIX one today; an object store adds its
    path type here, so stages and helpers that only see paths need no change."""
    return POSIX


def _write_tmp(folder: int, path: Path, fill: Callable[[BinaryIO], object], durable: bool) -> str:
    """The name, inside the open ``folder``, of a new private file for ``path`` that ``fill`` wrote
    (synced if ``durable``); on any failure the file is removed."""
    tmp = temp_path(path).name
    try:
        with os.fdopen(os.open(tmp, _FLAGS["create"], 0o644, dir_fd=folder), "wb") as f:
            fill(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)
        raise
    return tmp


def _install(folder: int, tmp: str, path: Path) -> None:
    """Rename the private file ``tmp`` over ``path`` inside the open ``folder``, refusing a link
    planted at ``path``; on any failure ``tmp`` is removed."""
    try:
        _refuse_link_at(folder, path)
        os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)
        raise


def temp_path(path: Path) -> Path:
    """A private temporary name beside ``path`` (``.<name>.<token>.tmp``: never listed as an id)."""
    return path.with_name(f".{path.name}.{new_token()}.tmp")


def temp_glob(name: str) -> str:
    """The glob of every :func:`temp_path` of a file called ``name``."""
    return f".{name}.*.tmp"
