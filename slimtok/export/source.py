"""The combined split every export reads, and the dtype a trainer reads it in.

Reads ``meta.json`` (through :func:`slimtok.finished.read_meta`), ``<split>.bin`` and
``<split>.idx`` of an output root; writes nothing. An export refuses a root whose meta lists no
combined split, or a split without its document index, with an :class:`~slimtok.errors.ExportError`
saying to run combine.
"""

from __future__ import annotations

from ..data import TokenBin
from ..errors import DataError, ExportError
from ..finished import read_meta, verify_split
from ..manifest import read_manifest
from ..protocol import Meta, OutputRoot, splits_command


def trainer_dtype(dtype: str, vocab_size: int) -> str:
    """The signed/Megatron dtype with the same bytes as slimtok's: uint16 stays, uint32 → int32."""
    if dtype == "uint16":
        return "uint16"
    if vocab_size > 2**31:
        raise ExportError(f"vocab_size {vocab_size} has ids ≥ 2^31, which int32 cannot hold")
    return "int32"


def combined_meta(root: OutputRoot) -> Meta:
    """The root's meta, which must list at least one combined split."""
    meta = read_meta(root)
    if meta is None or not meta.splits:
        raise ExportError("lists no combined split (missing or unreadable)", root.meta_json,
                          f"{splits_command(root)} first")
    return meta


def split_bin(root: OutputRoot, meta: Meta, split: str, verify: str = "sample") -> TokenBin:
    """``split``'s combined file with its document index, as :class:`~slimtok.data.TokenBin` reads them,
    after checking the file against its records (``verify``: "all" or "sample" ranges,
    :func:`slimtok.finished.verify_split`; the index is always checked whole)."""
    if split not in meta.splits:
        raise ExportError(f"split {split} is not combined", root.root, f"{splits_command(root)} first")
    verify_split(root, read_manifest(root.manifest, check_files=False), split, meta.splits[split], verify)
    try:
        data = TokenBin(root.combined(split))
    except DataError as exc:
        raise ExportError(str(exc)) from exc
    if data.doc_ends is None:
        raise ExportError("is missing", root.doc_index(split), splits_command(root))
    return data
