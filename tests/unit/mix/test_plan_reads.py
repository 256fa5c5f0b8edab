"""How a mix plan reads its inputs (issue 26, item 3): each document table once (held from its
check), pieces that span shards, and the same plan whether a table is held or streamed, whatever
the piece size. Checked against an independent computation over the roots' own tables."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import slimtok.mix.inputs as inputs
from slimtok.mix import make_plan, parse_spec
from slimtok.mix.inputs import load_sources
from slimtok.protocol import DOC_TABLE_DTYPE, DoneRecord, OutputRoot, PosixStorage, read_record, write_record
from slimtok.testing import synthetic_root

SHARDS, DOCS = 23, 9


def _labelled_root(folder: Path) -> tuple[OutputRoot, list[str], list[np.ndarray], list[list[str]]]:
    """A synthetic root whose rows carry two source labels, named in another order by every other
    shard (so a label's column value changes from shard to shard, also inside one piece); also the
    train ids, their tables and their records' source names."""
    root = synthetic_root(folder, SHARDS, DOCS, tokens=(1, 40), holdout=False, data=True, checksums=False, seed=7)
    rng = np.random.default_rng(11)
    ids, tables, names = [], [], []
    for i in range(SHARDS):
        shard = f"train/chunk1/shard_{i}"
        table = np.fromfile(root.table(shard), dtype=DOC_TABLE_DTYPE)
        table["source"] = rng.integers(0, 2, len(table))
        root.table(shard).write_bytes(table.tobytes())
        record = read_record(root.done(shard), DoneRecord)
        assert record is not None
        record.source_names = ["web", "code"] if i % 2 else ["code", "web"]
        record.table_sha256 = hashlib.sha256(table.tobytes()).hexdigest()
        write_record(root.done(shard), record, durable=False)
        ids.append(shard)
        tables.append(table)
        names.append(record.source_names)
    return root, ids, tables, names


def _spec(root: OutputRoot, tokens: int, label: str | None):
    source = {"name": "s", "root": str(root.root), "tokens": tokens, "max_epochs": 3}
    if label is not None:
        source["source"] = label
    return parse_spec({"seed": 9, "shuffle": "none", "sources": [source]})


@pytest.fixture
def labelled(tmp_path):
    return _labelled_root(tmp_path / "root")


def _expected(tables, names, label):
    """(id, start, tokens) of every usable row in manifest order, computed from the tables alone."""
    out = []
    for k, (table, shard_names) in enumerate(zip(tables, names, strict=True)):
        start = np.concatenate([[0], np.cumsum(table["tokens"].astype(np.int64))[:-1]])
        for row in range(len(table)):
            if label is None or shard_names[table["source"][row]] == label:
                out.append(((k << 32) + row, int(start[row]), int(table["tokens"][row])))
    return out


@pytest.mark.parametrize("label", [None, "web"])
def test_a_whole_epoch_is_every_usable_row_with_its_start_in_its_shard(labelled, monkeypatch, label):
    """Pieces of 7 rows (shards of 9: every piece boundary falls inside a shard or on one), tables
    held, streamed, or some of each: the one epoch is the rows the tables give, each start counted in its shard."""
    root, _, tables, names = labelled
    want = _expected(tables, names, label)
    available = sum(t for _, _, t in want)
    size = DOCS * DOC_TABLE_DTYPE.itemsize  # every table's
    for rows, hold, largest in ((7, 0, size), (7, inputs.HOLD_BYTES, size), (1 << 18, 0, size),
                                (1 << 18, 5 * size, size), (7, inputs.HOLD_BYTES, size - 1)):
        monkeypatch.setattr(inputs, "PIECE_ROWS", rows)
        monkeypatch.setattr(inputs, "HOLD_BYTES", hold)
        monkeypatch.setattr(inputs, "HOLD_TABLE_BYTES", largest)  # a larger table is streamed
        spec = _spec(root, available, label)
        sources = load_sources(spec)[0]
        assert len(sources[0].held) == (min(SHARDS, hold // size) if largest >= size else 0)
        picks = make_plan(spec, sources).splits["train"]
        assert [(int(i), int(s), int(t)) for i, s, t in picks.tolist()] == want, (rows, hold)


def test_a_sample_is_the_same_held_or_streamed_at_any_piece_size(labelled, monkeypatch):
    root, _, tables, names = labelled
    available = sum(t for _, _, t in _expected(tables, names, "code"))
    spec = _spec(root, available + available // 3, "code")
    plans = []
    for rows, hold in ((5, 0), (9, inputs.HOLD_BYTES), (1 << 18, 0), (1 << 18, inputs.HOLD_BYTES)):
        monkeypatch.setattr(inputs, "PIECE_ROWS", rows)
        monkeypatch.setattr(inputs, "HOLD_BYTES", hold)
        plans.append(make_plan(spec, load_sources(spec)[0]))
    first = plans[0].splits["train"]
    assert len(first) > len(_expected(tables, names, "code"))  # one epoch and a sample
    for plan in plans[1:]:
        assert np.array_equal(plan.splits["train"], first)
        assert plan.sources == plans[0].sources


def test_each_table_is_opened_once_per_plan(labelled, monkeypatch):
    """The check reads a table and the plan's passes stream it from memory: one open each (the
    passes used to open every table again: four opens per table for a sampled source)."""
    root, ids, tables, names = labelled
    opened: list[Path] = []
    real = PosixStorage.open_read

    def counting(self, path):
        opened.append(Path(path))
        return real(self, path)

    monkeypatch.setattr(PosixStorage, "open_read", counting)
    available = sum(t for _, _, t in _expected(tables, names, None))
    spec = _spec(root, available // 2, None)
    make_plan(spec, load_sources(spec)[0])
    docs = sorted(p for p in opened if p.suffix == ".docs")
    assert docs == sorted(root.table(i) for i in ids)


def test_a_table_changed_after_its_check_is_named_when_streamed(labelled, monkeypatch):
    """A streamed table cut short between the check and a pass is refused naming it, not read short."""
    from slimtok.errors import MixError

    root, ids, tables, names = labelled
    monkeypatch.setattr(inputs, "HOLD_BYTES", 0)
    spec = _spec(root, sum(t for _, _, t in _expected(tables, names, None)) // 2, None)
    sources = load_sources(spec)[0]
    path = root.table(ids[4])
    path.write_bytes(path.read_bytes()[:-DOC_TABLE_DTYPE.itemsize])
    with pytest.raises(MixError, match="document table ended after"):
        make_plan(spec, sources)


@pytest.mark.parametrize("how", ["dotdot", "linked file", "linked folder"])
def test_a_table_outside_the_root_is_refused_though_its_folder_was_resolved_before(labelled, tmp_path, how):
    """The check resolves each folder once for the whole pass; a table that leaves the root by
    ``..``, by a link as its name or by a linked folder is still refused, naming its record."""
    from slimtok.errors import CombineError

    root, ids, tables, names = labelled
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shard = ids[6]
    record = read_record(root.done(shard), DoneRecord)
    assert record is not None
    (outside / "t.docs").write_bytes(root.table(shard).read_bytes())
    if how == "dotdot":
        record.table = "documents/../../elsewhere/t.docs"
    elif how == "linked file":
        root.table(shard).unlink()
        root.table(shard).symlink_to(outside / "t.docs")
    else:
        (root.root / "documents" / "train" / "linked").symlink_to(outside)
        record.table = "documents/train/linked/t.docs"
    write_record(root.done(shard), record, durable=False)
    spec = _spec(root, sum(t for _, _, t in _expected(tables, names, None)) // 2, None)
    with pytest.raises(CombineError, match=rf"{root.done(shard)}: its table .* is outside the output root"):
        load_sources(spec)
