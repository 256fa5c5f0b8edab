"""datatrove's DocumentTokenizer on the job's shards: ``python -m tools.bench.peers.datatrove job.json``.

Reads the shards through JsonlReader (``data_folder`` and the ``relative_paths`` written to
``paths_file``); writes datatrove's .ds/.ds.index files to ``out`` (eos appended by its
post-processor, no shuffling), one task per process, and the report (see driver.py). "fork", so
that the pool workers are this process's children and their CPU is counted.
"""

import time
from pathlib import Path

from .driver import load_job, report, usage


def main() -> None:
    job = load_job()
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    Path(job["paths_file"]).write_text("\n".join(job["relative_paths"]) + "\n")
    steps = [JsonlReader(job["data_folder"], paths_file=job["paths_file"], doc_progress=False),
             DocumentTokenizer(job["out"], tokenizer_name_or_path=job["tokenizer_json"], eos_token=job["eos_token"],
                               save_filename="tokens", shuffle_documents=False)]
    executor = LocalPipelineExecutor(steps, tasks=job["procs"], workers=job["procs"], logging_dir=job["logs"],
                                     start_method="fork")
    cpu0, _ = usage()
    t0 = time.time()
    executor.run()
    report(job, time.time() - t0, cpu0)


if __name__ == "__main__":
    main()
