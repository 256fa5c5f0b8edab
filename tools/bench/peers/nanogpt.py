"""A nanoGPT-style prepare of the job's shards: ``python -m tools.bench.peers.nanogpt job.json``.

datasets' json loader (it decompresses .zst itself) over ``files``, ``map(num_proc)`` with tokens +
eos per document, then one uint32 memmap ``out`` filled slice by slice; the report (see driver.py).
The tokenizer treats special-token strings in text as text, like tiktoken's encode_ordinary in
nanoGPT. The parsed dataset is cached under ``cache``.
"""

import time

from .driver import load_job, report, usage


def main() -> None:
    job = load_job()
    import numpy as np
    from datasets import load_dataset
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(job["tokenizer_json"])
    tok.encode_special_tokens = True
    eos = job["eos_id"]

    def tokenize(row: dict) -> dict:
        ids = tok.encode(row["text"], add_special_tokens=False).ids
        ids.append(eos)
        return {"ids": ids, "n": len(ids)}

    cpu0, _ = usage()
    t0 = time.time()
    ds = load_dataset("json", data_files=job["files"], split="train", cache_dir=job["cache"], num_proc=job["procs"])
    ds = ds.map(tokenize, remove_columns=ds.column_names, num_proc=job["procs"])
    out = np.memmap(job["out"], dtype=np.uint32, mode="w+", shape=(int(np.sum(ds["n"], dtype=np.int64)),))
    at, parts = 0, 32
    for i in range(parts):
        piece = ds.shard(num_shards=parts, index=i, contiguous=True).with_format("numpy")
        flat = np.concatenate(list(piece["ids"]))
        out[at:at + flat.size] = flat
        at += flat.size
    out.flush()
    report(job, time.time() - t0, cpu0)


if __name__ == "__main__":
    main()
