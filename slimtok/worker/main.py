"""A worker process (forked or spawned by its launcher): its log file and signal handlers."""

from __future__ import annotations

import io
import logging
import signal

from ..errors import EXIT_FATAL, OutputError, SlimtokError
from ..job import Job
from ..protocol import OutputRoot
from ..tokenizer import LoadedBackends
from .loop import Worker


def _setup_logging(root: OutputRoot, name: str) -> None:
    path = root.log(name)
    root.storage.make_folders(root.logs_dir)
    # not logging.FileHandler: its open() would append through a link planted at the log's name
    handler = logging.StreamHandler(io.TextIOWrapper(root.storage.open_write(path, "append"), encoding="utf-8"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter(f"[{name}] %(levelname)s %(message)s"))
    logger = logging.getLogger("slimtok")
    logger.handlers[:] = [handler, console]
    logger.setLevel(logging.INFO)


def worker_main(job: Job, worker_index: int, loaded: LoadedBackends | None = None, generation: int = 0) -> int:
    """Entry point of a worker process (started by :class:`slimtok.executor.NodeRun`, which ties
    its life to the launcher's); returns its exit status. ``loaded``: the tokenizers its launcher
    loaded before forking it (:func:`slimtok.worker.preload`); ``generation``: 0, or how many
    killed workers this one replaces in its slot."""
    try:
        worker = Worker(job, worker_index, loaded, generation)
    except (SlimtokError, OSError, ValueError) as exc:
        logging.getLogger("slimtok").error("worker %d cannot start: %s", worker_index, exc)
        return EXIT_FATAL
    try:
        _setup_logging(worker.root, worker.name)
    except SlimtokError as exc:  # a link planted at its log: refused, named, and nothing else run
        logging.getLogger("slimtok").error("%s cannot start: %s", worker.name, exc)
        return EXIT_FATAL

    def on_signal(signum: int, _frame: object) -> None:
        worker.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return worker.run()
    except OutputError as exc:  # its first heartbeat refused (a link planted there): the loop never started
        logging.getLogger("slimtok").error("%s: %s", worker.name, exc)
        return EXIT_FATAL
