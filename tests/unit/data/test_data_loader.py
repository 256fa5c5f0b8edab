"""TokenBlocks and MixedBlocks in torch's DataLoader: draws shared out over workers × ranks with no
repeat and no loss, exact resume under torchdata's StatefulDataLoader, and the warning that the
plain DataLoader cannot carry worker positions."""

import itertools
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from slimtok.data import DataError, MixedBlocks, TokenBlocks

TORCH_REASON = "torch is not installed (tools/ci/install-test-deps.sh installs a CPU build)"
TORCHDATA_REASON = "torchdata is not installed (tools/ci/install-test-deps.sh installs it)"


def _rows(items) -> list[bytes]:
    return [x.tobytes() for x, _ in items]


def _mixed(combined, second, **kw) -> MixedBlocks:
    return MixedBlocks([(combined[0], 2), (second[0], 1)], 16, seed=3, samples_per_epoch=90, **kw)


@pytest.mark.parametrize("world_size,workers", [(1, 2), (2, 1), (2, 3), (3, 2)])
def test_mixed_blocks_give_every_draw_to_exactly_one_reader(combined, second, world_size, workers):
    """The windows of all readers (ranks × workers) are the single process's, each once; a rank
    reads the draws t ≡ rank (mod world_size) whatever its number of workers."""
    single = list(_mixed(combined, second))
    assert len(single) == 90
    everyone = []
    for rank in range(world_size):
        mine = []
        for worker in range(workers):
            mine += list(_mixed(combined, second, rank=rank, world_size=world_size, worker=worker,
                                num_workers=workers))
        assert sorted(_rows(mine)) == sorted(_rows(single[rank::world_size]))
        everyone += mine
    assert sorted(_rows(everyone)) == sorted(_rows(single))
    for x, y in everyone:
        assert np.array_equal(x[1:], y[:-1])


def _collected(torch, dataset, workers: int, batch_size: int = 4) -> list[bytes]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    return [row.numpy().tobytes() for x, _ in loader for row in x]


def test_torch_dataloader_workers_and_ranks_split_the_draws(combined, second):
    """Real DataLoader workers (2) × ranks (2): the multiset of windows equals one process's, for
    TokenBlocks and MixedBlocks (whose workers each yielded every draw before)."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    from slimtok.data import TorchMixedBlocks, TorchTokenBlocks

    root, ref = combined
    n = (len(ref) - 1) // 32
    tokens = []
    for rank in range(2):
        tokens += _collected(torch, TorchTokenBlocks(root / "train.bin", 32, rank, 2, seed=1), workers=2)
    assert sorted(tokens) == sorted(ref[j * 32:(j + 1) * 32].astype(np.int64).tobytes() for j in range(n))
    mixed = []
    for rank in range(2):
        dataset = TorchMixedBlocks([(root, 2), (second[0], 1)], 16, seed=3, samples_per_epoch=90, rank=rank,
                                   world_size=2)
        mixed += _collected(torch, dataset, workers=2)
    assert sorted(mixed) == sorted(_rows(_mixed(combined, second)))


def _dataset(kind: str, combined, second):
    from slimtok.data import TorchMixedBlocks, TorchTokenBlocks

    if kind == "tokens":
        blocks = TorchTokenBlocks(combined[0] / "train.bin", 24, seed=5)
        blocks.set_epoch(1)
        return blocks
    blocks = TorchMixedBlocks([(combined[0], 2), (second[0], 1)], 16, seed=3, samples_per_epoch=90)
    blocks.set_epoch(2)
    return blocks


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # 2 cores here
@pytest.mark.parametrize("kind", ["tokens", "mixed"])
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_stateful_dataloader_resumes_with_the_next_batch(combined, second, kind, workers):
    """After N batches, a new StatefulDataLoader given the first one's state_dict() yields batch
    N+1 onwards, byte for byte the batches an uninterrupted loader yields."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    stateful = pytest.importorskip("torchdata.stateful_dataloader", reason=TORCHDATA_REASON)

    def loader():
        return stateful.StatefulDataLoader(_dataset(kind, combined, second), batch_size=3, num_workers=workers)

    whole = list(loader())
    assert len(whole) > 8
    first = loader()
    taken = list(itertools.islice(first, 5))
    state = first.state_dict()
    del first
    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(taken) + len(rest) == len(whole)
    for got, want in zip(taken + rest, whole, strict=True):
        assert all(g.dtype == torch.int64 and torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_a_state_of_another_reader_layout_is_refused(combined, second):
    saved = TokenBlocks(combined[0] / "train.bin", 24, worker=1, num_workers=2)
    list(itertools.islice(saved, 3))
    state = saved.state_dict()
    assert state == {"epoch": 0, "position": 3, "reader": 1, "readers": 2}
    with pytest.raises(DataError, match=r"train.bin: a state saved by reader 1 of 2 .* cannot resume reader 1 of 3"):
        TokenBlocks(combined[0] / "train.bin", 24, worker=1, num_workers=3).load_state_dict(state)
    mixed = _mixed(combined, second, rank=1, world_size=2).state_dict()
    with pytest.raises(DataError, match="reader 1 of 2"):
        _mixed(combined, second, rank=1, world_size=4).load_state_dict(mixed)
    old = TokenBlocks(combined[0] / "train.bin", 24)
    old.load_state_dict({"epoch": 2, "position": 4})  # saved before the layout was recorded
    assert old.state_dict() == {"epoch": 2, "position": 4, "reader": 0, "readers": 1}


def test_mixed_blocks_pickle_without_their_memory_maps(combined, second):
    blocks = _mixed(combined, second, rank=1, world_size=2)
    list(itertools.islice(blocks, 7))
    data = pickle.dumps(blocks)
    assert len(data) < 4096 < sum(b.tokens.nbytes for b in blocks.bins)
    again = pickle.loads(data)
    assert again.state_dict() == blocks.state_dict()
    assert _rows(again) == _rows(blocks)


_WARN_SCRIPT = textwrap.dedent("""
    import sys, warnings
    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader
    from slimtok.data import TorchTokenBlocks, TorchMixedBlocks
    warnings.simplefilter("default")
    root, second, kind, cls = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    if cls == "tokens":
        dataset = TorchTokenBlocks(root + "/train.bin", 64)
    else:
        dataset = TorchMixedBlocks([(root, 1), (second, 1)], 16, seed=0, samples_per_epoch=40)
    dataset.state_dict()  # asked in the main process only: the workers' copies are not asked
    make = torch.utils.data.DataLoader if kind == "plain" else StatefulDataLoader
    print(sum(len(x) for x, _ in make(dataset, batch_size=4, num_workers=2)))
""")


@pytest.mark.parametrize("cls", ["tokens", "mixed"])
def test_plain_dataloader_workers_warn_that_their_position_is_not_saved(combined, second, cls):
    """Run in a fresh python: a forked worker's warning goes to the shared stderr, which pytest's
    warning capture (copied into the fork) would swallow."""
    pytest.importorskip("torch", reason=TORCH_REASON)
    pytest.importorskip("torchdata.stateful_dataloader", reason=TORCHDATA_REASON)
    runs = {kind: subprocess.run([sys.executable, "-c", _WARN_SCRIPT, str(combined[0]), str(second[0]), kind, cls],
                                 capture_output=True, text=True, check=True) for kind in ("plain", "stateful")}
    name = "TorchTokenBlocks" if cls == "tokens" else "TorchMixedBlocks"
    for worker in (0, 1):
        assert f"PositionNotSaved: {name} runs in DataLoader worker {worker} of a loader that never asks" \
            in runs["plain"].stderr
    assert "StatefulDataLoader to resume mid-epoch" in runs["plain"].stderr
    assert "PositionNotSaved" not in runs["stateful"].stderr
    assert runs["plain"].stdout == runs["stateful"].stdout
