"""combine's planning at scale: ``combine(dedup=True)`` plans from the done records the dedup's
fingerprint was checked against (each read once), and writes what the exclusion callable does."""

import shutil

import pytest

from slimtok.combine import combine
from slimtok.dedup import exclusion_for, run_dedup
from slimtok.protocol import SPLIT_FILES, OutputRoot, storage_for
from slimtok.testing import synthetic_root

OUTPUTS = [*SPLIT_FILES.values(), *(f.replace(".bin", ".idx") for f in SPLIT_FILES.values())]


@pytest.fixture(scope="module")
def deduplicated(tmp_path_factory):
    """A synthetic finished root of 40 shards (with token files, 20% repeated hashes), deduplicated."""
    root = synthetic_root(tmp_path_factory.mktemp("plan") / "root", 40, 25, tokens=(1, 30), dup_fraction=0.2,
                          data=True, seed=3)
    run_dedup(root.root, 4, 1)
    return root


def _copy(root: OutputRoot, to) -> OutputRoot:
    shutil.copytree(root.root, to)
    return OutputRoot(to)


def test_dedup_combine_equals_the_exclusion_callable_byte_for_byte(deduplicated, tmp_path):
    a, b = _copy(deduplicated, tmp_path / "a"), _copy(deduplicated, tmp_path / "b")
    meta_a = combine(a.root, dedup=True, log=lambda s: None)
    meta_b = combine(b.root, exclude=exclusion_for(b.root), log=lambda s: None)
    assert meta_a.splits == meta_b.splits
    removed = [n["documents"] for e in meta_a.splits.values() for n in e.get("removed", {}).values()]
    assert sum(removed) > 0  # the dedup left documents out
    for name in OUTPUTS:
        if (b.root / name).exists():
            assert (a.root / name).read_bytes() == (b.root / name).read_bytes(), name


def test_dedup_combine_reads_each_done_record_once(deduplicated, tmp_path, monkeypatch):
    root = _copy(deduplicated, tmp_path / "r")
    local = type(storage_for(root.root))
    reads: list[str] = []
    original = local.read_whole

    def counting(self, path):
        if "done" in path.relative_to(root.root).parts[:1]:
            reads.append(str(path))
        return original(self, path)

    monkeypatch.setattr(local, "read_whole", counting)
    combine(root.root, dedup=True, log=lambda s: None)
    done = sorted(str(p) for p in (root.root / "done").rglob("*.json"))
    assert len(done) == 40
    assert sorted(reads) == done  # every one, and each once (the old code read them in dedup and again here)


def test_dedup_and_an_exclusion_together_are_refused(deduplicated):
    with pytest.raises(ValueError, match="not both"):
        combine(deduplicated.root, dedup=True, exclude=exclusion_for(deduplicated.root), log=lambda s: None)
