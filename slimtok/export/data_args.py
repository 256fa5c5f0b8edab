"""Megatron blend: the Megatron files of each root of a blend and a ``--data-args-path`` file.

Reads ``meta.json`` of each root (and ``mix.json`` of a mix root); writes the list file,
``weight prefix`` pairs on one line (a mix's sources at their realized token shares, or several
plain roots at their token counts), and each source's Megatron files (:mod:`.megatron`) beside it,
never into a source root: ``<prefix>_<name>_<split>_text_document`` with a relative prefix taken
from the list file's folder, ``name`` the mix source's name or the plain root's folder name. A mix
source is listed only when its root, combined, holds exactly the documents the mix drew from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from ..errors import ExportError
from ..protocol import OutputRoot, write_atomic
from .megatron import export_megatron
from .source import combined_meta, split_bin


def _mix_sources(root: OutputRoot) -> tuple[str, list[tuple[float, str, OutputRoot]]]:
    """(split, [(realized token share, source name, source root)]) of a mix root, each source root checked to
    hold, combined, exactly the documents the mix drew from (no `source:` label, no dedup drops)."""
    meta = combined_meta(root)
    mixed = [(split, info["mix"]) for split, info in meta.splits.items() if "mix" in info]
    if not mixed:
        raise ExportError("has mix.json but no `mix` section in meta.json", root.meta_json,
                          "relaunch the `slimtok mix` command that made it")
    split, section = mixed[0]
    inputs = orjson.loads(root.storage.read_whole(root.mix_json))["inputs"]
    total = sum(r["tokens"] for r in section.values())
    out = []
    for name, realized in section.items():
        source = OutputRoot(inputs[name]["root"])
        info = combined_meta(source).splits.get(split)
        combined = info.get("tokens") if info else None
        if combined != inputs[name]["available_tokens"]:
            holds = combined if combined is None else f"{combined:,}"
            raise ExportError(f"mix source {name!r} drew from {inputs[name]['available_tokens']:,} tokens of its root, "
                              f"but the root's combined {split} split holds {holds}",
                              source.meta_json, "a Megatron list names whole combined roots: combine the root "
                              "(with --dedup if the mix honoured its drop lists), or mix whole roots without "
                              "`source:` and `dedup: true`")
        out.append((realized["tokens"] / total, name, source))
    return split, out


def export_data_args(output_roots: Sequence[str | os.PathLike[str]], prefix: str, path: str | os.PathLike[str],
                     splits: Sequence[str] | None = None,
                     log: Callable[[str], None] = print) -> list[tuple[float, Path]]:
    """Export the roots a Megatron blend should read and write ``path``, a ``--data-args-path``
    file: ``weight prefix weight prefix ...`` on one line. For one mix root, the mix's sources
    weighted by their realized token shares (meta.json's ``mix`` section); for several plain
    roots, each weighted by its split's token count. The Megatron files go under ``prefix`` (a
    relative one in ``path``'s folder), one name per source; no source root is written to.
    Returns the (weight, prefix) pairs."""
    roots = [OutputRoot(r) for r in output_roots]
    if any(r.storage.exists(r.mix_json) for r in roots):
        if len(roots) > 1:
            raise ExportError("a mix root goes alone to --data-args-path", roots[0].root,
                              "give one mix root, or only plain roots")
        split, weighted = _mix_sources(roots[0])
    else:
        split = "train"
        names = [r.root.name for r in roots]
        # a folder name two roots share gets each root's position, so no export replaces another's
        weighted = [(len(split_bin(r, combined_meta(r), split)), f"{n}-{i}" if names.count(n) > 1 else n, r)
                    for i, (n, r) in enumerate(zip(names, roots, strict=True))]
    chosen = list(splits) if splits else [split]
    if split not in chosen:
        raise ExportError(f"--splits {','.join(chosen)} leaves out {split}, the split the list names", Path(path))
    base = Path(prefix) if Path(prefix).is_absolute() else Path(path).absolute().parent / prefix
    pairs = []
    for weight, name, root in weighted:
        source_prefix = str(base.with_name(f"{base.name}_{name}"))  # absolute: outside every source root
        export_megatron(root.root, source_prefix, chosen, log)
        pairs.append((weight, root.megatron_prefix(source_prefix, split)))
    write_atomic(Path(path), (" ".join(f"{w!r} {p}" for w, p in pairs) + "\n").encode())
    mixed = roots[0].storage.exists(roots[0].mix_json)
    log(f"{path}: {len(pairs)} prefixes weighted by " + ("realized token shares" if mixed else "their tokens"))
    return pairs
