"""Stage 1, before the manifest: bring a Hub repo (SlimPajama shards, a tokenizer) onto disk.

:func:`mirror` plans and checks before it downloads; each file is fetched by
``huggingface_hub.hf_hub_download``:

1. resolve the requested revision to a commit (``HfApi.repo_info``), so every later step, the
   download included, sees the same commit even if the branch moves meanwhile;
2. list the repo tree at that commit (``HfApi.list_repo_tree``) and filter it with the include and
   exclude globs through ``huggingface_hub.utils.filter_repo_objects``, the function
   ``snapshot_download`` filters with, so a mirror selects what a Hub user expects (``*`` also
   matches ``/``; a pattern ending in ``/`` means the whole folder);
3. find the files already complete on disk (below) and the bytes still to fetch, and refuse, with
   the numbers, when fetching them would leave less than ``min_free_fraction`` of the disk free;
4. download the missing files only, ``max_workers`` at a time, pinned to the commit (with
   everything present no request is made). A file that fails (an HTTP error, a dropped
   connection, a short body) does not stop the others: every failed file is named at the end and
   the rest are kept, so the next run fetches exactly the failed ones. Failures that would fail every
   file (access refused, offline mode, a full disk) stop the run at once. Then every file's size is
   checked on disk. Progress reaches a :class:`~slimtok.progress.ProgressDisplay` through
   huggingface_hub's ``tqdm_class`` hook (:class:`_HubTally`);
5. write the mirror record (:mod:`slimtok.mirror.record`) and, in cache mode, ``refs/<revision>``.

Where files land:

* cache mode (``cache_dir``, default the huggingface_hub cache): the Hugging Face cache layout,
  ``CACHE/datasets--org--name/{blobs,snapshots/<commit>,refs}``; the snapshot folder is the dataset
  root. huggingface_hub writes no ref when given a commit, so slimtok writes
  ``refs/<revision>`` (atomically) after a successful run: offline huggingface_hub users and
  ``slimtok manifest --dataset-dir CACHE/datasets--org--name`` then find the snapshot, and a ref
  never names a snapshot that slimtok left half-done.
* local-dir mode (``local_dir``): plain files under ``DIR``, huggingface_hub's bookkeeping under
  ``DIR/.cache/huggingface``.

"Already complete" means: cache mode, the snapshot entry or the blob it would link to exists with
the listed size (huggingface_hub links a present blob without downloading it); local-dir mode, the
file exists with the listed size and content hash (the LFS sha256 when the Hub gives one, else the
git blob id). A file or cache blob that exists but fails that test is removed before the download,
because huggingface_hub would otherwise keep it (in local-dir mode its metadata vouches for the file;
in the cache it links the existing blob).

Resume: huggingface_hub >= 1.18 downloads each file to a temporary file private to the process and
deletes it on failure; it retries with an HTTP ``Range`` request only within the same process.
Across runs the unit of resume is therefore the whole file: files already complete are never
fetched again, a file cut off midway starts over.

The token comes from huggingface_hub (``HF_TOKEN`` or ``hf auth login``) and is never printed.
Xet transfers are left to huggingface_hub (it uses ``hf_xet`` when the repo is Xet-backed; set
``HF_HUB_DISABLE_XET=1`` to force plain HTTP).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from huggingface_hub import HfApi, RepoFile, constants, get_token, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import filter_repo_objects

from .. import __version__
from ..errors import MirrorError
from ..protocol import write_atomic
from ..space import format_bytes, lacks_room
from .record import MirrorRun, RecordedFile, write_record

if TYPE_CHECKING:
    from ..progress import ProgressDisplay

try:  # huggingface_hub 2.x talks HTTP through httpx2, 1.x through httpx
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub major version
    from httpx import TransportError  # type: ignore[no-redef]  # the same name from the older client

REPO_TYPES = ("dataset", "model")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_LOGIN_HINT = "run `hf auth login` (or set HF_TOKEN to a token with read access)"
_RESUME_HINT = "files already complete are kept, so re-running the same command resumes with the rest"
_HASH_BLOCK = 1 << 20


@dataclass
class MirrorResult:
    """What one :func:`mirror` call did. ``files``/``bytes`` cover the whole filtered selection."""

    repo_id: str
    repo_type: str
    commit: str
    snapshot_path: Path
    files: int
    bytes: int
    downloaded_files: int
    downloaded_bytes: int
    skipped_files: int
    skipped_bytes: int
    record_path: Path

    def summary(self) -> str:
        """One line for humans: totals, then downloaded and skipped."""
        return (f"{self.files} files ({format_bytes(self.bytes)}) of {self.repo_type} {self.repo_id} at "
                f"{self.commit[:12]}: downloaded {self.downloaded_files} ({format_bytes(self.downloaded_bytes)}), "
                f"skipped {self.skipped_files} already present ({format_bytes(self.skipped_bytes)})")


@dataclass(frozen=True)
class _Target:
    """Where a mirror writes. ``root`` is the tree the files land in: the snapshot folder or the local dir."""

    root: Path
    repo_folder: Path | None  # the cache's datasets--org--name folder; None in local-dir mode
    # hf_hub_download's cache_dir= or local_dir=: one of them is set
    cache_dir: Path | None
    local_dir: Path | None


@dataclass(frozen=True)
class _Plan:
    """The filtered selection split by what is on disk; ``damaged`` lists paths (entries, blobs) to delete."""

    present: list[RecordedFile]
    missing: list[RecordedFile]
    damaged: list[Path]


# -- public API -----------------------------------------------------------------------------------


def mirror(repo_id: str, *, repo_type: str = "dataset", revision: str | None = None,
           include: Sequence[str] = (), exclude: Sequence[str] = (),
           cache_dir: str | Path | None = None, local_dir: str | Path | None = None,
           max_workers: int = 8, min_free_fraction: float = 0.2,
           log: Callable[[str], None] = print,
           progress: Callable[[int, int], ProgressDisplay] | None = None) -> MirrorResult:
    """Download the files of ``repo_id`` at ``revision`` that pass the globs, skipping complete ones.

    Writes into ``cache_dir`` (Hugging Face cache layout) or ``local_dir`` (plain files), then the
    mirror record and, in cache mode, ``refs/<revision>``. Raises :class:`MirrorError` for every
    failure a user can act on (bad arguments, unknown repo or revision, gated repo, too little
    disk, network failure); nothing is recorded unless every selected file is on disk with its size.
    ``progress(files, bytes to fetch)`` makes the display that follows the download.
    """
    _check_arguments(repo_type, cache_dir, local_dir, max_workers, min_free_fraction)
    revision = revision or constants.DEFAULT_REVISION
    allow, ignore = _globs(include), _globs(exclude)
    started_at = _now()
    api = HfApi(library_name="slimtok", library_version=__version__)
    label = f"{repo_type} {repo_id}"
    with _plain_hub_errors(label, revision):
        commit = _resolve_commit(api, repo_id, repo_type, revision)
        log(f"{label}: revision {revision} is commit {commit}")
        listing = _list_files(api, repo_id, repo_type, commit)
    files = _select(listing, allow, ignore, label, commit)

    target = _target(repo_id, repo_type, commit, cache_dir, local_dir)
    if target.repo_folder is None:
        plan = _plan_local_dir(target.root, files, max_workers)
    else:
        plan = _plan_cache(target.repo_folder, commit, files)
    to_fetch = sum(f.size for f in plan.missing)
    log(f"{label}: {len(files)} files ({format_bytes(sum(f.size for f in files))}) selected, "
        f"{len(plan.present)} already present, {len(plan.missing)} to download ({format_bytes(to_fetch)})")
    _check_free_space(target.root, to_fetch, min_free_fraction, label)
    for path in plan.damaged:
        log(f"{path} differs from the Hub's copy (size or checksum); removing it so it is fetched again")
        path.unlink(missing_ok=True)  # two files with equal content share a blob

    # a present blob whose snapshot entry is gone is linked again by huggingface_hub, without a GET
    fetch = plan.missing + [f for f in plan.present if not os.path.lexists(target.root / f.path)]
    tally = _HubTally(progress(len(files), to_fetch), len(files) - len(fetch)) if progress is not None else None
    try:
        _fetch(repo_id, repo_type, commit, fetch, target, max_workers, tally, label, revision)
    finally:
        if tally is not None:
            tally.display.close()
    snapshot = target.root
    _check_sizes(snapshot, files, label)

    run = MirrorRun(revision=revision, include=allow, exclude=ignore, started_at=started_at,
                    finished_at=_now(), files=len(files), bytes=sum(f.size for f in files),
                    downloaded_files=len(plan.missing), downloaded_bytes=to_fetch)
    record_path = write_record(snapshot, repo_id, repo_type, commit, files, run)
    if target.repo_folder is not None and not _COMMIT_RE.match(revision):
        write_atomic(target.repo_folder / "refs" / revision, commit.encode())
    return MirrorResult(repo_id=repo_id, repo_type=repo_type, commit=commit, snapshot_path=snapshot,
                        files=len(files), bytes=run.bytes, downloaded_files=len(plan.missing),
                        downloaded_bytes=to_fetch, skipped_files=len(plan.present),
                        skipped_bytes=sum(f.size for f in plan.present), record_path=record_path)


def _check_arguments(repo_type: str, cache_dir: str | Path | None, local_dir: str | Path | None,
                     max_workers: int, min_free_fraction: float) -> None:
    if repo_type not in REPO_TYPES:
        raise MirrorError(f"unknown repo type {repo_type!r}", fix=f"use one of {', '.join(REPO_TYPES)}")
    if cache_dir is not None and local_dir is not None:
        raise MirrorError("both a cache dir and a local dir were given",
                          fix="pass either a cache dir or a local dir: the cache keeps huggingface_hub's layout "
                              "(blobs, snapshots, refs), a local dir holds plain files")
    if max_workers < 1:
        raise MirrorError(f"max_workers is {max_workers}", fix="max_workers must be at least 1")
    if not 0 <= min_free_fraction < 1:
        raise MirrorError(f"min_free_fraction is {min_free_fraction}",
                          fix="min_free_fraction must be in [0, 1): the share of the disk that must stay free "
                              "after the download (0.2 keeps 20%)")


def _globs(patterns: str | Sequence[str]) -> list[str]:
    """A glob list; a lone string is one glob, not a sequence of one-letter globs."""
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _resolve_commit(api: HfApi, repo_id: str, repo_type: str, revision: str) -> str:
    """The commit ``revision`` names; a gated repo without any token fails here, before listing."""
    info = api.repo_info(repo_id, repo_type=repo_type, revision=revision)
    if info.gated and get_token() is None:
        raise MirrorError("is gated and no Hugging Face token is set", f"{repo_type} {repo_id}",
                          f"accept its terms on the Hub, then {_LOGIN_HINT}, and re-run")
    if info.sha is None:
        raise MirrorError(f"the Hub did not say which commit {revision!r} is", f"{repo_type} {repo_id}",
                          "re-run later, or pass --revision with a 40-character commit hash")
    return info.sha


def _list_files(api: HfApi, repo_id: str, repo_type: str, commit: str) -> list[RecordedFile]:
    """Every file of the repo at ``commit`` (folders left out), through the paginated tree API."""
    return [RecordedFile(path=f.path, size=f.size, blob_id=f.blob_id, sha256=f.lfs.sha256 if f.lfs else None)
            for f in api.list_repo_tree(repo_id, repo_type=repo_type, revision=commit, recursive=True)
            if isinstance(f, RepoFile)]


def _select(files: list[RecordedFile], include: list[str], exclude: list[str], label: str,
            commit: str) -> list[RecordedFile]:
    """The files these globs select, sorted by path; none is an error."""
    selected = sorted(filter_repo_objects(files, allow_patterns=include or None, ignore_patterns=exclude or None,
                                          key=lambda f: f.path),
                      key=lambda f: f.path)
    if not selected:
        # The deepest path shows best that globs see folders: SlimPajama's "train/chunk1/example_train_0.jsonl.zst".
        example = max((f.path for f in files), key=lambda p: p.count("/"), default="(the repo is empty)")
        raise MirrorError(f"no file at {commit[:12]} passes --include {include} / --exclude {exclude}", label,
                          f"globs match whole repo paths such as {example!r} ('*' also matches '/', a trailing '/' "
                          "means the whole folder)")
    return selected


# -- progress ------------------------------------------------------------------------------------


def _fetch(repo_id: str, repo_type: str, commit: str, files: list[RecordedFile], target: _Target,
           max_workers: int, tally: _HubTally | None, label: str, revision: str) -> None:
    """Download ``files``, ``max_workers`` at a time; raise one :class:`MirrorError` naming
    every file that failed once all the others are done, or at once for a failure every file would meet."""
    def one(f: RecordedFile) -> None:
        hf_hub_download(repo_id, f.path, repo_type=repo_type, revision=commit, library_name="slimtok",
                        library_version=__version__, cache_dir=target.cache_dir, local_dir=target.local_dir,
                        # a bar factory, not a tqdm subclass: huggingface_hub only calls it, with keywords
                        tqdm_class=tally.bar_class(f.path) if tally else None)  # type: ignore[arg-type]

    failed: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers) as pool:
        running: dict[Future[None], RecordedFile] = {pool.submit(one, f): f for f in files}
        try:
            for future in as_completed(running):
                exc = future.exception()
                if exc is None:
                    if tally is not None:
                        tally.file_done()
                elif _only_this_file(exc):
                    failed.append((running[future].path, _first_line(exc)))
                else:
                    with _plain_hub_errors(label, revision):
                        future.result()
        except BaseException:  # a failure every file would meet, or Ctrl-C: start no other file
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    if failed:
        failed.sort()
        named = "; ".join(f"{path}: {why}" for path, why in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise MirrorError(f"{len(failed)} of {len(files)} file(s) could not be downloaded, the other "
                          f"{len(files) - len(failed)} were ({named}{more})", label, _RESUME_HINT)


def _only_this_file(exc: BaseException) -> bool:
    """Whether a download failure concerns one file only (an HTTP error other than refused access, a
    transport failure, a short body), so the other files are still worth fetching."""
    if isinstance(exc, (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError, OfflineModeIsEnabled)):
        return False
    if isinstance(exc, HfHubHTTPError):
        return _status(exc) not in (401, 403)
    if isinstance(exc, (TransportError, LocalEntryNotFoundError)):
        return True
    return isinstance(exc, OSError) and exc.errno is None


class _HubTally:
    """What the downloads report through the bars huggingface_hub makes with their ``tqdm_class``,
    fed to ``display``: files finished and bytes fetched (byte bars, updated per chunk from every
    download thread).

    One file may feed more than one byte bar (over Xet, bytes received and bytes written; the
    received can only be fewer, as they are compressed), so a file's bytes are the largest of its
    bars, the figure ``to_fetch`` counts."""

    def __init__(self, display: ProgressDisplay, files: int):
        self.display = display
        self.files = files
        self.nbytes = 0
        self._per_file: dict[str, float] = {}
        self._lock = threading.Lock()
        self._show()

    def bar_class(self, path: str) -> Callable[..., _Bar]:
        """What to pass as ``tqdm_class`` for ``path`` (huggingface_hub calls it with keyword arguments only)."""
        return functools.partial(_Bar, self, path)

    def moved(self, bar: _Bar, n: float) -> None:
        with self._lock:
            bar.n += n
            if bar.counts_bytes and bar.n > self._per_file.get(bar.path, 0):
                self.nbytes += int(bar.n - self._per_file.get(bar.path, 0))
                self._per_file[bar.path] = bar.n
                self._show()

    def file_done(self) -> None:
        with self._lock:
            self.files += 1
            self._show()

    def _show(self) -> None:
        self.display.update(self.files, None, None, self.nbytes)


class _Bar:
    """Stands in for one of huggingface_hub's bars for file ``path``: draws nothing, tells the tally;
    has the attributes huggingface_hub sets and reads on its bars (``n``, ``total``, ``format_dict``)."""

    def __init__(self, tally: _HubTally, path: str, total: float | None = None, initial: float = 0,
                 unit: str = "it", **_drawing: Any):
        self.tally, self.path, self.total, self.n, self.counts_bytes = tally, path, total, 0.0, unit == "B"
        self.format_dict: dict[str, Any] = {}
        if initial:
            self.update(initial)

    def update(self, n: float | None = 1) -> None:
        self.tally.moved(self, n or 0)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def close(self) -> None:
        pass

    def refresh(self) -> None:
        pass

    def set_description(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    set_description_str = set_postfix_str = set_description


# -- what is on disk ------------------------------------------------------------------------------


def _target(repo_id: str, repo_type: str, commit: str, cache_dir: str | Path | None,
            local_dir: str | Path | None) -> _Target:
    if local_dir is not None:
        root = Path(local_dir).expanduser().resolve()
        return _Target(root, None, cache_dir=None, local_dir=root)
    cache = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser().resolve()
    repo_folder = cache / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    return _Target(repo_folder / "snapshots" / commit, repo_folder, cache_dir=cache, local_dir=None)


def _plan_cache(repo_folder: Path, commit: str, files: list[RecordedFile]) -> _Plan:
    """Split ``files`` by the cache: complete when the snapshot entry, or else its blob, has the listed size."""
    present, missing, damaged = [], [], []
    for f in files:
        entry = repo_folder / "snapshots" / commit / f.path
        blob = repo_folder / "blobs" / f.etag
        if _size_is(entry, f.size) or (not os.path.lexists(entry) and _size_is(blob, f.size)):
            present.append(f)
            continue
        missing.append(f)
        damaged += [p for p in (entry, blob) if os.path.lexists(p) and not _size_is(p, f.size)]
    return _Plan(present, missing, damaged)


def _plan_local_dir(root: Path, files: list[RecordedFile], max_workers: int) -> _Plan:
    """Split ``files`` by a local dir: complete when size and content hash match the listing."""
    # Hashing reads every present file once; hashlib releases the GIL, so threads overlap the reads.
    with ThreadPoolExecutor(max_workers) as pool:
        complete = list(pool.map(lambda f: _local_file_matches(root / f.path, f), files))
    present: list[RecordedFile] = []
    missing: list[RecordedFile] = []
    for f, ok in zip(files, complete, strict=True):
        (present if ok else missing).append(f)
    return _Plan(present, missing, [root / f.path for f in missing if os.path.lexists(root / f.path)])


def _local_file_matches(path: Path, f: RecordedFile) -> bool:
    if not _size_is(path, f.size):
        return False
    # LFS files are named by sha256; other files by git's blob id, sha1 over "blob <size>\0" + content.
    digest = hashlib.sha256() if f.sha256 is not None else hashlib.sha1(b"blob %d\0" % f.size)
    with open(path, "rb") as stream:
        while block := stream.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest() == (f.sha256 or f.blob_id)


def _size_is(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:  # missing, or a link whose blob is gone
        return False


def _check_free_space(root: Path, to_fetch: int, min_free_fraction: float, label: str) -> None:
    """Refuse when fetching ``to_fetch`` bytes would leave less than ``min_free_fraction`` of the disk free."""
    space = lacks_room(root, to_fetch, min_free_fraction) if to_fetch else None
    if space is None:
        return
    left = space.free - to_fetch
    raise MirrorError(
        f"not enough disk space to mirror {label}: {format_bytes(to_fetch)} to download, {format_bytes(space.free)} "
        f"free of {format_bytes(space.total)} on this disk, which would leave {max(left, 0) / space.total:.1%} free "
        f"where at least {min_free_fraction:.0%} must stay free", space.path,
        "free some space, narrow --include, mirror to another disk, or lower --min-free-fraction")


def _check_sizes(snapshot: Path, files: list[RecordedFile], label: str) -> None:
    """Every selected file must be on disk with its listed size before anything is recorded."""
    wrong = [f.path for f in files if not _size_is(snapshot / f.path, f.size)]
    if wrong:
        raise MirrorError(f"after downloading {label}, {len(wrong)} file(s) are missing or have the wrong size: "
                          f"{', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}", snapshot,
                          f"re-run the same command to fetch them again ({_RESUME_HINT})")


# -- errors and formatting ------------------------------------------------------------------------


@contextmanager
def _plain_hub_errors(label: str, revision: str) -> Iterator[None]:
    """Turn huggingface_hub and transport exceptions into a :class:`MirrorError` that says what to do."""
    try:
        yield
    except GatedRepoError as exc:
        raise MirrorError(f"is gated and the Hub refused access (HTTP {_status(exc)})", label,
                          f"accept its terms on the Hub page with your account, then {_LOGIN_HINT}, and "
                          "re-run") from exc
    except RepositoryNotFoundError as exc:
        raise MirrorError(f"was not found on {_endpoint()}", label,
                          f"check the name and --repo-type; if it is private, {_LOGIN_HINT}") from exc
    except RevisionNotFoundError as exc:
        raise MirrorError(f"revision {revision!r} does not exist", label,
                          "pass a branch, a tag or a commit hash that exists on the Hub") from exc
    except OfflineModeIsEnabled as exc:
        raise MirrorError("cannot be mirrored while HF_HUB_OFFLINE is set", label, "unset it and re-run") from exc
    except HfHubHTTPError as exc:
        status = _status(exc)
        if status in (401, 403):
            raise MirrorError(f"the Hub refused access (HTTP {status})", label,
                              f"check that your token may read it; to use another one, {_LOGIN_HINT}") from exc
        raise MirrorError(f"the Hub answered HTTP {status} ({_first_line(exc)})", label, _RESUME_HINT) from exc
    except (TransportError, LocalEntryNotFoundError) as exc:
        raise MirrorError(f"network failure while mirroring from {_endpoint()} ({_first_line(exc)})", label,
                          _RESUME_HINT) from exc
    except OSError as exc:
        if exc.errno is None:  # huggingface_hub's own checks, e.g. "Consistency check failed" on a short body
            raise MirrorError(f"a download was cut short ({_first_line(exc)})", label, _RESUME_HINT) from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise MirrorError(f"the disk filled up while mirroring {label} ({exc.strerror})", exc.filename or label,
                              f"free some space and re-run the same command ({_RESUME_HINT})") from exc
        raise MirrorError(f"cannot write the mirror of {label} ({exc.strerror})", exc.filename or label,
                          "fix the path or its permissions and re-run") from exc


def _endpoint() -> str:
    """The Hub URL in use, without any user:password part."""
    url = urlsplit(constants.ENDPOINT)
    return url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()


def _status(exc: HfHubHTTPError) -> int | None:
    return exc.response.status_code if exc.response is not None else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
