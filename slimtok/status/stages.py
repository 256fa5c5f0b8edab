"""Later stages' progress in ``slimtok status``: each entry of ``STAGES`` reads its own folder of
the output root and returns a :class:`~.model.StageStatus`, or None when that stage never ran there.

A stage adds itself here with one function (e.g. dedup: its bucket done records under ``dedup/``,
paths from :mod:`slimtok.protocol`); the text, JSON and Prometheus views show every entry.
"""

from __future__ import annotations

from collections.abc import Callable

from ..protocol import OutputRoot
from .model import StageStatus

StageCollector = Callable[[OutputRoot], "StageStatus | None"]


def dedup_stage(root: OutputRoot) -> StageStatus | None:
    """``slimtok dedup``: its units done per phase (scatter, bucket, gather)."""
    if not root.storage.exists(root.dedup_plan):  # never started: no need to import dedup (and numpy)
        return None
    from ..dedup import dedup_status

    state = dedup_status(root.root)
    if not state["started"]:
        return None
    phases: dict = state["phases"]  # type: ignore[assignment]  # dedup_status types its values as object
    detail = ", ".join(f"{name} {p['done']}/{p['units']} ({p['held']} held)" for name, p in phases.items())
    return StageStatus(name="dedup", unit="units", done=sum(p["done"] for p in phases.values()),
                       total=sum(p["units"] for p in phases.values()),
                       detail=detail + ("; finished" if state["finished"] else ""))


#: Collectors of later stages, in data order.
STAGES: list[StageCollector] = [dedup_stage]


def collect_stages(root: OutputRoot) -> list[StageStatus]:
    """The status of every stage that has files under ``root``."""
    return [s for s in (collect(root) for collect in STAGES) if s is not None]
