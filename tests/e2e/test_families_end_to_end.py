"""Every tokenizer family through tokenize → combine → validate → export megatron, read back with
megatron-core, each document compared with an independent `tokenizers` encoding under the policy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.cli import slimtok
from helpers.corpus import doc_line, write_shard
from helpers.tokenizer_families import FAMILIES, build_family, documents, expected_bos, independent
from helpers.trainers import megatron_indexed_dataset

pytestmark = pytest.mark.slow  # every tokenizer family through the whole command line

# Skip before any family is built or tokenized: every case ends reading the export with megatron-core.
IndexedDataset = megatron_indexed_dataset()

#: (--bos, --special-text) per run: the default policy, and the other choice of each flag
POLICIES = [("auto", "literal"), ("never", "parse")]


@pytest.mark.parametrize("bos,special", POLICIES)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_through_the_whole_pipeline(tmp_path, name, bos, special):
    folder = build_family(name, tmp_path / "tok")
    texts = documents(folder)
    write_shard(tmp_path / "ds/train/chunk1/example_train_0.jsonl.zst", [doc_line(t) for t in texts])
    slimtok("manifest", "--dataset-dir", tmp_path / "ds", "--output-dir", tmp_path / "m")
    root = tmp_path / "out"
    slimtok("tokenize", "--manifest", tmp_path / "m/manifest.jsonl", "--output-root", root, "--tokenizer", folder,
            "--spawn-workers", 1, "--bos", bos, "--special-text", special, "--quiet")
    slimtok("combine", "--output-root", root)
    report = slimtok("validate", "--output-root", root)
    assert "all checks passed" in report.stdout
    slimtok("export", "megatron", "--output-root", root, "--prefix", "fam")

    kept = [t for t in texts if t]  # an empty text is skipped, as the reader's rules say
    want = independent(folder, kept, expected_bos(name, bos), FAMILIES[name].eos, special)
    meta = json.loads((root / "meta.json").read_text())
    top = max(max(ids) for ids in want)
    assert meta["dtype"] == ("uint16" if name != "qwen3" else "uint32") and top < np.iinfo(meta["dtype"]).max
    bos_id = None if expected_bos(name, bos) is None else want[0][0]
    assert (meta["bos_token_id"], meta["special_text"]) == (bos_id, special)
    assert any(line.startswith("dtype: ") for line in meta["policy_notes"])
    ds = IndexedDataset(str(root / "megatron" / "fam_train_text_document"))
    assert len(ds) == len(want)
    for i, ids in enumerate(want):
        assert ds[i].tolist() == ids, (name, bos, special, i)
