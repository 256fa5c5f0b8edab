"""``slimtok status``: a job's progress from the files of its output root alone.

:mod:`.collect` reads the root into a :class:`JobStatus` (:mod:`.model`), :mod:`.text` and
:mod:`.prometheus` show it, :mod:`.stages` is where later stages (dedup) add their progress.
The page (``--serve``, ``--html``): :mod:`.page` builds its view (with :mod:`.history`'s
throughput over time), :mod:`.template` draws it, :mod:`.serve` serves or writes it; it never
writes under the root (:class:`.collect.ReadOnly`).
"""

from .collect import WINDOW, collect_status, done_rows, journal_rows, latest_run
from .model import DiskStatus, JobStatus, SplitStatus, StageStatus, Throughput, WorkerStatus
from .prometheus import prometheus_text, write_prometheus
from .text import format_status

__all__ = ["WINDOW", "DiskStatus", "JobStatus", "SplitStatus", "StageStatus", "Throughput", "WorkerStatus",
           "collect_status", "done_rows", "format_status", "journal_rows", "latest_run",
           "prometheus_text", "write_prometheus"]
