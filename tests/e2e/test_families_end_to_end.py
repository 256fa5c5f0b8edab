"""Every tokenizer family through tokenize → combine → validate → export megatron, read back with
megatron-core, each document compared with an independent `tokenizers` encoding under the policy."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from corpus import doc_line, slimtok, write_shard
from test_tokenizer_families import documents, expected_bos, independent
from tokenizer_families import FAMILIES, build_family

#: (--bos, --special-text) per run: the default policy, and the other choice of each flag
POLICIES = [("auto", "literal"), ("never", "parse")]


def _megatron(prefix):
    with warnings.catch_warnings():  # megatron-core warns that Apex/Transformer Engine are absent
        warnings.simplefilter("ignore")
        module = pytest.importorskip("megatron.core.datasets.indexed_dataset",
                                     reason="megatron-core is not installed (tools/ci/install-test-deps.sh)")
    return module.IndexedDataset(str(prefix))


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
    ds = _megatron(root / "megatron" / "fam_train_text_document")
    assert len(ds) == len(want)
    for i, ids in enumerate(want):
        assert ds[i].tolist() == ids, (name, bos, special, i)
