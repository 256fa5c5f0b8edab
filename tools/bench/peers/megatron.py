"""One of Megatron-LM's preprocessing scripts: ``python -m tools.bench.peers.megatron job.json``.

Runs ``script`` (tools/preprocess_data.py or preprocess_data_fast.py of the user's checkout
``megatron_dir``) by its own main() with ``args``, after its imports (untimed, like the other
peers'); writes the report (see driver.py). The checkout goes first on sys.path (its
megatron.core must win over an installed one), and the script is loaded under its own module name,
since its pool workers unpickle its Encoder by module name.
"""

import importlib.util
import sys
import time

from .driver import load_job, report, usage


def main() -> None:
    job = load_job()
    sys.path.insert(0, job["megatron_dir"])
    spec = importlib.util.spec_from_file_location("megatron_preprocess", job["script"])
    assert spec is not None and spec.loader is not None, job["script"]
    tool = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tool
    spec.loader.exec_module(tool)
    sys.argv = [job["script"], *job["args"]]
    cpu0, _ = usage()
    t0 = time.time()
    tool.main()
    report(job, time.time() - t0, cpu0)


if __name__ == "__main__":
    main()
