"""``slimtok status --serve``: the live status page over the standard library's HTTP server, and
``--html``: the same page as one file.

The server answers ``GET /`` (the page) and ``GET /status.json`` (:func:`.page.page_view`) and
nothing else; it never writes under the root beyond what ``slimtok status`` itself keeps (the
roll-up cache and the clock probe). One view is built per poll interval however many browsers
poll, so a crowd of tabs costs the file server no more than one.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from ..errors import SlimtokError
from ..protocol import write_atomic
from .collect import WINDOW, ReadOnly
from .page import page_view, redact
from .template import POLL_SECONDS, render_page

DEFAULT_HOST = "127.0.0.1"


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (``[::1]:8080`` for IPv6) as (host, port); the host defaults to 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else DEFAULT_HOST
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SlimtokError(f"--serve {text!r}: the port must be a number from 0 to 65535",
                         fix="pass --serve PORT or --serve HOST:PORT, e.g. --serve 8080")
    return host or DEFAULT_HOST, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Views:
    """The latest view, rebuilt when older than the poll interval (one build at a time)."""

    def __init__(self, build: Callable[[], dict[str, Any]]):
        self._build, self._lock = build, threading.Lock()
        self._view: bytes = b""
        self._at = 0.0

    def json(self) -> bytes:
        with self._lock:
            if not self._view or time.monotonic() - self._at >= POLL_SECONDS:
                try:
                    view = self._build()
                except Exception as exc:  # a long-lived page shows what went wrong and polls again
                    view = {"root": "", "at": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "error": redact(f"cannot build the status: {type(exc).__name__}: {exc}")}
                self._view, self._at = orjson.dumps(view), time.monotonic()
            return self._view


def make_server(output_root: str | os.PathLike[str], host: str, port: int,
                window: float = WINDOW) -> ThreadingHTTPServer:
    """A server of the page of ``output_root`` bound to (``host``, ``port``; 0 picks a free one)."""
    read_only = ReadOnly()  # the roll-up this server keeps between views, never written to the root
    views = _Views(lambda: page_view(output_root, window, read_only))
    page = render_page(None, redact(str(output_root))).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", page)
            elif path == "/status.json":
                self._send(200, "application/json", views.json())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: this server has / and /status.json\n")

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            # the page runs only its own inline script and fetches only this server
            self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                             "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the standard library's name)
            pass  # one line per poll would drown the terminal

    server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(output_root: str | os.PathLike[str], address: str, window: float = WINDOW,
          say: Callable[[str], None] = print) -> None:
    """Serve the page until interrupted; says where, and says so when another machine can reach it."""
    host, port = parse_address(address)
    try:
        server = make_server(output_root, host, port, window)
    except OSError as exc:
        raise SlimtokError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                         fix="choose another port with --serve HOST:PORT") from exc
    bound_port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    say(f"serving the status of {redact(str(output_root))} at http://{shown}:{bound_port}/ (read-only; Ctrl-C stops)")
    if not is_loopback(host):
        say(f"note: listening on {host}, not only on this machine: anyone who can reach port {bound_port} "
            "sees the job's status")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def write_report(output_root: str | os.PathLike[str], target: Path, window: float = WINDOW) -> None:
    """Write the page with the view embedded to ``target``: one file that needs no server or network."""
    view = page_view(output_root, window)
    write_atomic(Path(target), render_page(view, view["root"]).encode(), durable=False)
