"""The loader's batch time with document masks vs without (issue 25: at most 5% extra).

    python3 -m tools.bench.loader --work /tmp/slimtok-bench [--block-size 2048] [--batch-size 8]

(from the checkout's root). Writes a synthetic finished root (``slimtok.testing.synthetic_root``:
documents of uniformly 1..--max-doc-tokens tokens, sparse token files) under
``--work/loader-<docs>-<max>``, combines it once (kept for the next run), then times batches of
``TorchTokenBlocks`` (seeded order) through torch's DataLoader in this process (num_workers=0, so
the time is the loader's own, not a worker's hand-over; process CPU time, one torch thread):
without masks (default collate of (x, y)), with ``cu_seqlens`` alone, with ``position_ids`` +
``cu_seqlens`` (both through ``slimtok.data.collate``), and with all of
``slimtok.data.FIELDS`` (the dense ``attention_mask`` is block_size² booleans per window, so it is
reported apart). Each contender runs --runs times, in turns; medians are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

#: the contenders: name -> document fields asked for (None: plain (x, y) items)
CONTENDERS: dict[str, tuple[str, ...] | None] = {
    "no masks": None,
    "cu_seqlens": ("cu_seqlens",),
    "position_ids + cu_seqlens": ("position_ids", "cu_seqlens"),
    "all (+ attention_mask)": ("position_ids", "cu_seqlens", "attention_mask"),
}


def bench_root(work: Path, documents: int, max_doc_tokens: int) -> Path:
    """A combined synthetic root of ``documents`` documents of uniformly 1..max_doc_tokens tokens."""
    from slimtok.combine import combine
    from slimtok.testing import synthetic_root

    folder = work / f"loader-{documents}-{max_doc_tokens}"
    if not (folder / "train.idx").exists():
        synthetic_root(folder, 10, documents // 10, tokens=(1, max_doc_tokens), holdout=False, data=True,
                       checksums=False)
        combine(folder, verify=False, log=lambda s: None)
    return folder


def seconds_per_batch(root: Path, fields: tuple[str, ...] | None, block_size: int, batch_size: int,
                      batches: int) -> float:
    """CPU seconds of this process per batch over ``batches`` batches (the first one, which opens the
    files, excluded). CPU, not wall: on a shared host the wall clock counts other processes' turns."""
    import torch

    from slimtok.data import TorchTokenBlocks, collate

    dataset = TorchTokenBlocks(root / "train.bin", block_size, seed=0, doc_masks=fields or ())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate if fields else None)
    it = iter(loader)
    next(it)
    began = time.process_time()
    for _ in range(batches):
        next(it)
    return (time.process_time() - began) / batches


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.loader", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/slimtok-bench", help="scratch folder (the synthetic root is kept)")
    ap.add_argument("--documents", type=int, default=200_000)
    ap.add_argument("--max-doc-tokens", type=int, default=2000)
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # one thread, so that process CPU time is the loader's work alone
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    root = bench_root(work, args.documents, args.max_doc_tokens)
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(args.runs):
        for name, fields in CONTENDERS.items():
            times[name].append(seconds_per_batch(root, fields, args.block_size, args.batch_size, args.batches))
    base = statistics.median(times["no masks"])
    load = os.getloadavg()[0]
    print(f"loader: {args.batches} batches of {args.batch_size} x {args.block_size} tokens, documents of 1.."
          f"{args.max_doc_tokens} tokens, {args.runs} runs, {os.cpu_count()} cores, load average {load:.2f}")
    print(f"{'contender':28} {'CPU ms/batch':>12} {'vs no masks':>12}")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"{name:28} {median * 1e3:>12.3f} {median / base - 1:>+11.1%}")


if __name__ == "__main__":
    main()
