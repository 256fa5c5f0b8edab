"""Who is writing: claim tokens, host and boot identity, and file-name-safe worker names.

Reads ``/proc/sys/kernel/random/boot_id`` (Linux; "" elsewhere); writes nothing. A claim token is
random (never derived from a pid), so it is unique across hosts and relaunches.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path


def worker_name(host: str, process_index: int, worker: int, generation: int = 0) -> str:
    """File-name-safe identity of one worker: ``<host>-p<index>-w<worker>``, and ``r<generation>``
    after it for the replacements of a killed worker, so each keeps its own heartbeat and log."""
    safe_host = "".join(c if c.isalnum() or c in "-_." else "_" for c in host)
    return f"{safe_host}-p{process_index}-w{worker}" + (f"r{generation}" if generation else "")


def new_token() -> str:
    """A claim token: unique across hosts and relaunches (random, not derived from pid)."""
    return secrets.token_hex(8)


def hostname() -> str:
    return socket.gethostname()


def boot_id() -> str:
    """Identifies this kernel boot, so a pid is only compared on the same host and boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
