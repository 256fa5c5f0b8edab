"""The combined split every export reads, and the dtype a trainer reads it in.

Reads ``meta.json`` (through :func:`slimtok.finished.read_meta`), ``<split>.bin`` and
``<split>.idx`` of an output root; writes nothing. An export refuses a root whose meta lists no
combined split, or a split without its document index, with an :class:`~slimtok.errors.ExportError`
saying to run combine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from ..data import TokenBin
from ..errors import DataError, ExportError
from ..finished import read_meta, verify_split
from ..manifest import read_manifest
from ..protocol import Meta, OutputRoot, splits_command
from .folder import chosen_splits


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


def exported_splits(root: OutputRoot, meta: Meta, splits: Sequence[str] | None, verify: str,
                    log: Callable[[str], None], minimum: int = 0, need: str = "",
                    fix: str = "") -> Iterator[tuple[str, TokenBin]]:
    """``(split, data)`` for each split an export writes: ``splits`` (default: every combined one),
    each read through :func:`split_bin`. A split of fewer than ``minimum`` tokens (``need`` says
    why, e.g. "one row of 4,096") is refused when the user named it, and otherwise left out with
    a line in ``log``; ``fix`` is appended to the advice (e.g. ", or a smaller --seq-len")."""
    for split in chosen_splits(meta, splits):
        data = split_bin(root, meta, split, verify)
        if len(data) >= minimum:
            yield split, data
            continue
        why = f"has {len(data):,} tokens, fewer than {need}"
        if splits:
            raise ExportError(why, data.path, f"leave {split} out of --splits{fix}")
        log(f"{data.path}: {why}; not exported")
