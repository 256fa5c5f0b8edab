"""Write combined splits in the layouts other trainers read.

Reads ``meta.json``, ``<split>.bin`` and ``<split>.idx`` of an output root (after ``combine``);
writes nothing there except under the export paths :class:`~slimtok.protocol.OutputRoot` names.

* **Megatron** (:func:`export_megatron`): ``<prefix>_<split>_text_document.bin`` / ``.idx`` in
  megatron-core's indexed-dataset layout (one sequence per document). The token data is never
  rewritten: Megatron has no uint32 code, but uint32 ids below 2^31 are bit-identical to int32
  (code 4) and uint16 has its own code (8), so the ``.bin`` is a hard link to the split's file,
  or a kernel copy (copy_file_range, a reflink on XFS/btrfs) across filesystems.
* **Megatron blend** (:func:`export_data_args`): the same files for each root of a blend and a
  ``--data-args-path`` file listing ``weight prefix`` pairs: a mix's sources at its realized
  token shares, or several plain roots at their token counts.
* **Packed** (:func:`export_packed`): the split's stream (documents joined by eos, as combined)
  cut into rows of exactly ``seq_len`` tokens, in order; the last ``len % seq_len`` tokens are
  dropped and counted. Files are ``part-NNNNN.parquet`` (column ``input_ids``, fixed-size lists)
  or ``part-NNNNN.npy`` (2-D arrays), with ``manifest.json`` listing each file's rows and sha256.

Every file is written under a temporary name and renamed into place, so a rerun replaces an
interrupted export; the same inputs always give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import orjson

from .combine import read_meta
from .data import TokenBin
from .errors import DataError, ExportError
from .protocol import SPLIT_FILES, Meta, OutputRoot, write_atomic
from .publish import PendingSet, remove_stale, require_free
from .spans import copy_range

MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_VERSION = 1
#: megatron-core's DType codes for the two dtypes slimtok writes (it has no uint32 code).
MEGATRON_CODES = {"uint16": 8, "int32": 4}
PACKED_FORMATS = ("parquet", "npy")
PACKED_MANIFEST = "manifest.json"
#: Entries of the document index handled at once; bounds memory for billions of documents.
INDEX_CHUNK = 1 << 22
#: Packed rows per file by default: about 512 MiB of ids.
PACKED_FILE_BYTES = 512 << 20
PARQUET_ROW_GROUP_BYTES = 64 << 20


def trainer_dtype(dtype: str, vocab_size: int) -> str:
    """The signed/Megatron dtype with the same bytes as slimtok's: uint16 stays, uint32 → int32."""
    if dtype == "uint16":
        return "uint16"
    if vocab_size > 2**31:
        raise ExportError(f"vocab_size {vocab_size} has ids ≥ 2^31, which int32 cannot hold")
    return "int32"


def _meta(root: OutputRoot) -> Meta:
    meta = read_meta(root)
    if meta is None or not meta.splits:
        raise ExportError("lists no combined split (missing or unreadable)", root.meta_json,
                          f"run `slimtok combine --output-root {root.root}` first")
    return meta


def _split_bin(root: OutputRoot, meta: Meta, split: str) -> TokenBin:
    if split not in meta.splits:
        raise ExportError(f"split {split} is not combined", root.root,
                          f"run `slimtok combine --output-root {root.root}` first")
    try:
        data = TokenBin(root.combined(split))
    except DataError as exc:
        raise ExportError(str(exc)) from exc
    if data.doc_ends is None:
        raise ExportError("is missing", root.doc_index(split), f"re-run `slimtok combine --output-root {root.root}`")
    return data


# -- Megatron --------------------------------------------------------------------------------

def _link_or_copy(src: Path, tmp: Path) -> str:
    """Make ``tmp`` hold ``src``'s bytes without a user-space copy; returns how."""
    try:
        os.link(src, tmp)
        return "hard link"
    except OSError:  # another filesystem, or links not allowed there
        pass
    require_free(tmp.parent, src.stat().st_size, f"copying {src.name}")
    with open(src, "rb") as s, open(tmp, "xb") as d:
        copy_range(s.fileno(), d.fileno(), 0, os.fstat(s.fileno()).st_size)
        os.fsync(d.fileno())
    return "kernel copy"


def _index_chunks(ends: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(starts, lengths) of consecutive documents, INDEX_CHUNK at a time, as int64."""
    previous = 0
    for lo in range(0, len(ends), INDEX_CHUNK):
        chunk = np.asarray(ends[lo:lo + INDEX_CHUNK]).astype(np.int64)
        starts = np.concatenate([[previous], chunk[:-1]])
        yield starts, chunk - starts
        previous = int(chunk[-1])


def write_megatron_index(path: Path, ends: np.ndarray, dtype: str) -> None:
    """Megatron's .idx for one sequence per document at ``path`` (a new file): header, int32
    lengths, int64 byte pointers, int64 document indices 0..S; streamed in chunks."""
    count = len(ends)
    itemsize = np.dtype(dtype).itemsize
    with open(path, "xb") as f:
        f.write(MEGATRON_MAGIC + struct.pack("<QBQQ", MEGATRON_VERSION, MEGATRON_CODES[dtype], count, count + 1))
        for _starts, lengths in _index_chunks(ends):
            if lengths.size and int(lengths.max()) >= 2**31:
                raise ExportError(f"a document of {int(lengths.max()):,} tokens does not fit Megatron's int32 "
                                  "sequence length", path)
            f.write(lengths.astype("<i4").tobytes())
        for starts, _lengths in _index_chunks(ends):
            f.write((starts * itemsize).astype("<i8").tobytes())
        for lo in range(0, count + 1, INDEX_CHUNK):
            f.write(np.arange(lo, min(lo + INDEX_CHUNK, count + 1), dtype="<i8").tobytes())
        f.flush()
        os.fsync(f.fileno())


def export_megatron(output_root: str | os.PathLike[str], prefix: str, splits: Sequence[str] | None = None,
                    log: Callable[[str], None] = print) -> list[Path]:
    """Write ``<prefix>_<split>_text_document.{bin,idx}`` for each combined split (default: all),
    each pair published together; returns the path prefixes written."""
    root = OutputRoot(output_root)
    meta = _meta(root)
    chosen = list(splits) if splits else [s for s in SPLIT_FILES if s in meta.splits]
    dtype = trainer_dtype(meta.dtype, meta.vocab_size)
    written = []
    for split in chosen:
        data = _split_bin(root, meta, split)
        base = root.megatron_prefix(prefix, split)
        bin_path, idx_path = base.with_name(base.name + ".bin"), base.with_name(base.name + ".idx")
        with PendingSet([bin_path, idx_path]) as pending:
            require_free(bin_path.parent, 20 * len(data.doc_ends) + 64, f"the index of {idx_path.name}")
            how = _link_or_copy(data.path, pending.tmp(bin_path))
            write_megatron_index(pending.tmp(idx_path), data.doc_ends, dtype)
            pending.publish()
        log(f"{base}.{{bin,idx}}: {len(data.doc_ends):,} documents, {len(data):,} tokens as {dtype} "
            f"(code {MEGATRON_CODES[dtype]}), .bin by {how}")
        written.append(base)
    return written


def _mix_sources(root: OutputRoot) -> tuple[str, list[tuple[float, OutputRoot]]]:
    """(split, [(realized token share, source root)]) of a mix root, each source root checked to
    hold, combined, exactly the documents the mix drew from (no `source:` label, no dedup drops)."""
    meta = _meta(root)
    mixed = [(split, info["mix"]) for split, info in meta.splits.items() if "mix" in info]
    if not mixed:
        raise ExportError("has mix.json but no `mix` section in meta.json", root.meta_json,
                          "relaunch the `slimtok mix` command that made it")
    split, section = mixed[0]
    inputs = orjson.loads(root.mix_json.read_bytes())["inputs"]
    total = sum(r["tokens"] for r in section.values())
    out = []
    for name, realized in section.items():
        source = OutputRoot(inputs[name]["root"])
        info = _meta(source).splits.get(split)
        combined = info.get("tokens") if info else None
        if combined != inputs[name]["available_tokens"]:
            raise ExportError(f"mix source {name!r} drew from {inputs[name]['available_tokens']:,} tokens of its root, "
                              f"but the root's combined {split} split holds {combined if combined is None else f'{combined:,}'}",
                              source.meta_json, "a Megatron list names whole combined roots: combine the root "
                              "(with --dedup if the mix honoured its drop lists), or mix whole roots without "
                              "`source:` and `dedup: true`")
        out.append((realized["tokens"] / total, source))
    return split, out


def export_data_args(output_roots: Sequence[str | os.PathLike[str]], prefix: str, path: str | os.PathLike[str],
                     splits: Sequence[str] | None = None, log: Callable[[str], None] = print) -> list[tuple[float, Path]]:
    """Export the roots a Megatron blend should read and write ``path``, a ``--data-args-path``
    file: ``weight prefix weight prefix ...`` on one line. For one mix root, the mix's sources
    weighted by their realized token shares (meta.json's ``mix`` section); for several plain
    roots, each weighted by its split's token count. Returns the (weight, prefix) pairs."""
    roots = [OutputRoot(r) for r in output_roots]
    if any(r.mix_json.exists() for r in roots):
        if len(roots) > 1:
            raise ExportError("a mix root goes alone to --data-args-path", roots[0].root,
                              "give one mix root, or only plain roots")
        split, weighted = _mix_sources(roots[0])
    else:
        split = "train"
        weighted = [(len(_split_bin(r, _meta(r), split)), r) for r in roots]
    chosen = list(splits) if splits else [split]
    if split not in chosen:
        raise ExportError(f"--splits {','.join(chosen)} leaves out {split}, the split the list names", Path(path))
    pairs = []
    for weight, root in weighted:
        export_megatron(root.root, prefix, chosen, log)
        pairs.append((weight, root.megatron_prefix(prefix, split)))
    write_atomic(Path(path), (" ".join(f"{w!r} {p}" for w, p in pairs) + "\n").encode())
    log(f"{path}: {len(pairs)} prefixes weighted by " + ("realized token shares" if roots[0].mix_json.exists()
                                                          else "their tokens"))
    return pairs


# -- packed rows -----------------------------------------------------------------------------

def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            h.update(block)
    return h.hexdigest()


def _write_npy(tmp: Path, rows: np.ndarray) -> None:
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=rows.dtype, shape=rows.shape)
    step = max(1, PARQUET_ROW_GROUP_BYTES // max(1, rows.shape[1] * rows.itemsize))
    for lo in range(0, len(rows), step):
        out[lo:lo + step] = rows[lo:lo + step]
    out.flush()
    del out
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())


def _write_parquet(tmp: Path, rows: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    seq_len = rows.shape[1]
    schema = pa.schema([pa.field("input_ids", pa.list_(pa.from_numpy_dtype(rows.dtype), seq_len))])
    step = max(1, PARQUET_ROW_GROUP_BYTES // max(1, seq_len * rows.itemsize))
    with pq.ParquetWriter(tmp, schema) as writer:
        for lo in range(0, len(rows), step):
            block = np.ascontiguousarray(rows[lo:lo + step])
            column = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), seq_len)
            writer.write_table(pa.table({"input_ids": column}, schema=schema))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())


def export_packed(output_root: str | os.PathLike[str], seq_len: int, fmt: str = "parquet", split: str = "train",
                  output_dir: str | os.PathLike[str] | None = None, rows_per_file: int | None = None,
                  log: Callable[[str], None] = print) -> Path:
    """Cut ``split`` into rows of ``seq_len`` tokens and write them in ``fmt``, the parts and their
    manifest published together; returns the manifest."""
    if fmt not in PACKED_FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(PACKED_FORMATS)}")
    if seq_len < 1:
        raise ExportError(f"seq_len must be positive, got {seq_len}")
    root = OutputRoot(output_root)
    meta = _meta(root)
    data = _split_bin(root, meta, split)
    dtype = trainer_dtype(meta.dtype, meta.vocab_size)
    total_rows = len(data) // seq_len
    if total_rows == 0:
        raise ExportError(f"{len(data)} tokens, fewer than one row of {seq_len}", data.path)
    rows = data.tokens[:total_rows * seq_len].view(dtype).reshape(total_rows, seq_len)
    per_file = rows_per_file or max(1, PACKED_FILE_BYTES // (seq_len * rows.itemsize))
    folder = Path(output_dir) if output_dir else root.packed_dir(split, seq_len, fmt)
    writer = _write_parquet if fmt == "parquet" else _write_npy
    manifest_path = folder / PACKED_MANIFEST
    files = []
    with PendingSet([manifest_path]) as pending:  # the manifest is renamed last, old one removed first
        pending.partners.append(manifest_path)
        remove_stale(folder, [f"part-*.{fmt}"])  # temporary parts of a killed export, whatever their number
        require_free(folder, rows.nbytes + (64 << 10), f"packing {data.path.name}")
        for number, lo in enumerate(range(0, total_rows, per_file)):
            path = folder / f"part-{number:05d}.{fmt}"
            part = rows[lo:lo + per_file]
            pending.add(path, partner=False)
            tmp = pending.tmp(path)
            writer(tmp, part)
            files.append({"file": path.name, "first_row": lo, "rows": len(part), "bytes": tmp.stat().st_size,
                          "sha256": _file_sha256(tmp)})
        info = meta.splits[split]
        manifest = {"format": fmt, "seq_len": seq_len, "dtype": dtype, "split": split, "source": data.path.name,
                    "source_sha256": info.get("sha256"), "source_tokens": len(data), "rows": total_rows,
                    "dropped_tail_tokens": len(data) - total_rows * seq_len, "eos_token_id": meta.eos_token_id,
                    "tokenizer_sha256": meta.tokenizer_sha256, "files": files}
        with open(pending.tmp(manifest_path), "xb") as f:
            f.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        listed = {f["file"] for f in files}
        pending.publish(obsolete=[p for p in folder.glob(f"part-*.{fmt}") if p.name not in listed])
    log(f"{folder}: {total_rows:,} rows of {seq_len} tokens in {len(files)} {fmt} file(s), "
        f"{manifest['dropped_tail_tokens']:,} trailing tokens dropped")
    return manifest_path
