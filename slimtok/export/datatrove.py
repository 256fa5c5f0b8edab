"""datatrove / nanotron: a combined split as datatrove's tokenized files, its bytes linked, not rewritten.

Reads ``meta.json``, ``<split>.bin`` and ``<split>.idx`` of an output root (after ``combine``);
writes, in a folder of its own per split (:meth:`~slimtok.protocol.OutputRoot.export_dir`, which
datatrove's ``DatatroveFolderDataset`` and nanotron's Nanoset list whole):

* ``<split>.ds``: the token ids, little-endian uint16 or uint32 (datatrove's token size 2 or 4),
  which is ``<split>.bin`` byte for byte: a hard link (a kernel copy across filesystems);
* ``<split>.ds.index``: the document ends in tokens, uint64, which is ``<split>.idx``: linked too;
* ``<split>.ds.metadata``: ``<tokenizer>|<token size>``, the token count, and the count for people.

Published as one set with the folder's export record (:mod:`.folder`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..protocol import OutputRoot
from .folder import ExportFolder, link_or_copy
from .source import combined_meta, exported_splits

DATATROVE = "datatrove"


def _metadata(tokenizer: str, token_size: int, tokens: int) -> bytes:
    """datatrove's ``.ds.metadata``: ``name|token size``, the token count, and that count for people."""
    short = f"{tokens} T"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if tokens >= scale:
            short = f"{tokens / scale:.2f} {unit}T"
            break
    return f"{tokenizer}|{token_size}\n{tokens}\n{short}".encode()


def export_datatrove(output_root: str | os.PathLike[str], prefix: str, splits: Sequence[str] | None = None,
                     log: Callable[[str], None] = print, verify: str = "sample") -> list[Path]:
    """Write each combined split (default: all) as ``<split>.ds`` + ``.ds.index`` + ``.ds.metadata``
    in its own folder; returns the folders. The token size is the split's dtype width, which the
    reader must be given (``token_size=``). ``verify``: how much of
    the split is checked against its records first (:func:`slimtok.finished.verify_split`)."""
    root = OutputRoot(output_root)
    meta = combined_meta(root)
    written = []
    for split, data in exported_splits(root, meta, splits, verify, log):
        folder = root.export_dir(DATATROVE, prefix, split)
        ds = f"{folder.name}.ds"
        token_size = data.tokens.dtype.itemsize
        with ExportFolder(folder, DATATROVE, [ds, f"{ds}.index", f"{ds}.metadata"]) as out:
            how = link_or_copy(data.path, out.tmp(ds))
            link_or_copy(root.doc_index(split), out.tmp(f"{ds}.index"))
            out.write(f"{ds}.metadata", _metadata(meta.tokenizer or "unknown tokenizer", token_size, len(data)))
            out.publish()
        log(f"{folder}: {ds} ({len(data):,} tokens, token_size={token_size}) and its index of "
            f"{len(data.doc_ends) if data.doc_ends is not None else 0:,} documents, by {how}")
        written.append(folder)
    return written
