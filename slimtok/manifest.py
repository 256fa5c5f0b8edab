"""Step 1: list a dataset's shards.

Reads a dataset folder (plain, a Hugging Face cache repo folder ``datasets--org--name``, or one of
its snapshots) and writes ``manifest.jsonl`` (one :class:`ShardEntry` per line, ordered by split,
chunk, index) and ``manifest_summary.json`` (shard count and bytes per split and overall).

The manifest's identity for job pinning (:func:`manifest_digest`) covers ids, splits and sizes but
not absolute paths, so nodes that mount the same dataset at different paths agree on it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import orjson

from .errors import ManifestError
from .protocol import SPLITS, Record, write_atomic

DEFAULT_PATTERNS = ("*.jsonl.zst",)
SHARD_SUFFIXES = (".jsonl.zst", ".jsonl.gz", ".json.gz", ".jsonl", ".parquet", ".zst")
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

    def sort_key(self) -> tuple[int, int, int, str]:
        return (SPLITS.index(self.split), self.chunk, self.index, self.id)


def resolve_dataset_root(dataset_dir: str | os.PathLike[str]) -> Path:
    """The folder whose files are the dataset: a cache repo folder resolves via ``refs/main``."""
    root = Path(dataset_dir).expanduser().absolute()
    if not root.is_dir():
        raise ManifestError(f"dataset dir {root} does not exist or is not a directory")
    ref = root / "refs" / "main"
    if ref.is_file() and (root / "snapshots").is_dir():
        commit = ref.read_text().strip()
        snapshot = root / "snapshots" / commit
        if not snapshot.is_dir():
            raise ManifestError(f"{ref} names snapshot {commit}, but {snapshot} does not exist; "
                                "re-run `slimtok mirror` or point --dataset-dir at a snapshot folder")
        return snapshot
    return root


def _strip_suffix(name: str) -> str:
    for suffix in SHARD_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name.rsplit(".", 1)[0] if "." in name else name


def split_of(parts: Sequence[str]) -> str:
    """The split a file belongs to, from its relative path's components.

    The first folder that names a split wins (SlimPajama's ``validation/chunk1/...``, or
    ``<config>/test/...``); else a Hub parquet file name such as ``validation-00000-of-00001``;
    else ``train``.
    """
    for folder in parts[:-1]:
        if folder.lower() in SPLIT_ALIASES:
            return SPLIT_ALIASES[folder.lower()]
    prefix = _strip_suffix(parts[-1]).split("-", 1)[0].lower()
    return SPLIT_ALIASES.get(prefix, "train")


def index_of(stem: str) -> int:
    """A shard's number: ``N`` of a Hub ``...-N-of-M`` name, else the last number in the name."""
    m = _OF_RE.search(stem) or _LAST_INT_RE.search(stem)
    return int(m.group(1)) if m else 0


def entry_for(root: Path, path: Path) -> ShardEntry:
    """Describe ``path`` (a file below ``root``)."""
    rel = path.relative_to(root)
    parts = rel.parts
    split = split_of(parts)
    chunk = 0
    for part in parts[:-1]:
        m = _CHUNK_RE.match(part.lower())
        if m:
            chunk = int(m.group(1))
    stem = _strip_suffix(parts[-1])
    index = index_of(stem)
    shard_id = "/".join(parts[:-1] + (stem,))
    return ShardEntry(id=shard_id, split=split, chunk=chunk, index=index, path=str(path),
                      size=path.stat().st_size)


def _walk(root: Path, patterns: Sequence[str]) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        # Hidden folders hold caches (local_dir's .cache/huggingface), never shards.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and any(fnmatch.fnmatchcase(name, p) for p in patterns):
                yield Path(dirpath) / name


def build_manifest(dataset_dir: str | os.PathLike[str],
                   patterns: Sequence[str] = DEFAULT_PATTERNS) -> tuple[Path, list[ShardEntry]]:
    """Walk the dataset and return (resolved root, entries in manifest order)."""
    root = resolve_dataset_root(dataset_dir)
    entries = sorted((entry_for(root, p) for p in _walk(root, patterns)), key=ShardEntry.sort_key)
    if not entries:
        raise ManifestError(f"no shards matching {', '.join(patterns)} found under {root}")
    seen: dict[str, str] = {}
    for e in entries:
        if e.id in seen:
            raise ManifestError(f"two shards map to id {e.id!r}: {seen[e.id]} and {e.path}; "
                                "narrow --pattern so each shard has one file")
        seen[e.id] = e.path
    return root, entries


def missing_from_mirror(root: Path, entries: Sequence[ShardEntry], patterns: Sequence[str]) -> list[str]:
    """Shards (relative paths) that `slimtok mirror` recorded under ``root`` but the walk did not find."""
    from .mirror import compare_with_mirror_record

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
                   dataset_root: Path | None = None) -> tuple[Path, Path]:
    """Write ``manifest.jsonl`` and ``manifest_summary.json`` into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    write_atomic(manifest, b"".join(orjson.dumps(e.to_dict()) + b"\n" for e in entries))
    summary = summarize(entries)
    if dataset_root is not None:
        summary["dataset_root"] = str(dataset_root)
    summary["sha256"] = manifest_digest(entries)
    summary_path = out / "manifest_summary.json"
    write_atomic(summary_path, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest, summary_path


def read_manifest(path: str | os.PathLike[str]) -> list[ShardEntry]:
    """Entries of a manifest file, checked for the fields and order slimtok relies on."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    entries = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
            entry = ShardEntry(id=str(data["id"]), split=str(data["split"]), chunk=int(data["chunk"]),
                               index=int(data["index"]), path=str(data["path"]), size=int(data["size"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path}:{lineno}: not a manifest entry ({exc})") from exc
        if entry.split not in SPLITS:
            raise ManifestError(f"{path}:{lineno}: split {entry.split!r} is not one of {', '.join(SPLITS)}")
        if entry.id.startswith("/") or ".." in entry.id.split("/"):
            raise ManifestError(f"{path}:{lineno}: id {entry.id!r} must be a relative path inside the dataset")
        entries.append(entry)
    if not entries:
        raise ManifestError(f"manifest {path} lists no shards")
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        raise ManifestError(f"manifest {path} lists an id twice")
    return entries


def manifest_digest(entries: Sequence[ShardEntry]) -> str:
    """sha256 over (id, split, chunk, index, size) in order; absolute paths are left out."""
    h = hashlib.sha256()
    for e in entries:
        h.update(orjson.dumps([e.id, e.split, e.chunk, e.index, e.size]))
        h.update(b"\n")
    return h.hexdigest()
