"""What :class:`~slimtok.data.TokenBlocks` and :class:`~slimtok.data.MixedBlocks` share as readers
in a training loop: which reader this copy is (rank × DataLoader worker), and its resumable
position in the epoch.

Every copy of a reader (the object in the main process, one per DataLoader worker) counts its own
``position``. torch's DataLoader gives each worker a copy and never asks it for its position, so
the main process's object stays at the epoch's start: only a loader that asks every worker for its
state (torchdata's ``StatefulDataLoader``, whose ``state_dict()`` holds each worker's) can resume
mid-epoch with workers. StatefulDataLoader asks each worker's copy for its state before the copy
yields anything; a worker copy that starts iterating without having been asked in its own process
is in a loader that will not save its position (torch's plain DataLoader), and says so once by a
:class:`PositionNotSaved` warning.
"""

from __future__ import annotations

import os
import sys
import warnings

from ..errors import DataError


class PositionNotSaved(UserWarning):
    """A DataLoader worker iterates a reader whose position no one asks for: a restart replays."""


class Resumable:
    """(epoch, position) with state_dict / load_state_dict, and the reader layout they are valid for.

    Subclasses set ``rank``, ``world_size``, ``worker``, ``num_workers`` and define
    :meth:`_reader_index`; ``state_dict()`` is ``{epoch, position, reader, readers}`` and
    ``load_state_dict`` refuses a state saved by another reader of another layout (another
    world_size or num_workers would share the draws out differently: resuming it would repeat
    some draws and drop others). A state without ``reader``/``readers`` (saved before they were
    recorded) is taken as it is.
    """

    rank: int
    world_size: int
    worker: int
    num_workers: int
    epoch: int
    position: int
    #: the pid in which state_dict() was last called: a DataLoader worker asked for its state
    _state_pid: int | None = None

    def _worker(self) -> tuple[int, int]:
        """(worker index, worker count): torch's DataLoader's when this runs in one of its workers
        (torch is then imported), else the ``worker``/``num_workers`` given."""
        torch = sys.modules.get("torch")
        info = torch.utils.data.get_worker_info() if torch is not None else None
        return (info.id, info.num_workers) if info is not None else (self.worker, self.num_workers)

    def _state_path(self) -> str | os.PathLike[str]:
        """The file a refused state is reported against (the data this reader reads)."""
        raise NotImplementedError

    def _reader_index(self, worker: int, workers: int) -> int:
        """This copy's reader index among ``world_size * workers`` readers."""
        raise NotImplementedError

    def reader(self) -> tuple[int, int]:
        """(this copy's reader index, number of readers) = over ranks × DataLoader workers."""
        worker, workers = self._worker()
        return self._reader_index(worker, workers), self.world_size * workers

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first draw."""
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        self._state_pid = os.getpid()
        reader, readers = self.reader()
        return {"epoch": self.epoch, "position": self.position, "reader": reader, "readers": readers}

    def load_state_dict(self, state: dict[str, int]) -> None:
        reader, readers = self.reader()
        saved = (state.get("reader", reader), state.get("readers", readers))
        if saved != (reader, readers):
            raise DataError(f"a state saved by reader {saved[0]} of {saved[1]} (ranks × DataLoader workers) cannot "
                            f"resume reader {reader} of {readers}: the draws would be shared out differently",
                            self._state_path(), "resume with the world_size and num_workers the state was saved with")
        self.set_epoch(int(state["epoch"]))
        self.position = int(state["position"])

    def _warn_if_unsaved(self) -> None:
        """In a DataLoader worker whose loader never asked this copy for its state: warn, once."""
        torch = sys.modules.get("torch")
        info = torch.utils.data.get_worker_info() if torch is not None else None
        if info is None or self._state_pid == os.getpid():
            return
        self._state_pid = os.getpid()  # once per worker copy
        warnings.warn(f"{type(self).__name__} runs in DataLoader worker {info.id} of a loader that never asks its "
                      "workers for their position (torch's plain DataLoader): state_dict() in the main process "
                      "stays at the epoch's start and a restart replays the epoch; use "
                      "torchdata.stateful_dataloader.StatefulDataLoader to resume mid-epoch", PositionNotSaved,
                      stacklevel=3)
