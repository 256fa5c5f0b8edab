"""Per-window document masks (doc_masks=) against an independent computation from the document
ends, and against megatron-core's own reset_position_ids / reset_attention_mask."""

import itertools

import numpy as np
import pytest

from slimtok.data import FIELDS, DataError, MixedBlocks, TokenBlocks
from slimtok.data.documents import cu_seqlens


def _expected(ends: np.ndarray, start: int, size: int) -> dict:
    """The fields from each token's document number (which end it lies before), not from the
    window's boundaries: segment k of the window is the run of tokens of one document."""
    doc = np.searchsorted(ends, start + np.arange(size), side="right")
    first = np.flatnonzero(np.concatenate([[True], doc[1:] != doc[:-1]]))
    cu = np.append(first, size).astype(np.int32)
    position = np.array([i - first[first <= i][-1] for i in range(size)])
    mask = np.array([[j <= i and doc[i] == doc[j] for j in range(size)] for i in range(size)])
    return {"cu_seqlens": cu, "max_seqlen": int(np.diff(cu).max()), "position_ids": position, "attention_mask": mask}


def _check(item: dict, ends: np.ndarray, start: int, size: int) -> None:
    want = _expected(ends, start, size)
    assert set(item) == {"x", "y", *want}
    assert item["cu_seqlens"].dtype == np.int32 and item["position_ids"].dtype == np.int64
    assert item["attention_mask"].dtype == np.bool_
    for key, value in want.items():
        assert np.array_equal(item[key], value), key


def _reference_ends(ref: np.ndarray) -> np.ndarray:
    """Document ends from the reference stream (eos id 0 only after each document there)."""
    return np.flatnonzero(ref == 0) + 1


def test_token_blocks_document_fields_match_the_index(combined):
    root, ref = combined
    ends = np.fromfile(root / "train.idx", dtype="<u8")
    assert np.array_equal(ends, _reference_ends(ref))
    size = 48
    items = list(TokenBlocks(root / "train.bin", size, doc_masks=FIELDS))
    assert len(items) == (len(ref) - 1) // size
    segments = 0
    for j, item in enumerate(items):
        assert np.array_equal(item["x"], ref[j * size:(j + 1) * size])
        _check(item, ends, j * size, size)
        segments += len(item["cu_seqlens"]) - 1
    assert segments > len(items) + 20  # windows that cross documents were checked, not just whole ones
    only = next(iter(TokenBlocks(root / "train.bin", size, doc_masks=["cu_seqlens"])))
    assert set(only) == {"x", "y", "cu_seqlens", "max_seqlen"}


def test_mixed_blocks_document_fields_come_from_each_source(combined, second):
    roots = [combined[0], second[0]]
    blocks = MixedBlocks([(roots[0], 1), (roots[1], 1)], 40, seed=2, samples_per_epoch=30, doc_masks=FIELDS)
    ends = [np.fromfile(r / "train.idx", dtype="<u8") for r in roots]
    draws = list(blocks.draws(0, 30))
    assert {s for _, s, _ in draws} == {0, 1}
    for item, (_, source, block) in zip(blocks, draws, strict=True):
        _check(item, ends[source], block * 40, 40)


def test_boundaries_at_the_window_edges_and_empty_documents():
    ends = np.array([3, 3, 10, 16, 20], dtype=np.uint64)  # document 1 has no tokens
    assert cu_seqlens(ends, 0, 10).tolist() == [0, 3, 10]  # an end at the window's end begins nothing
    assert cu_seqlens(ends, 3, 7).tolist() == [0, 7]  # nor one at its start
    assert cu_seqlens(ends, 2, 16).tolist() == [0, 1, 8, 14, 16]
    for start, size in ((0, 10), (3, 7), (2, 16), (5, 15)):
        assert np.array_equal(cu_seqlens(ends, start, size), _expected(ends, start, size)["cu_seqlens"])


def _hand_split(folder, tokens: list[int], ends: list[int]):
    path = folder / "train.bin"
    np.array(tokens, dtype=np.uint32).tofile(path)
    if ends:
        np.array(ends, dtype="<u8").tofile(folder / "train.idx")
    return path


def test_an_eos_inside_a_document_does_not_split_it(tmp_path):
    """The index decides, not a scan for eos (0 here): a document whose text holds the eos id stays
    one segment, where a scan for eos (megatron-core's reset_position_ids) would split it."""
    path = _hand_split(tmp_path, [5, 6, 0, 7, 0, 8, 9, 0, 4, 4, 0], [5, 8, 11])
    item = next(iter(TokenBlocks(path, 10, dtype="uint32", doc_masks=FIELDS)))
    assert item["cu_seqlens"].tolist() == [0, 5, 8, 10]
    assert item["position_ids"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1]


def test_missing_index_and_unknown_fields_are_refused(tmp_path):
    path = _hand_split(tmp_path, [5, 6, 0, 7, 0], [])
    with pytest.raises(DataError, match=r"train.idx: is missing"):
        next(iter(TokenBlocks(path, 2, dtype="uint32", doc_masks=["position_ids"])))
    assert len(list(TokenBlocks(path, 2, dtype="uint32"))) == 2  # without masks the index is not needed
    with pytest.raises(DataError, match="no document field causal; ask for some of position_ids, cu_seqlens"):
        TokenBlocks(path, 2, doc_masks=["causal"])


def test_collate_flattens_cu_seqlens_for_varlen(combined):
    torch = pytest.importorskip("torch",
                                reason="torch is not installed (tools/ci/install-test-deps.sh installs a CPU build)")
    from slimtok.data import TorchTokenBlocks, collate

    root, _ = combined
    size = 32
    items = list(itertools.islice(TokenBlocks(root / "train.bin", size, doc_masks=FIELDS), 3))
    loader = torch.utils.data.DataLoader(TorchTokenBlocks(root / "train.bin", size, doc_masks=FIELDS), batch_size=3,
                                         collate_fn=collate)
    batch = next(iter(loader))
    assert torch.equal(batch["x"], torch.from_numpy(np.stack([i["x"] for i in items])))
    assert batch["attention_mask"].shape == (3, size, size) and batch["position_ids"].shape == (3, size)
    flat = [0] + [k * size + int(b) for k, i in enumerate(items) for b in i["cu_seqlens"][1:]]
    assert batch["cu_seqlens"].dtype == torch.int32 and batch["cu_seqlens"].tolist() == flat
    assert batch["max_seqlen"] == max(i["max_seqlen"] for i in items)
    lengths = np.diff(flat)
    assert lengths.sum() == 3 * size and (lengths > 0).all()


def test_megatron_reset_masks_and_positions_agree(combined):
    """megatron-core's GPTDataset builds position ids and the attention mask by scanning each
    window for eod (its _get_ltor_masks_and_position_ids; its GPTDataset has no cu_seqlens of its
    own, its THD consumers take them where position ids reset to 0). Here eos occurs only at
    document ends, so the scan and the index agree."""
    torch = pytest.importorskip("torch",
                                reason="torch is not installed (tools/ci/install-test-deps.sh installs a CPU build)")
    gpt = pytest.importorskip("megatron.core.datasets.gpt_dataset",
                              reason="megatron-core is not installed (tools/ci/install-test-deps.sh installs it)")
    root, _ = combined
    size = 64
    checked = 0
    for item in TokenBlocks(root / "train.bin", size, doc_masks=FIELDS):
        mask, _, position = gpt._get_ltor_masks_and_position_ids(
            torch.from_numpy(item["x"]), 0, reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=False,
            create_attention_mask=True)
        assert np.array_equal(position.numpy(), item["position_ids"])
        assert np.array_equal(~mask[0].numpy(), item["attention_mask"])  # megatron: True = masked out
        starts = np.flatnonzero(position.numpy() == 0)
        assert np.array_equal(np.append(starts, size), item["cu_seqlens"])
        checked += len(starts) > 1
    assert checked > 10
