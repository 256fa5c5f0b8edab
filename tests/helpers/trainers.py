"""The trainers' own readers, to read slimtok's exports back: megatron-core's IndexedDataset,
datatrove's DatatroveFolderDataset.

Each is a test dependency (tools/ci/install-test-deps.sh); without it a test that needs it skips,
saying so."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def megatron_indexed_dataset() -> Any:
    """megatron-core's ``IndexedDataset`` class; skips the calling test (or module, when called at
    import) where megatron-core is not installed."""
    import pytest

    with warnings.catch_warnings():  # megatron-core warns that Apex/Transformer Engine are absent
        warnings.simplefilter("ignore")
        module = pytest.importorskip(
            "megatron.core.datasets.indexed_dataset",
            reason="megatron-core is not installed (tools/ci/install-test-deps.sh installs it)")
    return module.IndexedDataset


def megatron_dataset(prefix: Path) -> Any:
    """The Megatron dataset at ``prefix`` (``<prefix>.bin`` + ``.idx``), read by megatron-core."""
    return megatron_indexed_dataset()(str(prefix))


def datatrove_folder_dataset() -> Any:
    """datatrove's ``DatatroveFolderDataset`` (what nanotron's datatrove-backed Nanoset builds on);
    skips the calling test where datatrove is not installed."""
    import pytest

    module = pytest.importorskip("datatrove.utils.dataset",
                                 reason="datatrove is not installed (tools/ci/install-test-deps.sh installs it)")
    return module.DatatroveFolderDataset
