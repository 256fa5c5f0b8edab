"""progress.py: a tqdm bar that keeps redrawing on a terminal, plain lines elsewhere, and rates
that count only this launch's work over the last window; combine's display over its shards."""

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from helpers.cli import slimtok
from helpers.terminal import drain_pty, terminal
from slimtok.combine import combine
from slimtok.errors import CombineError
from slimtok.progress import ProgressDisplay, RateWindow, duration


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_plain_lines_count_only_this_launch():
    clock, out = Clock(), io.StringIO()
    shown = ProgressDisplay(10, 10_000_000_000, stream=out, every=5, label="tokenize",
                            initial_bytes=1_000_000_000, initial_tokens=7, clock=clock)
    clock.now += 2
    shown.update(1, 10, 500, 1_100_000_000)
    assert out.getvalue() == ""  # not due yet
    clock.now += 8
    shown.update(3, 40, 2_000, 2_000_000_000)
    # 1 GB in 10 s since this launch began (the first GB was there before): 100 MB/s, 8 GB to go
    assert out.getvalue() == ("tokenize: shards 3/10 · 40 docs · 2,000 tokens · 100.0 MB/s · 199 tok/s · "
                              "ETA 1m20s\n")
    shown.close("tokenize: stopped")
    assert out.getvalue().splitlines()[-1] == "tokenize: stopped"


def test_rates_forget_samples_older_than_the_window():
    rates = RateWindow(window=60)
    rates.add(0, (0,))
    assert rates.rates() is None
    rates.add(10, (100,))
    assert rates.rates() == (10.0,)
    rates.add(100, (100,))   # nothing moved for 90 s
    rates.add(130, (700,))   # then 600 in 30 s; the window keeps [100, 130] only
    assert rates.rates() == (20.0,)
    assert duration(3725) == "1h02m" and duration(61.9) == "1m01s"


def test_quiet_on_a_terminal_prints_plain_lines():
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        shown = ProgressDisplay(4, 400, stream=tty, quiet=True, every=0, unit="files")
        shown.update(1, None, None, 100)
        shown.close()
        text = drain_pty(master)
    os.close(master)
    lines = text.replace("\r\n", "\n").splitlines()
    assert lines[0].startswith("files 1/4 · ") and "docs" not in lines[0] and "%|" not in text


def test_a_terminal_gets_a_bar_that_keeps_refreshing():
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        shown = ProgressDisplay(8, 8_000_000, stream=tty, label="combine")
        shown.update(2, 20, 3_000, 2_000_000)
        # with no further update, the bar is still redrawn (elapsed time moves on)
        seen = ""
        for _ in range(200):
            seen += drain_pty(master, wait=0.1)
            if seen.count("\r") >= 4:
                break
        shown.update(8, 80, 12_000, 8_000_000)
        shown.close("combine: done")
        seen += drain_pty(master)
    os.close(master)
    assert seen.count("\r") >= 4, seen
    assert "combine: shards 2/8 · 20 docs · 3,000 tokens · " in seen and " 25%|" in seen
    assert "100%|" in seen and "shards 8/8" in seen and seen.rstrip().endswith("combine: done")


@pytest.fixture(scope="module")
def tokenized(tokenized_root, bpe_tokenizer):
    """A tokenized, not yet combined root (5 train shards and two holdouts)."""
    return tokenized_root({"train_shards": 5}, bpe_tokenizer, "--quiet", "--spawn-workers", "1").root


@pytest.mark.parametrize("consume", [False, True])
def test_combine_plain_line_counts_every_split(tokenized, tmp_path, consume):
    root = tmp_path / "root"
    shutil.copytree(tokenized, root)
    records = [orjson.loads(p.read_bytes()) for p in (root / "done").rglob("*.json")]
    out, made = io.StringIO(), []

    def display(shards, nbytes, before):
        made.append((shards, nbytes, before))
        return ProgressDisplay(shards, nbytes, stream=out, every=0, label="combine", initial_bytes=before)

    meta = combine(root, log=lambda _: None, consume=consume, progress=display)
    shards, tokens = len(records), sum(r["tokens"] for r in records)
    assert made == [(shards, sum(r["bytes"] for r in records), 0)]
    assert sum(s["tokens"] for s in meta.splits.values()) == tokens
    last = out.getvalue().splitlines()[-1]
    assert last.startswith(f"combine: shards {shards}/{shards} · {sum(r['documents'] for r in records):,} docs · "
                           f"{tokens:,} tokens · "), last
    assert last.endswith("ETA 0m00s")
    assert len(out.getvalue().splitlines()) == shards + 1  # a line per shard (every=0), then close's


def _combine_on_a_terminal(tokenized: Path, root: Path, stdout_too: bool) -> str:
    """What `slimtok combine` of a copy of ``tokenized`` at ``root`` draws on a terminal (its
    stderr; with ``stdout_too`` its stdout as well, as an operator runs it)."""
    shutil.copytree(tokenized, root)
    master, slave = terminal()
    proc = subprocess.Popen([sys.executable, "-m", "slimtok", "combine", "--output-root", str(root)],
                            stdout=slave if stdout_too else subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = ""
    while proc.poll() is None:
        seen += drain_pty(master, wait=0.1)
    seen += drain_pty(master)
    os.close(master)
    assert proc.returncode == 0, seen
    return seen


def test_combine_draws_a_bar_on_a_terminal(tokenized, tmp_path):
    seen = _combine_on_a_terminal(tokenized, tmp_path / "root", stdout_too=False)
    assert "combine: shards 7/7 · " in seen and "100%|" in seen and "\r" in seen

    quiet = tmp_path / "quiet"
    shutil.copytree(tokenized, quiet)
    text = slimtok("combine", "--output-root", quiet, "--quiet").stderr
    assert "%|" not in text and text.splitlines()[-1].startswith("combine: shards 7/7 · ")


def test_combine_prints_its_lines_above_the_bar_not_on_it(tokenized, tmp_path):
    root = tmp_path / "root"
    seen = _combine_on_a_terminal(tokenized, root, stdout_too=True)
    said = [m.start() for m in re.finditer(re.escape(str(root / "train.bin")) + ": 5 shards", seen)]
    assert said and "%|" in seen
    # each line starts a line of the terminal: after the bar was cleared (a carriage return), never
    # right after the bar's closing "|"
    assert all(seen[i - 1] in "\r\n" for i in said), [seen[max(0, i - 40):i + 10] for i in said]


def test_a_resumed_consume_counts_the_shards_moved_before_as_the_baseline(tokenized, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tokenized, root)
    order = [orjson.loads(line)["id"] for line in (root / "manifest.jsonl").read_bytes().splitlines()]
    train = [orjson.loads((root / "done" / f"{shard}.json").read_bytes()) for shard in order
             if shard.startswith("train/")]
    third = root / train[2]["file"]
    third.write_bytes(third.read_bytes()[:-4])  # the consume stops there, two shards moved
    with pytest.raises(CombineError, match="bytes, but its done record says"):
        combine(root, ["train"], consume=True, log=lambda _: None)
    shutil.copyfile(tokenized / train[2]["file"], third)
    made = []

    def display(shards, nbytes, before):
        made.append((shards, nbytes, before))
        return ProgressDisplay(shards, nbytes, stream=io.StringIO(), initial_bytes=before)

    combine(root, ["train"], consume=True, log=lambda _: None, progress=display)
    assert made == [(len(train), sum(r["bytes"] for r in train), train[0]["bytes"] + train[1]["bytes"])]
