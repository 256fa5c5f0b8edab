"""Step 1: list a dataset's shards.

Reads a dataset folder (plain, a Hugging Face cache repo folder ``datasets--org--name``, or one of
its snapshots) and writes ``manifest.jsonl`` (one :class:`ShardEntry` per line, ordered by split,
chunk, index) and ``manifest_summary.json`` (shard count and bytes per split and overall).

The manifest's identity for job pinning (:func:`manifest_digest`) covers ids, splits and sizes but
not absolute paths, so nodes that mount the same dataset at different paths agree on it.

One shard file, one id: an id is a normalized relative path (no empty, ``.`` or ``..`` component, no
NUL), and no two entries name the same file (same device and inode, or the same normalized path for
a file that does not exist yet); :func:`build_manifest` and :func:`read_manifest` both refuse
otherwise, naming both entries. Only regular files in a format of :mod:`slimtok.formats` are shards.

A dataset may also be a prefix in an object store (``s3://bucket/prefix/``,
``hf://datasets/org/name[@revision]/``, see :mod:`slimtok.remote`): listed once, here, and never
by a worker. Each entry's ``path`` is then the object's URL (on the Hub pinned to the commit the
revision resolved to) and ``version`` what identifies its bytes (S3: the ETag; the Hub: the
commit), which a worker checks before reading. A local entry has no version, and its manifest
line and the digest are what they were before versions existed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import overload

import orjson

from .errors import ManifestError
from .formats import SUFFIXES, format_of, strip_suffix
from .formats.streams import not_regular
from .protocol import SPLITS, Record, storage_for, write_atomic, write_json_lines
from .remote import ObjectInfo, is_remote, list_objects, parse

DEFAULT_PATTERNS = ("*.jsonl.zst",)
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test"}
_CHUNK_RE = re.compile(r"^chunk[_-]?(\d+)$")
_LAST_INT_RE = re.compile(r"(\d+)(?!.*\d)")
_OF_RE = re.compile(r"(\d+)-of-\d+")


@dataclass(frozen=True)
class ShardEntry(Record):
    """One input shard. ``id`` is its path relative to the dataset root without extension."""

    id: str
    split: str
    chunk: int
    index: int
    path: str
    size: int
    #: what identifies an object's bytes (S3 ETag, Hub commit); "" for a local file
    version: str = ""

    def to_dict(self) -> dict:
        """The manifest line's fields; ``version`` only for an object (local lines stay as they were)."""
        data = super().to_dict()
        if not self.version:
            del data["version"]
        return data

    def sort_key(self) -> tuple[int, int, int, str]:
        return (SPLITS.index(self.split), self.chunk, self.index, self.id)


def resolve_dataset_root(dataset_dir: str | os.PathLike[str], revision: str | None = None) -> Path:
    """The folder whose files are the dataset: a cache repo folder resolves to one snapshot.

    See :func:`slimtok.mirror.cache_snapshot` for how the snapshot is chosen (``revision``,
    ``refs/main``, the only snapshot, the one `slimtok mirror` recorded).
    """
    from .mirror import cache_snapshot

    root = Path(dataset_dir).expanduser().absolute()
    if not root.is_dir():
        raise ManifestError(f"dataset dir {root} does not exist or is not a directory")
    snapshot = cache_snapshot(root, revision)
    if snapshot is None and revision is not None:
        raise ManifestError("--revision applies to a Hugging Face cache repo folder (datasets--org--name), "
                            "and this is not one", root, "drop --revision or point --dataset-dir at the repo folder")
    return snapshot or root


def split_of(parts: Sequence[str]) -> str:
    """The split a file belongs to, from its relative path's components.

    The first folder that names a split wins (SlimPajama's ``validation/chunk1/...``, or
    ``<config>/test/...``); else a Hub parquet file name such as ``validation-00000-of-00001``;
    else ``train``.
    """
    for folder in parts[:-1]:
        if folder.lower() in SPLIT_ALIASES:
            return SPLIT_ALIASES[folder.lower()]
    prefix = strip_suffix(parts[-1]).split("-", 1)[0].lower()
    return SPLIT_ALIASES.get(prefix, "train")


def index_of(stem: str) -> int:
    """A shard's number: ``N`` of a Hub ``...-N-of-M`` name, else the last number in the name."""
    m = _OF_RE.search(stem) or _LAST_INT_RE.search(stem)
    return int(m.group(1)) if m else 0


def entry_for(root: Path, path: Path) -> ShardEntry:
    """Describe ``path`` (a file below ``root``)."""
    return _entry(path.relative_to(root).parts, str(path), path.stat().st_size)


def _entry(parts: Sequence[str], path: str, size: int, version: str = "") -> ShardEntry:
    """The entry of the shard at ``path`` whose path relative to the dataset is ``parts``."""
    split = split_of(parts)
    chunk = 0
    for part in parts[:-1]:
        m = _CHUNK_RE.match(part.lower())
        if m:
            chunk = int(m.group(1))
    stem = strip_suffix(parts[-1])
    index = index_of(stem)
    shard_id = "/".join((*parts[:-1], stem))
    return ShardEntry(id=shard_id, split=split, chunk=chunk, index=index, path=path, size=size, version=version)


def _walk(root: Path) -> Iterable[Path]:
    """Every file below ``root`` outside hidden folders, hidden files left out, in a stable order.

    A Hugging Face cache repo folder on the way (``datasets--org--name``, as under a hub cache
    folder), or the ``snapshots/`` folder of one, contributes the files of its one snapshot (the
    choice of :func:`slimtok.mirror.cache_snapshot`) and nothing else: never every snapshot (each
    a full copy of the repo at one commit) nor its blobs.
    """
    from .mirror import cache_snapshot

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        repo = here.parent if here.name == "snapshots" else here
        snapshot = cache_snapshot(repo) if here != root or here.name == "snapshots" else None
        if snapshot is not None:
            dirnames[:] = []
            yield from _walk(snapshot)
            continue
        # Hidden folders hold caches (local_dir's .cache/huggingface), never shards.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _kind(name: str) -> str:
    """How a file shows in "nothing found": its format suffix, else its last extension."""
    fmt = format_of(name)
    if fmt is not None:
        return fmt.suffix
    return "." + name.rsplit(".", 1)[1] if "." in name else "(no suffix)"


def _nothing_found(root: Path | str, patterns: Sequence[str], files: Sequence[PurePath]) -> ManifestError:
    """The error for a walk that matched nothing: what it did see, and the --pattern to use."""
    wanted = ", ".join(patterns)
    if not files:
        return ManifestError(f"no shards matching {wanted} found: the folder holds no files", root,
                             "point --dataset-dir at the folder holding the shards")
    kinds = Counter(_kind(p.name) for p in files)
    seen = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common(8))
    readable = [kind for kind, _ in kinds.most_common() if kind in SUFFIXES]
    if readable:
        fix = "pass " + " ".join(f"--pattern '*{kind}'" for kind in readable)
    else:
        fix = f"none is a shard format slimtok reads ({', '.join(SUFFIXES)}); convert the files to one"
    return ManifestError(f"no shards matching {wanted} found among its {len(files)} files ({seen})", root, fix)


def _check_formats(entries_paths: Sequence[PurePath], root: Path | str) -> None:
    """Every matched file (a path below ``root``, or relative to it) must be in a format slimtok
    reads (never an id with a stray suffix)."""
    unknown = [p for p in entries_paths if format_of(p.name) is None]
    if unknown:
        shown = ", ".join(str(p.relative_to(root) if p.is_absolute() else p) for p in unknown[:5])
        shown += " ..." if len(unknown) > 5 else ""
        raise ManifestError(f"{len(unknown)} file(s) matched --pattern but are not a shard format slimtok reads "
                            f"({shown}; supported suffixes: {', '.join(SUFFIXES)})", root,
                            "narrow --pattern to shard files")


def _check_regular(paths: Sequence[Path], root: Path) -> None:
    """Every matched file must be (a link to) a regular file: a pipe would block every reader and a
    device may never end. Checked by stat alone, so nothing is opened."""
    for p in paths:
        try:
            problem = not_regular(p.stat().st_mode)
        except OSError as exc:
            problem = f"cannot be read: {exc.strerror or exc}"
        if problem:
            raise ManifestError(f"{p.relative_to(root)} matched --pattern but {problem}", root,
                                "replace it with the shard file it stands for, or narrow --pattern to leave it out")


def _file_key(path: str) -> tuple:
    """What makes two paths the same file: device and inode, or the normalized path when absent
    (an object: its URL)."""
    if is_remote(path):
        return ("url", path)
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.normpath(os.path.abspath(path)))
    return ("inode", st.st_dev, st.st_ino)


def _id_problem(shard_id: str) -> str | None:
    """Why ``shard_id`` is not a normalized relative path inside the dataset, or None."""
    if "\0" in shard_id:
        return "holds a NUL byte"
    if shard_id.startswith("/"):
        return "is absolute"
    parts = shard_id.split("/")
    if "" in parts:
        return "has an empty component (doubled, leading or trailing '/')"
    if "." in parts or ".." in parts:
        return "has a '.' or '..' component"
    return None


def _normal_id(shard_id: str) -> str:
    # without "//", a leading or trailing "/" and any ".", no component is "" or ".": already normal
    if "." not in shard_id and "//" not in shard_id and shard_id[:1] != "/" and shard_id[-1:] != "/":
        return shard_id
    return "/".join(p for p in shard_id.split("/") if p not in ("", "."))


def check_unique(entries: Sequence[ShardEntry], where: Sequence[str], check_files: bool = True) -> None:
    """Refuse two entries with one id (up to '.', empty components and slashes) or, with
    ``check_files``, one file. ``where[k]`` names entry k in messages (a manifest line, or the file's path).
    """
    by_id: dict[str, int] = {}
    by_file: dict[tuple, int] = {}
    for k, e in enumerate(entries):
        # (table, key, what) for each key checked; the tables differ in key type
        keys: list[tuple[dict, object, str]] = [(by_id, _normal_id(e.id), "the same id")]
        if check_files:
            keys.append((by_file, _file_key(e.path), "the same file"))
        for seen, key, what in keys:
            first = seen.setdefault(key, k)
            if first != k:
                a, b = entries[first], e
                raise ManifestError(f"{where[first]} (id {a.id!r}, {a.path}) and {where[k]} (id {b.id!r}, {b.path}) "
                                    f"name {what}", fix="keep one entry per shard file: rebuild the manifest with "
                                    "`slimtok manifest` or narrow --pattern")


def _remote_root(url: str, revision: str | None) -> str:
    """The dataset URL as a folder (a trailing ``/``), with ``revision`` for a Hub repo."""
    u = parse(url)
    if revision is not None:
        if u.scheme != "hf" or u.revision not in (None, revision):
            raise ManifestError("--revision applies to a local Hugging Face cache folder or an hf:// URL without "
                                "@revision", url, "drop --revision")
        u = u.with_key(u.key, revision)
    return str(u.with_key(u.key.rstrip("/") + "/" if u.key.strip("/") else ""))


def _build_remote(url: str, patterns: Sequence[str], revision: str | None) -> tuple[str, list[ShardEntry]]:
    """Entries of the objects below ``url``, listed once; hidden files and folders left out as locally."""
    root = _remote_root(url, revision)
    objects: list[tuple[PurePosixPath, ObjectInfo]] = []
    prefix_len = len(parse(root).key)
    for obj in list_objects(root):
        rel = PurePosixPath(parse(obj.url).key[prefix_len:])
        if not any(part.startswith(".") for part in rel.parts):
            objects.append((rel, obj))
    if objects and parse(root).scheme == "hf":  # the Hub's listing names the commit: the root is pinned to it
        u = parse(objects[0][1].url)
        root = str(u.with_key(u.key[: prefix_len]))
    matched = [(rel, obj) for rel, obj in objects if any(fnmatch.fnmatchcase(rel.name, pat) for pat in patterns)]
    if not matched:
        raise _nothing_found(root, patterns, [rel for rel, _ in objects])
    _check_formats([rel for rel, _ in matched], root)
    entries = sorted((_entry(rel.parts, obj.url, obj.size, obj.version) for rel, obj in matched),
                     key=ShardEntry.sort_key)
    check_unique(entries, [e.path for e in entries])
    return root, entries


def build_manifest(dataset_dir: str | os.PathLike[str], patterns: Sequence[str] = DEFAULT_PATTERNS,
                   revision: str | None = None) -> tuple[Path | str, list[ShardEntry]]:
    """Walk the dataset and return (resolved root, entries in manifest order).

    ``revision`` picks the snapshot of a Hugging Face cache repo folder (see :func:`resolve_dataset_root`),
    or the revision of an ``hf://`` dataset. An object URL's root is returned as a URL string.
    """
    if is_remote(dataset_dir):
        return _build_remote(str(dataset_dir), patterns, revision)
    root = resolve_dataset_root(dataset_dir, revision)
    files = list(_walk(root))
    matched = [p for p in files if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)]
    if not matched:
        raise _nothing_found(root, patterns, files)
    _check_formats(matched, root)
    _check_regular(matched, root)
    entries = sorted((entry_for(root, p) for p in matched), key=ShardEntry.sort_key)
    check_unique(entries, [e.path for e in entries])
    return root, entries


def missing_from_mirror(root: Path | str, entries: Sequence[ShardEntry], patterns: Sequence[str]) -> list[str]:
    """Shards (relative paths) that `slimtok mirror` recorded under ``root`` but the walk did not find
    (none for an object store: `slimtok mirror` records only local folders)."""
    from .mirror import compare_with_mirror_record

    if isinstance(root, str):
        return []
    relpaths = [Path(e.path).relative_to(root).as_posix() for e in entries]
    return [p for p in compare_with_mirror_record(root, relpaths)
            if any(fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pat) for pat in patterns)]


def summarize(entries: Sequence[ShardEntry]) -> dict:
    """Shard count and bytes per split and overall."""
    splits: dict[str, dict[str, int]] = {}
    for e in entries:
        s = splits.setdefault(e.split, {"shards": 0, "bytes": 0})
        s["shards"] += 1
        s["bytes"] += e.size
    return {"shards": len(entries), "bytes": sum(e.size for e in entries), "splits": splits}


def write_manifest(entries: Sequence[ShardEntry], output_dir: str | os.PathLike[str],
                   dataset_root: Path | str | None = None) -> tuple[Path, Path]:
    """Write ``manifest.jsonl`` and ``manifest_summary.json`` into ``output_dir``."""
    out = Path(output_dir)
    manifest = out / "manifest.jsonl"
    write_json_lines(manifest, entries)
    summary = summarize(entries)
    if dataset_root is not None:
        summary["dataset_root"] = str(dataset_root)
    summary["sha256"] = manifest_digest(entries)
    summary_path = out / "manifest_summary.json"
    write_atomic(summary_path, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest, summary_path


class _Lines(Sequence[str]):
    """``path:lineno`` of each entry, made only for the message that names one."""

    def __init__(self, path: Path, linenos: list[int]):
        self.path, self.linenos = path, linenos

    def __len__(self) -> int:
        return len(self.linenos)

    @overload
    def __getitem__(self, k: int) -> str: ...
    @overload
    def __getitem__(self, k: slice) -> Sequence[str]: ...
    def __getitem__(self, k: int | slice) -> str | Sequence[str]:
        if isinstance(k, slice):
            return [f"{self.path}:{n}" for n in self.linenos[k]]
        return f"{self.path}:{self.linenos[k]}"


def read_manifest(path: str | os.PathLike[str], check_files: bool = True) -> list[ShardEntry]:
    """Entries of a manifest file, checked for the fields and ids slimtok relies on, and (with
    ``check_files``, one stat per shard) that no two entries name the same file. Readers of a copy
    already checked at this launch or pinned in an output root pass ``check_files=False``."""
    path = Path(path)
    try:
        raw = storage_for(path).read_whole(path)
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    numbered = [(lineno, line) for lineno, line in enumerate(raw.splitlines(), 1) if line.strip()]
    try:  # one parse of the whole file (a 122k-line manifest: ~20x faster than line by line) ...
        rows = orjson.loads(b"[" + b",".join(line for _, line in numbered) + b"]")
    except orjson.JSONDecodeError:  # ... and line by line only to name the line that is not JSON
        rows = None
    if rows is not None and len(rows) != len(numbered):  # a line held two values, or two lines one
        rows = None
    entries: list[ShardEntry] = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            data = orjson.loads(line) if rows is None else rows[k]
            entry = ShardEntry(id=str(data["id"]), split=str(data["split"]), chunk=int(data["chunk"]),
                               index=int(data["index"]), path=str(data["path"]), size=int(data["size"]),
                               version=str(data.get("version", "")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path}:{lineno}: not a manifest entry ({exc})") from exc
        if entry.split not in SPLITS:
            raise ManifestError(f"{path}:{lineno}: split {entry.split!r} is not one of {', '.join(SPLITS)}")
        entries.append(entry)
    where = _Lines(path, [lineno for lineno, _ in numbered])
    if not entries:
        raise ManifestError(f"manifest {path} lists no shards")
    check_unique(entries, where, check_files)
    for k, entry in enumerate(entries):
        problem = _id_problem(entry.id)
        if problem:
            raise ManifestError(f"{where[k]}: id {entry.id!r} {problem}; it must be a normalized relative path inside "
                                "the dataset", fix="rebuild the manifest with `slimtok manifest`")
    return entries


def manifest_digest(entries: Sequence[ShardEntry]) -> str:
    """sha256 over (id, split, chunk, index, size[, version]) in order; absolute paths are left out,
    an object's version is in (a local entry has none, so local digests are what they always were)."""
    h = hashlib.sha256()
    for e in entries:
        h.update(orjson.dumps([e.id, e.split, e.chunk, e.index, e.size] + ([e.version] if e.version else [])))
        h.update(b"\n")
    return h.hexdigest()
