"""A worker process (forked or spawned by its launcher): its death signal, log file and signal handlers."""

from __future__ import annotations

import ctypes
import logging
import os
import signal

from ..errors import EXIT_FATAL, SlimtokError
from ..job import TokenizeSettings
from ..protocol import OutputRoot
from ..tokenizer import LoadedBackends
from .loop import Worker


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the launching process dies, so no orphan keeps a claim alive."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _setup_logging(root: OutputRoot, name: str) -> None:
    path = root.log(name)
    root.storage.make_folders(root.logs_dir)
    handler = logging.FileHandler(path)  # logging appends to the log itself
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter(f"[{name}] %(levelname)s %(message)s"))
    logger = logging.getLogger("slimtok")
    logger.handlers[:] = [handler, console]
    logger.setLevel(logging.INFO)


def worker_main(settings: TokenizeSettings, worker_index: int, parent_pid: int | None = None,
                loaded: LoadedBackends | None = None) -> int:
    """Entry point of a worker process; returns its exit status. ``loaded``: the tokenizers its
    launcher loaded before forking it (:func:`slimtok.worker.preload`)."""
    if parent_pid is not None:
        _die_with_parent()
        if os.getppid() != parent_pid:
            return EXIT_FATAL  # the parent died before we could arm the death signal
    try:
        worker = Worker(settings, worker_index, loaded)
    except (SlimtokError, OSError, ValueError) as exc:
        logging.getLogger("slimtok").error("worker %d cannot start: %s", worker_index, exc)
        return EXIT_FATAL
    _setup_logging(worker.root, worker.name)

    def on_signal(signum: int, _frame: object) -> None:
        worker.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return worker.run()
