"""Planning that scales (issue 26, item 3): the listing with sizes that status's first call uses,
the one-parse manifest read, and a synthetic finished root whose first status opens no done
record (its journal, as a real worker's, holds every row)."""

import json
import os

import pytest

from slimtok.errors import ManifestError
from slimtok.manifest import read_manifest
from slimtok.protocol import PosixStorage
from slimtok.status import collect_status
from slimtok.testing import synthetic_root


def test_sizes_under_lists_what_a_walk_and_a_stat_per_file_find(tmp_path):
    top = tmp_path / "done"
    for rel, size in (("a.json", 3), ("train/chunk1/b.json", 10), ("train/chunk2/c.json", 0), ("x.tmp", 5),
                      ("train/.d.json.tmp", 4), ("train/.hidden.json", 7), ("deep/er/still/e.json", 12)):
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f.json").write_bytes(b"12345")
    (top / "linked").symlink_to(tmp_path / "elsewhere")  # a linked folder: not entered, as os.walk
    (top / "g.json").symlink_to(top / "a.json")  # a linked file: its target's size, as os.stat
    (top / "broken.json").symlink_to(tmp_path / "gone")  # nothing to stat: left out
    want = {}
    for dirpath, _dirs, files in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        for name in files:
            if name.endswith(".json") and not name.startswith(".") and os.path.exists(os.path.join(dirpath, name)):
                shard = (name if rel == "." else f"{rel}/{name}")[: -len(".json")]
                want[shard] = os.stat(os.path.join(dirpath, name)).st_size
    assert PosixStorage().sizes_under(top, ".json") == want
    assert want == {"a": 3, "train/chunk1/b": 10, "train/chunk2/c": 0, "deep/er/still/e": 12, "g": 3}
    assert PosixStorage().sizes_under(tmp_path / "missing", ".json") == {}


def _manifest(tmp_path, lines):
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _line(i, **over):
    entry = {"id": f"train/chunk1/s{i}", "split": "train", "chunk": 1, "index": i, "path": f"/d/s{i}.jsonl",
             "size": 10 + i, **over}
    return json.dumps(entry).encode()


def test_manifest_read_in_one_parse_gives_every_entry_as_written(tmp_path):
    path = _manifest(tmp_path, [_line(0), b"", b"   ", _line(1), _line(2, id="train/./chunk1/s2x")])
    with pytest.raises(ManifestError, match=r"manifest.jsonl:5: id 'train/./chunk1/s2x' has a '.' or '..' component"):
        read_manifest(path, check_files=False)
    entries = read_manifest(_manifest(tmp_path, [_line(0), b"", _line(1), _line(2)]), check_files=False)
    assert [(e.id, e.index, e.size, e.path) for e in entries] == [
        (f"train/chunk1/s{i}", i, 10 + i, f"/d/s{i}.jsonl") for i in range(3)]


@pytest.mark.parametrize("bad", [b'{"id": 1', _line(1) + b", " + _line(9), b'{"x": [1', b'2]}'])
def test_a_line_that_is_not_one_entry_is_named_even_when_the_lines_join_into_json(tmp_path, bad):
    """Two values on one line, or one value over two lines, make the one parse disagree with the
    line count: the lines are read one by one and the first bad one is named."""
    path = _manifest(tmp_path, [_line(0), bad, _line(2)] if bad != b'2]}' else [_line(0), b'{"x": [1', bad])
    with pytest.raises(ManifestError, match=r"manifest.jsonl:2: not a manifest entry"):
        read_manifest(path, check_files=False)


def test_two_ids_equal_up_to_dots_and_slashes_are_refused_by_line(tmp_path):
    path = _manifest(tmp_path, [_line(0), _line(1, id="train//chunk1/s0")])
    with pytest.raises(ManifestError, match=r"manifest.jsonl:1 \(id 'train/chunk1/s0'.*manifest.jsonl:2 .*same id"):
        read_manifest(path, check_files=False)


def test_a_synthetic_roots_first_status_opens_no_done_record(tmp_path, monkeypatch):
    root = synthetic_root(tmp_path / "root", 120, 4, tokens=(1, 50))
    records = [json.loads(p.read_text()) for p in (root.root / "done").rglob("*.json")]
    import slimtok.status.collect as collect_mod

    opened = []
    real = collect_mod.parse_record
    monkeypatch.setattr(collect_mod, "parse_record", lambda raw, cls: opened.append(raw) or real(raw, cls))
    status = collect_status(root.root)
    assert not opened  # every row came from the journal, and its record's size matched it
    assert status.total.done == len(records) == 120
    assert status.total.tokens == sum(r["tokens"] for r in records)
    assert status.total.documents == sum(r["documents"] for r in records) == 480


def _eager_order(n, i, p, w, workers):
    """The order as it was computed before it became lazy: whole lists."""
    own = list(range(i, n, p))
    first = own[w::workers]
    rest = [x for x in own if x not in set(first)]
    start = (i * n) // max(p, 1)
    return first + rest + [x for x in list(range(start, n)) + list(range(0, start)) if x not in set(own)]


@pytest.mark.parametrize(("n", "p", "workers"), [(1, 1, 1), (10, 3, 2), (101, 4, 3), (5, 8, 2), (997, 7, 5)])
def test_the_lazy_preference_order_is_the_eager_one(n, p, workers):
    from slimtok.claims import preference_order

    for i in range(p):
        for w in range(workers):
            assert list(preference_order(n, i, p, w, workers)) == _eager_order(n, i, p, w, workers)


def test_a_workers_first_position_costs_nothing_like_the_manifests_size():
    """A worker starts claiming before any order over the manifest exists: at 10**18 positions a
    whole list could not even be allocated."""
    from slimtok.claims import preference_order

    order = preference_order(10**18, 3, 8, 1, 4)
    assert [next(order) for _ in range(3)] == [3 + 8 * 1, 3 + 8 * 5, 3 + 8 * 9]
