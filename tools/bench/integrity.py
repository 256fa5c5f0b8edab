"""Integrity on read (issue 24, item 4): what each checked read costs next to the work it guards.

Writes one synthetic finished root (``slimtok.testing.synthetic_root`` with token data: sparse
files, so the reads run at memory speed and the numbers are the checks' CPU, not a disk's) of about
``mb`` MB of tokens under ``--work/integrity``, combines it, and times, median of ``runs``: a mix's
check of every source shard it copies from (sha256 against the done records) against the mix's
own write; export's data check ``verify="all"`` and ``"sample"``; the checked index read against
the bare memory map; the checked document-table reads against bare reads. Removed afterwards.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from .harness import Table

#: Tokens of a synthetic document: uniform in [1, 2000] (uint16: ~2 KB, a web document's size).
DOC_TOKENS = (1, 2000)


def _median_seconds(run: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def bench_integrity(table: Table, work: Path, mb: int, runs: int) -> None:
    from slimtok.combine import combine
    from slimtok.finished import checked_table, verify_split
    from slimtok.manifest import read_manifest
    from slimtok.mix import load_spec, mix
    from slimtok.mix.inputs import load_source
    from slimtok.protocol import DoneRecord, read_doc_table, read_record
    from slimtok.protocol.docindex import read_checked_index, read_doc_index
    from slimtok.testing import synthetic_root

    folder = work / "integrity"
    shutil.rmtree(folder, ignore_errors=True)
    shards, docs = 64, max(1, (mb << 20) // (64 * 2 * 1000))
    root = synthetic_root(folder / "root", shards, docs, tokens=DOC_TOKENS, holdout=False, data=True)
    combine(root.root, log=lambda s: None)
    entries = read_manifest(root.manifest, check_files=False)
    records = [r for e in entries if (r := read_record(root.done(e.id), DoneRecord)) is not None]
    data_mb = sum(r.bytes for r in records) / 1e6
    meta_entry = orjson.loads(root.storage.read_whole(root.meta_json))["splits"]["train"]
    rows: list[tuple[str, Callable[[], object], float]] = [
        ("export data check, verify=all (sha256 of every shard's range)",
         lambda: verify_split(root, entries, "train", meta_entry, "all"), data_mb),
        ("export data check, verify=sample (4 ranges)",
         lambda: verify_split(root, entries, "train", meta_entry, "sample"), data_mb)]
    idx = root.doc_index("train")
    idx_mb = root.storage.stat(idx).size / 1e6
    tokens = meta_entry["tokens"]
    rows += [("index: checked read (size, last end, xxh3-128 of the whole file)",
              lambda: read_checked_index(idx, meta_entry["documents"], tokens, meta_entry["index_checksum"], ""),
              idx_mb),
             ("index: bare memory map (before)", lambda: read_doc_index(idx), idx_mb)]
    tables_mb = sum(r.table_bytes for r in records) / 1e6
    rows += [("tables: checked reads (sha256, sums, per-source counts)",
              lambda: [checked_table(root, r) for r in records], tables_mb),
             ("tables: bare reads (before)", lambda: [read_doc_table(root.resolve(r.table))["tokens"].sum()
                                                      for r in records], tables_mb)]
    spec = folder / "mix.yaml"
    spec.write_text(f"seed: 1\nshuffle: none\nsources:\n  - {{name: s, root: {root.root}, "
                    f"tokens: {sum(r.tokens for r in records)}}}\n")
    docs_of = load_source(load_spec(spec).sources[0], "train")[0]
    def check_sources() -> None:
        for k in range(len(docs_of.shards)):
            docs_of.verify(k)

    rows.append(("mix: source check of every shard (sha256, before any copy)", check_sources, data_mb))

    def whole_mix() -> None:
        shutil.rmtree(folder / "mixed", ignore_errors=True)
        mix(load_spec(spec), folder / "mixed", 1)

    rows.append(("mix: the whole write, source check included (1 worker, shuffle none)", whole_mix, data_mb))
    for what, run, size in rows:
        seconds = _median_seconds(run, runs)
        table.note(f"integrity: {what}: {size:,.1f} MB in {seconds:.3f} s = {size / seconds:,.0f} MB/s "
                   f"(median of {runs})")
    shutil.rmtree(folder)
