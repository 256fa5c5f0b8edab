"""The trainers' own readers, to read slimtok's exports back: megatron-core's IndexedDataset,
datatrove's DatatroveFolderDataset, litdata's StreamingDataset with TokensLoader; torchtitan's
pretokenized source and MosaicML's MDS shards by their documented formats (neither installs here).

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


#: Why MosaicML streaming's own reader is not installed here (the MDS test skips with this, and the
#: shards are read by their documented layout instead).
MDS_NOT_INSTALLABLE = ("mosaicml-streaming cannot be installed here: pip finds no release that fits the pins "
                       "(0.11-0.13 require numpy<2.2, 0.8-0.10 transformers<5; numpy 2.4.6 and transformers 5.25.0 "
                       "are pinned), and `import streaming` imports torchvision, whose only wheel for torch "
                       "2.13.0+cpu (0.28.0) fails at import")


def mds_samples(folder: Path) -> list[dict[str, np.ndarray]]:
    """Every sample of an MDS folder, read by MDS's documented layout (its writer and reader
    sources): ``index.json`` lists the shards; a shard is ``uint32 n``, ``uint32 offsets[n + 1]``,
    its config JSON, the samples; a sample holds a ``uint32`` size per column of no fixed size,
    then each column's bytes; an ``ndarray:<dtype>:<shape>`` column is the array's raw bytes."""
    import json

    index = json.loads((folder / "index.json").read_text())
    assert index["version"] == 2
    out = []
    for shard in index["shards"]:
        assert shard["format"] == "mds" and shard["compression"] is None and shard["zip_data"] is None
        raw = (folder / shard["raw_data"]["basename"]).read_bytes()
        assert len(raw) == shard["raw_data"]["bytes"]
        n = int(np.frombuffer(raw[:4], "<u4")[0])
        assert n == shard["samples"]
        offsets = np.frombuffer(raw[4:4 * (n + 2)], "<u4").astype(np.int64)
        config = json.loads(raw[4 * (n + 2):offsets[0]])  # the shard's own config, repeated in index.json
        assert all(shard[key] == value for key, value in config.items())
        for begin, end in zip(offsets[:-1], offsets[1:], strict=True):
            data, at = raw[begin:end], 0
            sizes = []
            for size in shard["column_sizes"]:
                if size is None:
                    size = int(np.frombuffer(data[at:at + 4], "<u4")[0])
                    at += 4
                sizes.append(size)
            sample = {}
            for name, encoding, size in zip(shard["column_names"], shard["column_encodings"], sizes, strict=True):
                kind, dtype, shape = encoding.split(":")
                assert kind == "ndarray"
                sample[name] = np.frombuffer(data[at:at + size], dtype).reshape(tuple(map(int, shape.split(","))))
                at += size
            out.append(sample)
    return out
