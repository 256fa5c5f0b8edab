"""Every path of an output root: :class:`OutputRoot` (the layout table is in :mod:`slimtok.protocol`).

Computes names only; the root's :class:`~.storage.Storage` creates, reads and lists them. Hidden
names (``.*``: temporary files, work files, publish intents, set-aside records) are never listed as
ids, so a listing of ``done/`` or ``locks/`` sees only committed names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path

from .docindex import index_path
from .identity import new_token
from .storage import Storage, mark_root, storage_for, temp_glob

#: Combined output file of each split; "validation" is ``val.bin`` as nanoGPT names it.
SPLIT_FILES = {"train": "train.bin", "validation": "val.bin", "test": "test.bin"}
SPLITS = tuple(SPLIT_FILES)

# ``slimtok dedup`` keeps everything under ``ROOT/dedup/`` (docs/DEDUP.md)::
#
#     dedup/plan.json                 buckets, unit size and inputs' fingerprint, created once  DedupPlan
#     dedup/<phase>/<k>.<ext>         data of unit k of a phase (scatter .rows, bucket .drops,
#                                     gather .drops), renamed into place before its done record
#     dedup/done/<phase>/<k>.json     commit record of a finished unit (exclusive)           DedupUnitRecord
#     dedup/job.json                  written once every unit is done                         DedupJob
#     locks/dedup/<phase>/<k>.lock    claim of a unit (the claim id is ``dedup/<phase>/<k>``)
#
# A unit is finished exactly when its done record exists; its data file never changes afterwards
# (any two writers of one unit write the same bytes, so a late rename is harmless).
_DEDUP_EXT = {"scatter": "rows", "bucket": "drops", "gather": "drops"}
_DEDUP_DATA_DIR = {"scatter": "scatter", "bucket": "bucket", "gather": "drops"}


class OutputRoot:
    """Paths of one output root, and the storage that holds them.

    Path methods only compute paths; callers create what they need, through ``storage`` (or the
    helpers of :mod:`.atomic`). Listings walk the storage once each, without a stat per file."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).absolute()
        self.storage: Storage = storage_for(self.root)
        mark_root(self.root)  # the folders below it are slimtok's: a link among them is refused

    # -- job-wide files ---------------------------------------------------------------------
    @property
    def job(self) -> Path:
        return self.root / "job.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.jsonl"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_file(self) -> Path:
        return self.tokenizer_dir / "tokenizer.json"

    @property
    def tokenizer_config_file(self) -> Path:
        return self.tokenizer_dir / "tokenizer_config.json"

    def pin_stage(self, token: str) -> Path:
        """``.pin.<token>/``: the copies (manifest, tokenizer) one pin of a launch writes before
        job.json names them; moved into place by whichever pin's job.json they match."""
        return self.root / f".pin.{token}"

    def pin_stages(self) -> list[Path]:
        """Every :meth:`pin_stage` folder present (a pin in flight, or one a kill cut short)."""
        return [self.root / name for name in sorted(self.storage.list_names(self.root)) if name.startswith(".pin.")]

    def launch_lease(self, token: str) -> Path:
        """``launches/<token>.json``: held by a running tokenize launch, from before it pins until it
        ends, so no other launch re-pins the job under it."""
        return self.root / "launches" / f"{token}.json"

    def launch_leases(self) -> set[str]:
        """The tokens of every :meth:`launch_lease` present."""
        return ids_under(self.root / "launches", ".json")

    @property
    def meta_pkl(self) -> Path:
        return self.root / "meta.pkl"

    @property
    def meta_json(self) -> Path:
        return self.root / "meta.json"

    @property
    def mix_json(self) -> Path:
        """``slimtok mix``: the resolved spec and the fingerprints of its inputs."""
        return self.root / "mix.json"

    def combined(self, split: str) -> Path:
        return self.root / SPLIT_FILES[split]

    def doc_index(self, split: str) -> Path:
        """``train.idx``: uint64 end offset (in tokens, exclusive) of every document in ``train.bin``."""
        return index_path(self.combined(split))

    # -- exports ----------------------------------------------------------------------------
    def megatron_prefix(self, prefix: str, split: str) -> Path:
        """``<prefix>_<split>_text_document`` (+ .bin/.idx); a relative prefix lives in ``megatron/``."""
        base = Path(prefix) if Path(prefix).is_absolute() else self.root / "megatron" / prefix
        return base.with_name(f"{base.name}_{self.combined(split).stem}_text_document")

    def export_dir(self, target: str, prefix: str, split: str) -> Path:
        """``<prefix>/<split stem>/``: a folder of the export's own per split, which the trainer's loader
        lists whole; a relative prefix lives in ``<target>/``."""
        base = Path(prefix) if Path(prefix).is_absolute() else self.root / target / prefix
        return base / self.combined(split).stem

    def packed_dir(self, split: str, seq_len: int, fmt: str) -> Path:
        return self.root / "packed" / f"{self.combined(split).stem}-{seq_len}-{fmt}"

    # -- per-shard files --------------------------------------------------------------------
    def lock(self, shard: str) -> Path:
        return self.locks_dir / f"{shard}.lock"

    def stolen(self, shard: str, token: str) -> Path:
        """Where a stealer renames a stale lock; exactly one stealer's rename succeeds."""
        return self.locks_dir / f"{shard}.{token}.stolen"

    def checkpoint(self, shard: str) -> Path:
        return self.root / "checkpoints" / f"{shard}.json"

    def part(self, shard: str, token: str) -> Path:
        return self.root / "shards" / f"{shard}.{token}.part"

    def parts(self, shard: str) -> list[Path]:
        """Every ``part(shard, token)`` file present, whatever its token (one directory listing)."""
        return self._token_files(self.part(shard, "-").parent, shard)

    def table_parts(self, shard: str) -> list[Path]:
        """Every ``table_part(shard, token)`` file present, whatever its token."""
        return self._token_files(self.table_part(shard, "-").parent, shard)

    def data(self, shard: str) -> Path:
        return self.root / "shards" / f"{shard}.bin"

    def table_part(self, shard: str, token: str) -> Path:
        """The document table being written by the claim ``token`` beside ``part(shard, token)``."""
        return self.root / "documents" / f"{shard}.{token}.part"

    def table(self, shard: str) -> Path:
        """The finished document table of a shard: ``DOC_TABLE_DTYPE`` rows, one per document."""
        return self.root / "documents" / f"{shard}.docs"

    def done(self, shard: str) -> Path:
        return self.root / "done" / f"{shard}.json"

    def corrupt_aside(self, record: Path) -> Path:
        """Where an unparsable record is kept for inspection (``.*`` names are never listed as ids)."""
        return record.with_name(f".{record.name}.corrupt-{new_token()}")

    def failed(self, shard: str) -> Path:
        return self.failed_dir / f"{shard}.json"

    def part_files(self) -> list[Path]:
        """Every part file of any shard (token data and document tables being written), one walk."""
        return [p for folder in ("shards", "documents")
                for p in sorted(path for _id, path in self.storage.files_under(self.root / folder, ".part",
                                                                               hidden=True))]

    def stolen_markers(self) -> list[Path]:
        """Every ``stolen(shard, token)`` marker present (a takeover under way, or one a kill cut short)."""
        return sorted(path for _id, path in self.storage.files_under(self.locks_dir, ".stolen", hidden=True))

    def worker_folders(self) -> list[Path]:
        """The folders only tokenize workers write (per-shard files, records, heartbeats): where
        the temporary files of a killed worker stay behind."""
        return [self.root / name for name in ("shards", "documents", "done", "failed", "checkpoints", "locks",
                                              "heartbeats")]

    # -- listings (one directory walk each, no stat) ----------------------------------------
    def done_ids(self) -> set[str]:
        return ids_under(self.root / "done", ".json")

    def done_sizes(self) -> dict[str, int]:
        """{shard: size of its done record}: the listing of ``done_ids`` plus one stat per record."""
        return self.storage.sizes_under(self.root / "done", ".json")

    def failed_ids(self) -> set[str]:
        return ids_under(self.failed_dir, ".json")

    def locked_ids(self) -> set[str]:
        return ids_under(self.locks_dir, ".lock")

    def checkpointed_ids(self) -> set[str]:
        return ids_under(self.root / "checkpoints", ".json")

    # -- per-worker files -------------------------------------------------------------------
    def heartbeat(self, worker: str) -> Path:
        return self.root / "heartbeats" / f"{worker}.json"

    def heartbeats_dir(self) -> Path:
        return self.root / "heartbeats"

    @property
    def locks_dir(self) -> Path:
        """``locks/``: one lock per claimed shard or dedup unit."""
        return self.root / "locks"

    @property
    def failed_dir(self) -> Path:
        """``failed/``: why shards could not be read."""
        return self.root / "failed"

    @property
    def logs_dir(self) -> Path:
        """``logs/``: one log per worker."""
        return self.root / "logs"

    def probe(self, worker: str) -> Path:
        return self.root / "probes" / worker

    def log(self, worker: str) -> Path:
        return self.logs_dir / f"{worker}.log"

    # -- status ---------------------------------------------------------------------------
    @property
    def done_rollup(self) -> Path:
        return self.root / "status" / "done-rollup.json"

    def done_journal(self, worker: str) -> Path:
        return self.root / "status" / "journal" / f"{worker}.jsonl"

    def done_journals(self) -> list[Path]:
        folder = self.root / "status" / "journal"
        return sorted(folder / name for name in self.storage.list_names(folder) if name.endswith(".jsonl"))

    # -- finishing stages -------------------------------------------------------------------
    def consume_work(self, split: str) -> Path:
        """``.<split file>.consume``: the split being built by ``combine --consume``."""
        return work_path(self.combined(split), "consume")

    def consume_journal(self, split: str) -> Path:
        """``.<split file>.consume.json``: its :class:`ConsumeJournal`."""
        work = self.consume_work(split)
        return work.with_name(work.name + ".json")

    @staticmethod
    def mix_chunk(split: str, n: int) -> str:
        """The id of chunk ``n`` of a mix's ``split``: a byte range of the split file, not a file."""
        return f"{split}/mix-{n:06d}"

    def mix_partial(self, split: str) -> Path:
        """``.<split file>.mix-partial``: a mix's split while its chunks are appended."""
        return work_path(self.combined(split), "mix-partial")

    # -- dedup ------------------------------------------------------------------------------
    @property
    def dedup_dir(self) -> Path:
        return self.root / "dedup"

    @property
    def dedup_plan(self) -> Path:
        return self.dedup_dir / "plan.json"

    @property
    def dedup_job(self) -> Path:
        return self.dedup_dir / "job.json"

    def dedup_unit_done(self, phase: str, k: int) -> Path:
        return self.dedup_dir / "done" / phase / f"{k}.json"

    def dedup_unit_data(self, phase: str, k: int) -> Path:
        return self.dedup_dir / _DEDUP_DATA_DIR[phase] / f"{k}.{_DEDUP_EXT[phase]}"

    # -- helpers ----------------------------------------------------------------------------
    def temps_of(self, target: Path) -> list[Path]:
        """The temporary files (``storage.temp_path``) of ``target`` present beside it: a write of it
        under way, or one a kill cut short."""
        pattern = temp_glob(target.name)
        return sorted(target.parent / name for name in self.storage.list_names(target.parent)
                      if fnmatchcase(name, pattern))

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def resolve(self, relative: str) -> Path:
        return self.root / relative

    def prune_empty(self, removed: Iterable[Path]) -> None:
        """Remove the folders left empty by removing ``removed`` (e.g. ``shards/train/chunk1/``),
        up to but not including the root's own folders (``shards/``, ``locks/``, ...). A folder a
        file is still in, or that another process refilled meanwhile, stays (``rmdir`` refuses)."""
        for folder in sorted({p.parent for p in removed}, key=lambda f: len(f.parts), reverse=True):
            while folder.parent != self.root and self.root in folder.parents:
                try:
                    if not self.storage.remove_folder(folder):
                        break  # not empty
                except FileNotFoundError:
                    pass  # removed already, by this loop for another file or by an earlier run
                folder = folder.parent

    def _token_files(self, folder: Path, shard: str) -> list[Path]:
        """``<folder>/<last id component>.<token>.part`` files, whatever the token (one listing)."""
        prefix = shard.rsplit("/", 1)[-1] + "."
        return [folder / name for name in self.storage.list_names(folder)
                if name.startswith(prefix) and name.endswith(".part")
                and "." not in name[len(prefix):-len(".part")]]  # tokens have no dot; longer ids do


def ids_under(folder: Path, suffix: str) -> set[str]:
    """Shard ids of every ``<id><suffix>`` file below ``folder`` (temp files, named ``.*``, excluded)."""
    return {shard for shard, _path in storage_for(folder).files_under(folder, suffix)}


def dedup_unit(phase: str, k: int) -> str:
    """The claim id of unit ``k`` of ``phase``; its lock is ``OutputRoot.lock`` of it."""
    return f"dedup/{phase}/{k}"


def temp_files(folder: Path) -> list[Path]:
    """Every temporary file (``storage.temp_path``) below ``folder``, whatever its name."""
    pattern = temp_glob("*")
    return sorted(path for _id, path in storage_for(folder).files_under(folder, ".tmp", hidden=True)
                  if fnmatchcase(path.name, pattern))


def work_path(path: Path, kind: str) -> Path:
    """A hidden working file of a stage beside ``path``: ``.<name>.<kind>`` (e.g. ``consume``)."""
    return path.with_name(f".{path.name}.{kind}")


#: A publish intent's kind (:func:`publish_intent`), also the end of its file name.
PUBLISH_INTENT = "publish.json"


def publish_intent(first_target: Path) -> Path:
    """``.<first target>.publish.json``: the intent of a set of outputs published together (a
    :class:`PublishIntent`, in the targets' folder; see :mod:`slimtok.publish`)."""
    return work_path(first_target, PUBLISH_INTENT)


# The free functions of the dedup paths, from before they were ``OutputRoot`` methods: kept as the
# public ``slimtok.protocol.dedup_*`` import paths.
def dedup_plan_path(root: OutputRoot) -> Path:
    return root.dedup_plan


def dedup_job_path(root: OutputRoot) -> Path:
    return root.dedup_job


def dedup_unit_done(root: OutputRoot, phase: str, k: int) -> Path:
    return root.dedup_unit_done(phase, k)


def dedup_unit_data(root: OutputRoot, phase: str, k: int) -> Path:
    return root.dedup_unit_data(phase, k)
