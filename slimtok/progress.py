"""Live progress of a long stage (tokenize, combine, mix, dedup, mirror): a bar on a terminal, a
plain line every few seconds in a log or when quiet.

Rates and the ETA count only work done since this display started (this launch), over at most the
last ``window`` seconds, so neither a relaunch's earlier shards nor an idle stretch distort them.
The bar is tqdm's, redrawn at least once a second by a small thread even between updates.

A stage that shows progress takes ``progress: ProgressFactory | None``: the caller (the CLI)
chooses how the display looks, the stage says how much there is to do once it knows.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

#: Rates are measured over this many seconds at most (or since the start, when that is shorter).
RATE_WINDOW = 300.0
#: A plain line (log, quiet) every this many seconds; the bar is redrawn every REFRESH seconds.
PLAIN_EVERY = 10.0
REFRESH = 0.5


def duration(seconds: float) -> str:
    """``1h05m`` or ``3m07s``."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _has_width(stream: TextIO) -> bool:
    """Whether the terminal reports its width (a fresh pty says 0, and tqdm then draws nothing)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError):
        return False


class RateWindow:
    """Rates of cumulative counters over the last ``window`` seconds of samples (or all of them)."""

    def __init__(self, window: float = RATE_WINDOW):
        self.window = window
        self.samples: deque[tuple[float, tuple[int, ...]]] = deque()

    def add(self, now: float, counters: tuple[int, ...]) -> None:
        self.samples.append((now, counters))
        while len(self.samples) > 2 and self.samples[0][0] < now - self.window:
            self.samples.popleft()

    def rates(self) -> tuple[float, ...] | None:
        """Per-second change of each counter between the oldest and newest sample; None before two."""
        if len(self.samples) < 2:
            return None
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        if t1 <= t0:
            return None
        return tuple((b - a) / (t1 - t0) for a, b in zip(first, last, strict=True))


class ProgressDisplay:
    """Progress of ``total_shards`` units (``unit``: "shards", "files", ...) of ``total_bytes`` input.

    ``update`` takes cumulative figures for the whole job (done shards, documents, tokens, bytes,
    counting what was done before this launch too); ``documents``/``tokens`` None are not shown.
    ``initial_bytes``/``initial_tokens``: what was done before this launch, the rates' baseline;
    ``clock``: monotonic seconds (tests pass their own).
    On a terminal and not ``quiet``: a tqdm bar; otherwise a line every ``every`` seconds.
    """

    def __init__(self, total_shards: int, total_bytes: int, unit: str = "shards", quiet: bool = False,
                 stream: TextIO | None = None, every: float = PLAIN_EVERY, window: float = RATE_WINDOW,
                 label: str = "", initial_bytes: int = 0, initial_tokens: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.total_shards, self.total_bytes, self.unit = total_shards, total_bytes, unit
        self.every, self.label = every, label
        self.rates = RateWindow(window)
        self.clock = clock
        self.last_line = clock()
        self.rates.add(self.last_line, (initial_bytes, initial_tokens))
        self.figures: tuple[int, int | None, int | None, int] = (0, None, None, initial_bytes)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.bar: tqdm | None = None
        self._refresher: threading.Thread | None = None
        if not quiet and self.stream.isatty():
            from tqdm import tqdm as new_bar  # here: quiet and logged runs never import tqdm

            # the figures' line is the description; tqdm draws the bar and percentage after it
            self.bar = new_bar(total=total_bytes, file=self.stream, desc=self.line(),
                            bar_format="{desc} {percentage:3.0f}%|{bar}|", mininterval=0,
                            dynamic_ncols=_has_width(self.stream), leave=True)
            self._refresher = threading.Thread(target=self._refresh_loop, name="progress", daemon=True)
            self._refresher.start()

    def update(self, done_shards: int, documents: int | None, tokens: int | None, nbytes: int) -> None:
        """Record the job's cumulative figures; prints a plain line when one is due."""
        now = self.clock()
        with self._lock:
            self.figures = (done_shards, documents, tokens, nbytes)
            self.rates.add(now, (nbytes, tokens or 0))
            if self.bar is not None:
                self._draw()
                return
        if now - self.last_line >= self.every:
            self.last_line = now
            self._print(self.line())

    def line(self) -> str:
        """The figures as one line: shards, documents, tokens, MB/s, ETA."""
        shards, documents, tokens, nbytes = self.figures
        parts = [f"{self.unit} {shards:,}/{self.total_shards:,}"]
        if documents is not None:
            parts.append(f"{documents:,} docs")
        if tokens is not None:
            parts.append(f"{tokens:,} tokens")
        rates = self.rates.rates()
        if rates is None:
            parts += ["-- MB/s", "ETA after the first progress of this launch"]
        else:
            byte_rate, token_rate = rates
            parts.append(f"{byte_rate / 1e6:,.1f} MB/s")
            if tokens is not None:
                parts.append(f"{token_rate:,.0f} tok/s")
            left = max(self.total_bytes - nbytes, 0)
            parts.append("ETA " + (duration(left / byte_rate) if byte_rate > 0 else
                                   "unknown (nothing moved recently)" if left else duration(0)))
        return (f"{self.label}: " if self.label else "") + " · ".join(parts)

    def above(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` made to print its lines above the bar rather than after it on the bar's own line:
        the bar is cleared, the line printed (``log`` must flush), the bar drawn again below it."""
        if self.bar is None:
            return log

        def log_above(text: str) -> None:
            with self._lock:
                assert self.bar is not None
                self.bar.clear()
                log(text)
                self._draw()
        return log_above

    def close(self, final_line: str | None = None) -> None:
        """Stop the bar (left on screen) and print ``final_line`` (default: the figures' line)."""
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
        with self._lock:
            if self.bar is not None:
                self._draw()
                self.bar.close()
        self._print(final_line if final_line is not None else self.line())

    def _draw(self) -> None:
        assert self.bar is not None
        self.bar.n = min(self.figures[3], self.total_bytes)
        self.bar.set_description_str(self.line(), refresh=False)
        self.bar.refresh()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH):
            with self._lock:
                self._draw()

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


class ProgressFactory(Protocol):
    """How a stage makes its display once it knows the work: ``units`` to do, their input
    ``nbytes``, and what earlier runs did (``bytes_before``, ``tokens_before``: the rates' baseline)
    → the display it updates with cumulative figures and closes at the end. Every stage that shows
    progress (mirror, tokenize, dedup, combine, mix, clean) takes one as ``progress``; None shows
    nothing, so a library caller is silent unless it asks."""

    def __call__(self, units: int, nbytes: int, bytes_before: int = 0,
                 tokens_before: int = 0) -> ProgressDisplay: ...


def display(label: str, unit: str = "shards", quiet: bool = False, stream: TextIO | None = None,
            every: float = PLAIN_EVERY) -> ProgressFactory:
    """The usual :class:`ProgressFactory`: a :class:`ProgressDisplay` of ``unit`` named ``label``
    (a bar on a terminal unless ``quiet``, else a line every ``every`` seconds on ``stream``)."""
    def make(units: int, nbytes: int, bytes_before: int = 0, tokens_before: int = 0) -> ProgressDisplay:
        return ProgressDisplay(units, nbytes, unit=unit, quiet=quiet, stream=stream, every=every, label=label,
                               initial_bytes=bytes_before, initial_tokens=tokens_before)
    return make
