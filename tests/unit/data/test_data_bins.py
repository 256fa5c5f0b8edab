"""slimtok.data against direct slicing of the reference stream; validate's index check."""

import itertools
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers.cli import slimtok
from slimtok.data import DataError, TokenBin, TokenBlocks


def test_get_batch_equals_direct_slicing(combined):
    root, ref = combined
    data = TokenBin(root / "train.bin")
    assert data.dtype == np.uint32 and len(data) == len(ref)
    x, y = data.get_batch(6, 64, np.random.default_rng(3))
    ix = np.random.default_rng(3).integers(0, len(ref) - 64, size=6)
    assert x.dtype == y.dtype == np.int64
    assert np.array_equal(x, np.stack([ref[i:i + 64] for i in ix]))
    assert np.array_equal(y, np.stack([ref[i + 1:i + 65] for i in ix]))


def test_documents_and_their_starts_come_from_the_index(combined):
    root, ref = combined
    data = TokenBin(root / "train.bin")
    docs = np.split(ref, np.flatnonzero(ref == 0) + 1)[:-1]
    assert data.num_documents == len(docs) == 40
    for i in (0, 17, 39):
        assert np.array_equal(data.document(i), docs[i])
    starts = np.concatenate([[0], np.cumsum([len(d) for d in docs])[:-1]])
    for lo, hi in ((0, 500), (123, 4000), (len(ref) - 300, len(ref))):
        assert np.array_equal(data.document_starts(lo, hi), starts[(starts >= lo) & (starts < hi)])


@pytest.mark.parametrize("world_size,workers,seed", [(1, 1, None), (2, 3, None), (3, 2, 7)])
def test_token_blocks_give_every_block_to_exactly_one_reader(combined, world_size, workers, seed):
    root, ref = combined
    block = 100
    seen = []
    for rank in range(world_size):
        for worker in range(workers):
            for x, y in TokenBlocks(root / "train.bin", block, rank, world_size, seed, worker, workers):
                assert np.array_equal(x[1:], y[:-1])
                seen.append((x, y))
    n = (len(ref) - 1) // block
    assert len(seen) == n
    expected = {ref[j * block:j * block + block].tobytes(): ref[j * block + 1:j * block + block + 1] for j in range(n)}
    for x, y in seen:
        assert np.array_equal(expected.pop(x.tobytes()), y)
    assert not expected


def test_torch_dataloader_workers_split_the_blocks(combined):
    torch = pytest.importorskip("torch",
                                reason="torch is not installed (tools/ci/install-test-deps.sh installs a CPU build)")
    from slimtok.data import TorchTokenBlocks

    root, ref = combined
    rows = []
    for rank in range(2):
        loader = torch.utils.data.DataLoader(TorchTokenBlocks(root / "train.bin", 128, rank, 2), batch_size=4,
                                             num_workers=2)
        for x, y in loader:
            assert x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
            rows.extend(x.numpy())
    n = (len(ref) - 1) // 128
    got = sorted(r.tobytes() for r in rows)
    assert got == sorted(ref[j * 128:(j + 1) * 128].tobytes() for j in range(n))


def test_importing_slimtok_data_does_not_import_torch():
    code = "import sys, slimtok.data; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_stale_index_is_refused_and_fails_validate(combined, tmp_path):
    root, _ = combined
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    ends = np.fromfile(copy / "train.idx", dtype="<u8")
    ends[:-1].tofile(copy / "train.idx")  # one document short, as after a half-finished rewrite
    with pytest.raises(DataError, match="train.idx"):
        TokenBin(copy / "train.bin")
    proc = slimtok("validate", "--output-root", copy, "--block-size", "64", check=False)
    assert proc.returncode == 1
    assert "[FAIL] train.bin: document index" in proc.stdout
    ok = slimtok("validate", "--output-root", root, "--block-size", "64")
    assert "[ok] train.bin: document index" in ok.stdout and "[ok] train.bin: sampler dry-run" in ok.stdout


def test_token_blocks_set_epoch_reorders_each_epoch_and_resumes(combined):
    """Reader r's order in epoch e is default_rng([seed, r, e]).permutation of its blocks (epoch
    0: [seed, r]), computed here; a state_dict resumes after the last block taken."""
    root, ref = combined
    block, world = 50, 2
    n = (len(ref) - 1) // block

    def windows(blocks, count=None):
        return [x.tobytes() for x, _ in itertools.islice(blocks, count or n)]

    def expected(rank, epoch, seed=9):
        mine = np.arange(rank, n, world)
        np.random.default_rng([seed, rank] if epoch == 0 else [seed, rank, epoch]).shuffle(mine)
        return [ref[j * block:j * block + block].astype(np.int64).tobytes() for j in mine]

    blocks = TokenBlocks(root / "train.bin", block, rank=1, world_size=world, seed=9)
    first = windows(blocks)
    assert first == expected(1, 0) == windows(blocks)  # a finished pass repeats the epoch's order
    blocks.set_epoch(1)
    second = windows(blocks, 7)
    state = blocks.state_dict()
    assert state == {"epoch": 1, "position": 7, "reader": 1, "readers": 2} and second == expected(1, 1)[:7] != first[:7]
    resumed = TokenBlocks(root / "train.bin", block, rank=1, world_size=world, seed=9)
    resumed.load_state_dict(state)
    assert windows(resumed) == expected(1, 1)[7:] == windows(blocks)
    assert sorted(expected(1, 2)) == sorted(first) and expected(1, 2) != expected(1, 1)
    plain = TokenBlocks(root / "train.bin", block)
    plain.set_epoch(3)  # no seed: still sequential
    assert windows(plain) == [ref[j * block:j * block + block].astype(np.int64).tobytes() for j in range(n)]
