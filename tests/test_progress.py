"""progress.py: a tqdm bar that keeps redrawing on a terminal, plain lines elsewhere, and rates
that count only this launch's work over the last window."""

import io
import os
import select

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
        text = _drain(master)
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
            seen += _drain(master, wait=0.1)
            if seen.count("\r") >= 4:
                break
        shown.update(8, 80, 12_000, 8_000_000)
        shown.close("combine: done")
        seen += _drain(master)
    os.close(master)
    assert seen.count("\r") >= 4, seen
    assert "combine: shards 2/8 · 20 docs · 3,000 tokens · " in seen and " 25%|" in seen
    assert "100%|" in seen and "shards 8/8" in seen and seen.rstrip().endswith("combine: done")


def _drain(fd: int, wait: float = 0.2) -> str:
    chunks = []
    while select.select([fd], [], [], wait)[0]:
        try:
            chunks.append(os.read(fd, 65536))
        except OSError:
            break
        wait = 0.05
    return b"".join(chunks).decode(errors="replace")
