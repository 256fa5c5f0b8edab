"""The damage matrix: every file kind a reader trusts, damaged in turn, under every reader.

One small root is tokenized, deduplicated (train holds repeats and documents of validation) and
combined with ``--dedup``; a mix is written from it. For each file kind (a shard's token data, its
document table, a dedup drop list, the combined ``train.bin`` and ``train.idx``, the mix's
``train.bin`` and ``train.idx``) and each damage (a flipped bit, a cut, bytes appended, the file
deleted; positions drawn by a generator seeded with the case), a private copy of the roots is
damaged and every reader runs on it: combine --dedup, dedup, mix (from the root; and the same mix
command again on the mix root), validate, export megatron and packed, and the exports that
hard-link the split's files (datatrove, torchtitan) (all with ``verify="all"``), the loader's
``TokenBlocks`` and status. Each must either refuse with an error (or a failed validate check)
naming the damaged file, or give exactly the output it gives on the undamaged copy.

The one pair left out, with its reason: ``TokenBlocks`` over a split whose bits flipped keeps its
size; the loader checks sizes and the whole index (cheap) but not the data's checksum, which costs
one read of the split per rank and is validate's and export's job (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from helpers.corpus import doc_line, sample_documents, write_shard
from slimtok.combine import combine
from slimtok.data import TokenBlocks
from slimtok.dedup import DropReader, exclusion_for, run_dedup
from slimtok.errors import SlimtokError
from slimtok.export import export_datatrove, export_megatron, export_packed, export_torchtitan
from slimtok.manifest import read_manifest
from slimtok.mix import mix_main
from slimtok.protocol import DedupUnitRecord, OutputRoot, read_record
from slimtok.status import collect_status
from slimtok.validate import validate

pytestmark = pytest.mark.slow

OPS = ("flip", "truncate", "append", "delete")


def _dataset(ds: Path) -> None:
    """Three train shards with repeats inside and across them, and a validation shard holding
    some train documents, so dedup drops both duplicates and contamination."""
    docs = sample_documents(40, seed=23)
    shards = [docs[0:10] + docs[0:2], docs[10:20] + docs[5:7], docs[20:30]]
    for i, texts in enumerate(shards):
        write_shard(ds / f"train/chunk1/example_train_{i}.jsonl.zst", [doc_line(t, f"s{i % 2}") for t in texts])
    write_shard(ds / "validation/chunk1/example_holdout_0.jsonl.zst", [doc_line(t) for t in docs[28:36]])
    write_shard(ds / "test/chunk1/example_holdout_0.jsonl.zst", [doc_line(t) for t in docs[36:40]])


def _files(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in names if (folder / n).exists()}


def _meta(folder: Path) -> dict:
    meta = orjson.loads((folder / "meta.json").read_bytes())
    meta.pop("combined_at")
    meta.pop("tokenizer_path")  # the copy's own folder
    return meta


def _split_files(folder: Path) -> dict[str, Any]:
    return {"files": _files(folder, ("train.bin", "train.idx", "val.bin", "val.idx", "test.bin", "test.idx")),
            "meta": _meta(folder)}


def _spec(root: Path, work: Path) -> Path:
    path = work / "mix.yaml"
    path.write_text(yaml.safe_dump({"seed": 5, "shuffle": "document", "chunk_documents": 5,
                                    "sources": [{"name": "r", "root": str(root), "tokens": 1500}]}))
    return path


# -- readers: each returns what it produced (compared with the undamaged run) or raises -----------

def _combine(roots: dict[str, Path], work: Path) -> Any:
    combine(roots["r"], exclude=exclusion_for(roots["r"]), log=lambda _: None)
    return _split_files(roots["r"])


def _dedup(roots: dict[str, Path], work: Path) -> Any:
    root = OutputRoot(roots["r"])
    shutil.rmtree(root.dedup_dir)  # dedup afresh: it reads every table and done record
    job = run_dedup(roots["r"], workers=1)
    reader = DropReader(root)
    return job.dropped, {e.id: [a.tolist() for a in reader.drops(e.id)[:2]] for e in read_manifest(root.manifest)}


def _mix(roots: dict[str, Path], work: Path) -> Any:
    mix_main(_spec(roots["r"], work), work / "mixed", log=lambda _: None)
    return _split_files(work / "mixed")


def _mix_again(roots: dict[str, Path], work: Path) -> Any:
    """The same mix command again on the (damaged) mix root: rebuilds or refuses."""
    mix_main(roots["spec"], roots["m"], log=lambda _: None)
    return _split_files(roots["m"])


def _validate(root: str) -> Callable[[dict[str, Path], Path], Any]:
    def run(roots: dict[str, Path], work: Path) -> Any:
        report = validate(roots[root], samples=8, block_size=16, log=lambda _: None)
        if not report.ok:
            raise ValidateFailed("; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok))
        return [dataclasses.astuple(c) for c in report.checks], report.samples
    return run


def _megatron(root: str) -> Callable[[dict[str, Path], Path], Any]:
    def run(roots: dict[str, Path], work: Path) -> Any:
        written = export_megatron(roots[root], str(work / "meg" / "x"), log=lambda _: None, verify="all")
        return {p.name: (p.parent / (p.name + ".bin")).read_bytes() + (p.parent / (p.name + ".idx")).read_bytes()
                for p in written}
    return run


def _packed(root: str) -> Callable[[dict[str, Path], Path], Any]:
    def run(roots: dict[str, Path], work: Path) -> Any:
        export_packed(roots[root], 16, "npy", "train", output_dir=work / "packed", log=lambda _: None, verify="all")
        return {p.name: p.read_bytes() for p in sorted((work / "packed").iterdir()) if p.suffix == ".npy"}
    return run


def _linked(export: Callable[..., Any], root: str) -> Callable[[dict[str, Path], Path], Any]:
    """An export that hard-links the split's files where it can: a damaged file must be refused, not linked."""
    def run(roots: dict[str, Path], work: Path) -> Any:
        folder = work / export.__name__
        export(roots[root], str(folder), log=lambda _: None, verify="all")
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                if p.is_file() and not p.name.startswith("slimtok-export")}
    return run


def _blocks(root: str) -> Callable[[dict[str, Path], Path], Any]:
    def run(roots: dict[str, Path], work: Path) -> Any:
        return [(x.tobytes(), y.tobytes()) for x, y in TokenBlocks(roots[root] / "train.bin", 16)]
    return run


def _status(roots: dict[str, Path], work: Path) -> Any:
    status = collect_status(roots["r"])
    return {k: dataclasses.asdict(v) for k, v in status.splits.items()}, status.sources, status.unreadable


class ValidateFailed(Exception):
    """validate ran and a check failed: its failed checks' names and details."""


#: In the order they run on one damaged copy: readers that write come last (combine rewrites the
#: root's splits; dedup, last of all, redoes the dedup whose record the mix's fingerprint covers).
READERS: dict[str, Callable[[dict[str, Path], Path], Any]] = {
    "validate": _validate("r"), "blocks": _blocks("r"), "status": _status, "megatron": _megatron("r"),
    "packed": _packed("r"), "mix": _mix, "mix-validate": _validate("m"), "mix-blocks": _blocks("m"),
    "mix-megatron": _megatron("m"), "mix-packed": _packed("m"), "mix-again": _mix_again, "combine": _combine,
    "dedup": _dedup, "datatrove": _linked(export_datatrove, "r"), "mix-torchtitan": _linked(export_torchtitan, "m"),
}


# -- file kinds: the file of each kind damaged (relative to its root) ---------------------------

def _shard(roots: dict[str, Path]) -> Path:
    return OutputRoot(roots["r"]).data("train/chunk1/example_train_1")


def _table(roots: dict[str, Path]) -> Path:
    return OutputRoot(roots["r"]).table("train/chunk1/example_train_1")


def _drops(roots: dict[str, Path]) -> Path:
    root = OutputRoot(roots["r"])
    for k in range(len(list(root.dedup_unit_done("gather", 0).parent.iterdir()))):
        record = read_record(root.dedup_unit_done("gather", k), DedupUnitRecord)
        if record is not None and record.rows:
            return root.resolve(record.file)
    raise AssertionError("the dedup dropped nothing: the dataset must hold repeats")


KINDS: dict[str, Callable[[dict[str, Path]], Path]] = {
    "shard": _shard, "table": _table, "drops": _drops,
    "split": lambda roots: roots["r"] / "train.bin", "index": lambda roots: roots["r"] / "train.idx",
    "mix-split": lambda roots: roots["m"] / "train.bin", "mix-index": lambda roots: roots["m"] / "train.idx",
}


def _damage(path: Path, op: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = bytearray(path.read_bytes())
    assert data, f"{path} is empty: nothing to damage"
    if op == "flip":
        at = int(rng.integers(len(data)))
        data[at] ^= 1 << int(rng.integers(8))
    elif op == "truncate":
        data = data[:int(rng.integers(len(data)))]
    elif op == "append":
        data += rng.integers(0, 256, size=int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
    if op == "delete":
        path.unlink()
    else:
        path.write_bytes(bytes(data))


def _copy(built: dict[str, Path], work: Path) -> dict[str, Path]:
    """A private copy of the root and a mix written from it (a mix's records name its own folder,
    so a mix is written where it is damaged rather than copied)."""
    roots = {"r": work / "r", "m": work / "m"}
    shutil.copytree(built["r"], roots["r"], symlinks=True)
    roots["spec"] = _spec(roots["r"], work)
    mix_main(roots["spec"], roots["m"], log=lambda _: None)
    return roots


@pytest.fixture(scope="module")
def built(tokenized_root, bpe_tokenizer) -> dict[str, Path]:
    root = tokenized_root(_dataset, bpe_tokenizer, "--dtype", "uint32", "--quiet", "--spawn-workers", "1").root
    run_dedup(root, workers=1)
    combine(root, exclude=exclusion_for(root), log=lambda _: None)
    return {"r": root}


@pytest.fixture(scope="module")
def baseline(built, tmp_path_factory) -> dict[str, Any]:
    """Every reader's output on an undamaged copy (each reader on its own copy)."""
    outputs = {}
    for name, reader in READERS.items():
        work = tmp_path_factory.mktemp(f"baseline-{name}")
        outputs[name] = reader(_copy(built, work), work)
    return outputs


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_reader_refuses_a_damaged_file_or_reads_what_it_would_undamaged(built, baseline, tmp_path, kind, op):
    roots = _copy(built, tmp_path)
    target = KINDS[kind](roots)
    seed = zlib.crc32(f"{kind}/{op}".encode())
    _damage(target, op, seed)
    rel = target.relative_to(tmp_path / target.relative_to(tmp_path).parts[0])  # as the root names it
    outcomes = {}
    for name, reader in READERS.items():
        if name in ("blocks", "mix-blocks") and op == "flip" and kind in ("split", "mix-split"):
            continue  # the loader does not checksum the data (see the module's docstring)
        work = tmp_path / f"out-{name}"
        work.mkdir()
        try:
            got = reader(roots, work)
        except (SlimtokError, ValidateFailed) as exc:
            assert str(rel) in str(exc), f"{name} refused {kind}/{op} without naming {rel}: {exc}"
            outcomes[name] = "refused"
            continue
        assert got == baseline[name], f"{name} read damaged {rel} ({op}, seed {seed}) and gave other output"
        outcomes[name] = "same"
    assert outcomes  # printed on failure with the locals
