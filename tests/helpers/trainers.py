"""The trainers' own readers, to read slimtok's exports back: megatron-core's IndexedDataset,
datatrove's DatatroveFolderDataset, litdata's StreamingDataset with TokensLoader, torchtitan's
documented pretokenized source.

Each is a test dependency (tools/ci/install-test-deps.sh); without it a test that needs it skips,
saying so."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np


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


def torchtitan_documents(folder: Path) -> list[np.ndarray]:
    """The documents torchtitan's pretokenized source gives for ``folder``, read as its data README
    documents ``MemmapTokenSource``: ``np.memmap(tokens.bin, dtype=np.uint32)``, ``np.load(
    document_offsets.npy)``, item ``i`` = ``tokens[offsets[i]:offsets[i + 1]]`` as int64.

    torchtitan itself is not installed: its PyPI release (0.3.0) ships no pretokenized source (that
    source is the README's example on its main branch, "TorchTitan does not prescribe that storage
    format"), and installing it would downgrade dill, multiprocess and fsspec, which other readers
    here share. So this compares against the documented format."""
    tokens = np.memmap(folder / "tokens.bin", dtype=np.uint32, mode="r")
    offsets = np.load(folder / "document_offsets.npy")
    return [np.asarray(tokens[start:end], dtype=np.int64) for start, end in zip(offsets[:-1], offsets[1:], strict=True)]


def litdata_blocks(folder: Path, block_size: int) -> list[np.ndarray]:
    """Every block litdata's ``StreamingDataset`` with ``TokensLoader(block_size)`` yields for
    ``folder``, in order; skips the calling test where litdata is not installed."""
    import pytest

    streaming = pytest.importorskip("litdata.streaming",
                                    reason="litdata is not installed (tools/ci/install-test-deps.sh installs it)")
    ds = streaming.StreamingDataset(input_dir=str(folder), item_loader=streaming.item_loader.TokensLoader(block_size),
                                    shuffle=False)
    return [np.asarray(ds[i]) for i in range(len(ds))]


def litdata_items(chunk: Path) -> list[np.ndarray]:
    """The items of one litdata chunk file, by its documented layout (litdata's writer): ``uint32
    n``, ``uint32 offsets[n + 1]`` in bytes from the file's start, then the items' bytes."""
    raw = chunk.read_bytes()
    n = int(np.frombuffer(raw[:4], "<u4")[0])
    offsets = np.frombuffer(raw[4:4 * (n + 2)], "<u4").astype(np.int64)
    return [np.frombuffer(raw[a:b], np.uint8) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
