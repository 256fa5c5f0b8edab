"""A pseudo-terminal for the tests of what a command shows on a terminal (bars, plain lines)."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import termios


def terminal(columns: int = 160) -> tuple[int, int]:
    """A pty (master, slave) that reports a width, as a terminal window does: tqdm sizes a bar on
    the process's own stderr from it and draws nothing at width 0 (a fresh pty's)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    return master, slave


def drain_pty(fd: int, wait: float = 0.2) -> str:
    """Everything written to the pty whose master is ``fd`` until it stays quiet for ``wait`` s."""
    chunks = []
    while select.select([fd], [], [], wait)[0]:
        try:
            chunks.append(os.read(fd, 65536))
        except OSError:
            break
        wait = 0.05
    return b"".join(chunks).decode(errors="replace")
