import os
from pathlib import Path

import orjson
import pytest

from helpers.corpus import doc_line, write_shard
from slimtok.manifest import ManifestError, build_manifest, manifest_digest, read_manifest, write_manifest


def _touch_layout(root: Path) -> None:
    for rel in ["train/chunk10/example_train_0", "train/chunk2/example_train_10", "train/chunk2/example_train_9",
                "train/chunk1/example_train_1", "validation/chunk1/example_holdout_0",
                "test/chunk1/example_holdout_2", "test/chunk1/example_holdout_11"]:
        write_shard(root / f"{rel}.jsonl.zst", [doc_line("x")])
    (root / "README.md").write_text("not a shard")


def test_entries_are_ordered_numerically_by_split_chunk_index(tmp_path):
    _touch_layout(tmp_path / "ds")
    root, entries = build_manifest(tmp_path / "ds")
    assert [e.id for e in entries] == [
        "train/chunk1/example_train_1", "train/chunk2/example_train_9", "train/chunk2/example_train_10",
        "train/chunk10/example_train_0", "validation/chunk1/example_holdout_0",
        "test/chunk1/example_holdout_2", "test/chunk1/example_holdout_11"]
    first = entries[0]
    assert (first.split, first.chunk, first.index) == ("train", 1, 1)
    assert first.path == str(tmp_path / "ds/train/chunk1/example_train_1.jsonl.zst")
    assert first.size == Path(first.path).stat().st_size


def test_written_manifest_and_summary(tmp_path):
    _touch_layout(tmp_path / "ds")
    root, entries = build_manifest(tmp_path / "ds")
    manifest, summary = write_manifest(entries, tmp_path / "out", root)
    lines = [orjson.loads(x) for x in manifest.read_bytes().splitlines()]
    assert {"id", "split", "chunk", "index", "path", "size"} <= set(lines[0])
    assert read_manifest(manifest) == entries
    s = orjson.loads(summary.read_bytes())
    assert s["shards"] == 7 and s["splits"]["train"]["shards"] == 4 and s["splits"]["test"]["shards"] == 2
    assert s["bytes"] == sum(Path(e.path).stat().st_size for e in entries)
    assert s["splits"]["validation"]["bytes"] == entries[4].size


def test_hf_cache_repo_folder_resolves_snapshot_from_refs_main(tmp_path):
    repo = tmp_path / "hub" / "datasets--org--name"
    commit = "a" * 40
    _touch_layout(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    root, entries = build_manifest(repo)
    assert root == repo / "snapshots" / commit
    assert entries[0].id == "train/chunk1/example_train_1"


def test_digest_ignores_absolute_paths_but_not_sizes(tmp_path):
    _touch_layout(tmp_path / "a")
    _touch_layout(tmp_path / "b")
    _, a = build_manifest(tmp_path / "a")
    _, b = build_manifest(tmp_path / "b")
    assert manifest_digest(a) == manifest_digest(b)
    write_shard(tmp_path / "b/train/chunk1/example_train_1.jsonl.zst", [doc_line("longer text here")])
    _, b = build_manifest(tmp_path / "b")
    assert manifest_digest(a) != manifest_digest(b)


def test_empty_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ManifestError, match="no shards matching"):
        build_manifest(tmp_path / "empty")
    with pytest.raises(ManifestError, match="does not exist"):
        build_manifest(tmp_path / "missing")


def test_bad_manifest_line_names_file_and_line(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"id": "train/a", "split": "train", "chunk": 0, "index": 0, "path": "/x", "size": 1}\n{"id": 3}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:2"):
        read_manifest(bad)


def test_hub_parquet_layouts_take_split_and_index_from_names(tmp_path):
    root = tmp_path / "hub"
    names = ["data/train-00010-of-00012.parquet", "data/train-00002-of-00012.parquet",
             "data/validation-00000-of-00001.parquet", "data/test-00000-of-00001.parquet",
             "sample-10BT/train/000_00001.parquet", "default/test/0000.parquet"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    _, entries = build_manifest(root, ["*.parquet"])
    assert [(e.id, e.split, e.index) for e in entries] == [
        ("sample-10BT/train/000_00001", "train", 1), ("data/train-00002-of-00012", "train", 2),
        ("data/train-00010-of-00012", "train", 10), ("data/validation-00000-of-00001", "validation", 0),
        ("data/test-00000-of-00001", "test", 0), ("default/test/0000", "test", 0)]


# -- formats --------------------------------------------------------------------------------------

def test_every_registered_suffix_is_stripped_from_the_id_and_unknown_ones_are_refused(tmp_path):
    root = tmp_path / "ds"
    for name in ["a.jsonl.bz2", "b.jsonl.xz", "c.jsonl.gz", "d.jsonl", "e.jsonl.zst", "f.parquet", "g.arrow"]:
        (root / "train").mkdir(parents=True, exist_ok=True)
        (root / "train" / name).write_bytes(b"x")
    _, entries = build_manifest(root, ["*.jsonl*", "*.parquet", "*.arrow"])
    assert sorted(e.id for e in entries) == [f"train/{c}" for c in "abcdefg"]
    (root / "train" / "h.jsonl.lz4").write_bytes(b"x")
    with pytest.raises(ManifestError, match=r"train/h\.jsonl\.lz4.*supported suffixes: .*\.jsonl\.zst.*\.arrow"):
        build_manifest(root, ["*.jsonl*"])


def test_nothing_found_names_what_was_seen_and_the_pattern_to_use(tmp_path):
    root = tmp_path / "dt"
    for i in range(3):
        (root / f"{i:05d}.jsonl.gz").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{i:05d}.jsonl.gz").write_bytes(b"x")
    (root / "README.md").write_text("x")
    with pytest.raises(ManifestError) as exc:
        build_manifest(root)
    msg = str(exc.value)
    assert "no shards matching *.jsonl.zst" in msg and "3 .jsonl.gz, 1 .md" in msg
    assert "--pattern '*.jsonl.gz'" in msg and str(root) in msg


# -- one shard file, one id -----------------------------------------------------------------------

def _manifest_lines(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"id": i, "split": "train", "chunk": 1, "index": k, "path": p,
                                            "size": 1}) + b"\n" for k, (i, p) in enumerate(rows)))
    return path


@pytest.mark.parametrize("second", ["train/chunk1/./a", "train//chunk1/a", "train/chunk1/a/", "./train/chunk1/a"])
def test_ids_that_differ_only_by_dots_or_slashes_are_refused_naming_both_lines(tmp_path, second):
    m = _manifest_lines(tmp_path / "m.jsonl", [("train/chunk1/a", str(tmp_path / "a.jsonl.zst")),
                                               (second, str(tmp_path / "b.jsonl.zst"))])
    with pytest.raises(ManifestError, match=r"m\.jsonl:1 .* and .*m\.jsonl:2 .* name the same id"):
        read_manifest(m)


@pytest.mark.parametrize("bad", ["train/chunk1/./a", "train//a", "train/a/", "/train/a", "train/\0a", "train/../a"])
def test_an_id_that_is_not_a_normalized_relative_path_is_refused(tmp_path, bad):
    m = _manifest_lines(tmp_path / "m.jsonl", [("train/b", str(tmp_path / "b")), (bad, str(tmp_path / "a"))])
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: id "):
        read_manifest(m)


def test_one_file_under_two_paths_is_refused_naming_both_lines(tmp_path):
    shard = write_shard(tmp_path / "ds/train/a.jsonl.zst", [doc_line("x")])
    (tmp_path / "alias").symlink_to(tmp_path / "ds")
    os.link(shard, tmp_path / "ds/train/hard.jsonl.zst")
    for other in [tmp_path / "alias/train/a.jsonl.zst", tmp_path / "ds/train/hard.jsonl.zst",
                  tmp_path / "ds/train/../train/a.jsonl.zst"]:
        m = _manifest_lines(tmp_path / "m.jsonl", [("train/a", str(shard)), ("train/b", str(other))])
        with pytest.raises(ManifestError, match=r"m\.jsonl:1 .* and .*m\.jsonl:2 .* name the same file"):
            read_manifest(m)
    missing = _manifest_lines(tmp_path / "m.jsonl", [("train/a", str(tmp_path / "gone/a")),
                                                     ("train/b", str(tmp_path / "gone/./a"))])
    with pytest.raises(ManifestError, match="name the same file"):
        read_manifest(missing)


def test_a_folder_linked_twice_into_the_dataset_is_refused(tmp_path):
    write_shard(tmp_path / "ds/train/chunk1/a.jsonl.zst", [doc_line("x")])
    (tmp_path / "ds/train/chunk2").symlink_to(tmp_path / "ds/train/chunk1")
    with pytest.raises(ManifestError,
                       match=r"chunk1/a\.jsonl\.zst .* and .*chunk2/a\.jsonl\.zst .* name the same file"):
        build_manifest(tmp_path / "ds")


# -- a Hugging Face cache repo folder ---------------------------------------------------------------

def _cache_repo(tmp_path: Path, commits: list[str], recorded: str | None = None) -> Path:
    repo = tmp_path / "hub" / "datasets--org--name"
    for commit in commits:
        write_shard(repo / "snapshots" / commit / "train/chunk1/example_train_0.jsonl.zst", [doc_line(commit)])
    (repo / "blobs").mkdir(parents=True)
    if recorded is not None:
        (repo / "snapshots" / recorded / "slimtok-mirror.json").write_text("{}")
    return repo


def test_cache_repo_with_several_snapshots_and_no_refs_main_needs_a_revision(tmp_path):
    a, b = "a" * 40, "b" * 40
    repo = _cache_repo(tmp_path, [a, b])
    with pytest.raises(ManifestError, match=f"2 snapshots \\({a}, {b}\\).*--revision"):
        build_manifest(repo)
    root, entries = build_manifest(repo, revision=b)
    assert root == repo / "snapshots" / b and [e.id for e in entries] == ["train/chunk1/example_train_0"]
    (repo / "refs").mkdir()
    (repo / "refs" / "v1").write_text(a)
    assert build_manifest(repo, revision="v1")[0] == repo / "snapshots" / a
    with pytest.raises(ManifestError, match="neither a ref"):
        build_manifest(repo, revision="c" * 40)
    with pytest.raises(ManifestError, match="--revision applies to a Hugging Face cache repo folder"):
        build_manifest(repo / "snapshots" / a, revision=a)


def test_cache_repo_without_refs_main_uses_the_only_or_the_mirrored_snapshot(tmp_path):
    a, b = "a" * 40, "b" * 40
    only = _cache_repo(tmp_path / "one", [a])
    assert build_manifest(only)[0] == only / "snapshots" / a
    mirrored = _cache_repo(tmp_path / "two", [a, b], recorded=b)
    root, entries = build_manifest(mirrored)
    assert root == mirrored / "snapshots" / b and len(entries) == 1


def _hub_repo(hub: Path, name: str, commits: list[str], main: str | None) -> dict[str, list[str]]:
    """A hub cache repo folder whose snapshots link their shards to blobs, as huggingface_hub
    writes it; each snapshot holds a different set of shards. Returns each snapshot's shard paths."""
    repo = hub / name
    (repo / "blobs").mkdir(parents=True)
    held = {}
    for n, commit in enumerate(commits):
        held[commit] = []
        for i in range(n + 2):
            rel = f"train/chunk1/example_train_{i}.jsonl.zst"
            blob = repo / "blobs" / f"{commit[:6]}{i}"
            write_shard(blob, [doc_line(f"{name} {commit} {i}")])
            link = repo / "snapshots" / commit / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
            held[commit].append(str(link))
    if main is not None:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(main)
    return held


def test_a_hub_cache_or_snapshots_folder_lists_each_repo_once_from_its_one_snapshot(tmp_path):
    """Pointed at the hub cache (several repos) or at a repo's snapshots/ folder, the manifest holds
    exactly the shards of each repo's chosen snapshot (refs/main, else the only one): the files the
    listing must give, computed from the layout written above."""
    hub = tmp_path / "hub"
    first = _hub_repo(hub, "datasets--org--one", ["a" * 40, "b" * 40], main="b" * 40)
    second = _hub_repo(hub, "datasets--org--two", ["c" * 40], main=None)
    (hub / ".locks" / "datasets--org--one").mkdir(parents=True)
    _, entries = build_manifest(hub)
    assert sorted(e.path for e in entries) == sorted(first["b" * 40] + second["c" * 40])
    assert len({e.id for e in entries}) == len(entries)
    _, entries = build_manifest(hub / "datasets--org--one" / "snapshots")
    assert sorted(e.path for e in entries) == sorted(first["b" * 40])
    assert {e.id for e in entries} == {f"{'b' * 40}/train/chunk1/example_train_{i}" for i in range(3)}


def test_a_hub_cache_with_an_ambiguous_repo_says_which(tmp_path):
    hub = tmp_path / "hub"
    _hub_repo(hub, "datasets--org--one", ["a" * 40, "b" * 40], main=None)
    with pytest.raises(ManifestError, match="datasets--org--one: holds 2 snapshots"):
        build_manifest(hub)
