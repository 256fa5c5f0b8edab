"""Later stages' progress in ``slimtok status``: each entry of ``STAGES`` reads its own folder of
the output root and returns a :class:`~.model.StageStatus`, or None when that stage never ran there.

A stage adds itself here with one function (e.g. dedup: its bucket done records under ``dedup/``,
paths from :mod:`slimtok.protocol`); the text, JSON and Prometheus views show every entry.
"""

from __future__ import annotations

from typing import Callable

from ..protocol import OutputRoot
from .model import StageStatus

StageCollector = Callable[[OutputRoot], "StageStatus | None"]

#: Collectors of later stages, in data order.
STAGES: list[StageCollector] = []


def collect_stages(root: OutputRoot) -> list[StageStatus]:
    """The status of every stage that has files under ``root``."""
    return [s for s in (collect(root) for collect in STAGES) if s is not None]
