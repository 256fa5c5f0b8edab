from pathlib import Path

import orjson
import pytest

from corpus import doc_line, write_shard
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
