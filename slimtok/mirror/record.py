"""The mirror record: what `slimtok mirror` put into a tree, and which snapshot a cache folder means.

The mirror record, ``slimtok-mirror.json``, sits at the root of the mirrored tree: the snapshot
folder in cache mode, ``DIR`` in local-dir mode. It names the repo, its type and the commit; lists
every file slimtok mirrored into that tree (path, size, git blob id, sha256 when the Hub gives an
LFS one); and keeps one entry per successful run (requested revision, globs, times, counts). Runs at
the same commit add their files to the list; a run at another commit (possible in local-dir mode)
starts a new record. It is written after the download succeeded, through a temporary file and
``os.replace``. Two mirrors of the same commit finishing at the same instant can lose one run's entry
(last writer wins); the files are unaffected and re-running either restores it.
:func:`compare_with_mirror_record` is how ``slimtok manifest`` uses it.

Nothing here talks to the Hub; :mod:`slimtok.mirror.download` writes records, ``slimtok manifest``
reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

from ..errors import ManifestError, MirrorError
from ..formats import SUFFIXES
from ..protocol import Record, write_atomic

MIRROR_RECORD_NAME = "slimtok-mirror.json"
RECORD_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RecordedFile(Record):
    """One repo file as listed at the mirrored commit."""

    path: str
    size: int
    blob_id: str
    sha256: str | None = None

    @property
    def etag(self) -> str:
        """The name huggingface_hub gives the file's blob in the cache."""
        return self.sha256 or self.blob_id


@dataclass(frozen=True)
class MirrorRun(Record):
    """One successful :func:`mirror` call into a tree."""

    revision: str
    include: list[str]
    exclude: list[str]
    started_at: str
    finished_at: str
    files: int
    bytes: int
    downloaded_files: int
    downloaded_bytes: int


@dataclass
class MirrorRecord(Record):
    """Contents of ``slimtok-mirror.json``; ``files`` is sorted by path and unique."""

    repo_id: str
    repo_type: str
    commit: str
    files: list[RecordedFile] = field(default_factory=list)
    runs: list[MirrorRun] = field(default_factory=list)
    format_version: int = RECORD_FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MirrorRecord:
        return cls(repo_id=str(data["repo_id"]), repo_type=str(data["repo_type"]), commit=str(data["commit"]),
                   files=[RecordedFile.from_dict(f) for f in data["files"]],
                   runs=[MirrorRun.from_dict(r) for r in data["runs"]],
                   format_version=int(data["format_version"]))

    def to_dict(self) -> dict[str, Any]:
        # Identity and runs first: the file list is long and a reader looks at the top.
        return {"format_version": self.format_version, "repo_id": self.repo_id, "repo_type": self.repo_type,
                "commit": self.commit, "runs": [r.to_dict() for r in self.runs],
                "files": [f.to_dict() for f in self.files]}

    def merged(self, files: Sequence[RecordedFile], run: MirrorRun) -> MirrorRecord:
        """This record plus one run's files (a run's listing wins for a path both have)."""
        by_path = {f.path: f for f in self.files} | {f.path: f for f in files}
        return MirrorRecord(self.repo_id, self.repo_type, self.commit,
                            [by_path[p] for p in sorted(by_path)], [*self.runs, run])


def find_mirror_record(dataset_root: Path) -> Path | None:
    """The record of the mirrored tree that ``dataset_root`` is (or lies in), if any.

    ``dataset_root`` may be a cache repo folder ``datasets--org--name`` (standing for its snapshot
    as in ``slimtok manifest``, see :func:`cache_snapshot`), a snapshot folder, a local dir, or a folder inside one of
    these (e.g. ``<snapshot>/train``): the nearest ``slimtok-mirror.json`` at or above it is returned.
    """
    start = _tree_root(Path(dataset_root))
    for folder in (start, *start.parents):
        candidate = folder / MIRROR_RECORD_NAME
        if candidate.is_file():
            return candidate
    return None


def load_mirror_record(path: Path) -> MirrorRecord:
    """Read a record; a damaged or unknown-format file raises :class:`MirrorError`."""
    try:
        data = orjson.loads(Path(path).read_bytes())
        record = MirrorRecord.from_dict(data)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise MirrorError(f"{path} is not a readable slimtok mirror record ({exc}); delete it and re-run "
                          "`slimtok mirror` to write a new one.") from exc
    if record.format_version != RECORD_FORMAT_VERSION:
        raise MirrorError(f"{path} has record format {record.format_version}, this slimtok reads format "
                          f"{RECORD_FORMAT_VERSION}; upgrade slimtok or re-run `slimtok mirror`.")
    return record


def compare_with_mirror_record(dataset_root: Path, shard_relpaths: Sequence[str]) -> list[str]:
    """Shards the mirror record lists below ``dataset_root`` that ``shard_relpaths`` lacks.

    Paths in and out are POSIX and relative to ``dataset_root`` (for a cache repo folder, relative
    to the snapshot it stands for). Only record files in a shard format (:data:`slimtok.formats.SUFFIXES`)
    count. Returns [] when there is no record; raises :class:`MirrorError` for an unreadable one.
    """
    record_path = find_mirror_record(Path(dataset_root))
    if record_path is None:
        return []
    record = load_mirror_record(record_path)
    prefix = _tree_root(Path(dataset_root)).relative_to(record_path.parent.resolve()).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    expected = {f.path[len(prefix):] for f in record.files
                if f.path.startswith(prefix) and f.path.endswith(SUFFIXES)}
    have = {PurePosixPath(p).as_posix() for p in shard_relpaths}
    return sorted(expected - have)


def _tree_root(dataset_root: Path) -> Path:
    """``dataset_root`` resolved, with a cache repo folder replaced by its snapshot (:func:`cache_snapshot`)."""
    root = dataset_root.expanduser().resolve()
    return cache_snapshot(root) or root


def cache_snapshot(repo_folder: Path, revision: str | None = None) -> Path | None:
    """The snapshot folder a Hugging Face cache repo folder stands for; None when it is not one.

    ``revision`` (a ref under ``refs/``, or a commit) picks the snapshot; without it ``refs/main``
    does; without that, the only snapshot, or the only one holding a mirror record. Several and
    nothing to choose by, or a ref naming a missing snapshot, raise :class:`ManifestError`.
    """
    snapshots = repo_folder / "snapshots"
    if not (snapshots.is_dir() and ((repo_folder / "refs").is_dir() or (repo_folder / "blobs").is_dir())):
        return None
    ref = repo_folder / "refs" / (revision or "main")
    if ref.is_file():
        commit = ref.read_text().strip()
        if not (snapshots / commit).is_dir():
            raise ManifestError(f"names snapshot {commit}, but {snapshots / commit} does not exist", ref,
                                "re-run `slimtok mirror` or point --dataset-dir at a snapshot folder")
        return snapshots / commit
    present = sorted(p.name for p in snapshots.iterdir() if p.is_dir())
    if revision is not None:
        if revision in present:
            return snapshots / revision
        raise ManifestError(f"revision {revision!r} is neither a ref under refs/ nor a snapshot "
                            f"(snapshots: {', '.join(present) or 'none'})", repo_folder,
                            "pass --revision with one of those commits")
    recorded = [name for name in present if (snapshots / name / MIRROR_RECORD_NAME).is_file()]
    for candidates in (present, recorded):
        if len(candidates) == 1:
            return snapshots / candidates[0]
    raise ManifestError(f"holds {len(present)} snapshots ({', '.join(present) or 'none'}) and no refs/main to "
                        "choose one by", repo_folder,
                        "pass --revision <commit> to list one snapshot, or point --dataset-dir at a snapshot folder")


def write_record(snapshot: Path, repo_id: str, repo_type: str, commit: str, files: list[RecordedFile],
                  run: MirrorRun) -> Path:
    """Merge this run into the tree's record (a record of another commit is replaced) and write it."""
    path = snapshot / MIRROR_RECORD_NAME
    previous = load_mirror_record(path) if path.is_file() else None
    if previous is None or (previous.repo_id, previous.repo_type, previous.commit) != (repo_id, repo_type, commit):
        previous = MirrorRecord(repo_id, repo_type, commit)
    record = previous.merged(files, run)
    write_atomic(path, orjson.dumps(record.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    return path


