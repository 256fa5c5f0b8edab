"""Step 5: tokenize claimed shards into per-shard token files and document tables.

``task`` holds one shard's flow (records -> batches -> encode -> write -> checkpoint -> commit),
``loop`` the worker process that claims shards (through :func:`slimtok.executor.run_units`) and
commits on a background thread, ``heartbeat`` its heartbeat file, ``main`` the worker process's
entry point; ``batches`` the batching rule, ``files`` the part
files, ``stats`` running totals and the status journal.
"""

from .batches import BATCH_CHARS, BATCH_DOCS, batched
from .loop import Worker, preload
from .main import worker_main
from .task import ShardTask, TaskContext

__all__ = ["BATCH_CHARS", "BATCH_DOCS", "batched", "Worker", "preload", "worker_main", "ShardTask", "TaskContext"]
