"""A real S3-protocol server for tests: moto's server mode on 127.0.0.1, in its own process.

moto speaks the S3 REST protocol over plain HTTP (listing, ranged GETs, ``If-Match`` and
``If-None-Match`` with 412 on a lost race), so slimtok's real client talks to it through
``AWS_ENDPOINT_URL`` exactly as it would to a store. :meth:`S3Server.env` is what a subprocess
needs; the server runs in a child process so that the test process's own threads never slow it.

:class:`FlakyProxy` stands between a client and the server and answers chosen requests with a
transient error (503) instead of forwarding them, to show that the client retries.

``auth_after=n`` starts a server that serves the first ``n`` requests without checking
credentials and refuses every later one whose key it does not know (moto's
``INITIAL_NO_AUTH_ACTION_COUNT``): a bucket can be filled, then access is denied.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

#: The keys every test uses; moto accepts any key until it is told to check them.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_REGION": "us-east-1"}


#: One request in the server's log: ``"GET /bucket/key?x=y HTTP/1.1" 200``.
_LOGGED = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/1\.1"')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """A moto S3 server in a child process; a context manager that stops it."""

    def __init__(self, auth_after: int | None = None, log: Path | None = None) -> None:
        """``log``: a file for the server's request log (one line per request, see :meth:`requests`)."""
        self.port = _free_port()
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if auth_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
        out = subprocess.DEVNULL if log is None else log.open("ab")
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                      env=env, stdout=out, stderr=out)
        if log is not None:
            out.close()  # the child holds its own copy
        deadline = time.monotonic() + 60
        while True:
            try:
                urlopen(f"{self.url}/moto-api/", timeout=2).close()  # noqa: S310 - our own server
                break
            except (URLError, ConnectionError, OSError):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server on {self.url} did not start") from None
                time.sleep(0.1)

    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of every request the server logged so far; a LIST is a GET with ``list-type``."""
        assert self.log is not None, "start the server with log= to count its requests"
        time.sleep(0.2)  # the server writes its log line after the response
        return _LOGGED.findall(self.log.read_text(errors="replace"))

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that point an S3 client at this server."""
        return {"AWS_ENDPOINT_URL": self.url, **CREDENTIALS}

    def client(self):  # type: ignore[no-untyped-def]
        """A boto3 client of this server (for setting up buckets, not for what slimtok does)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            region_name=CREDENTIALS["AWS_REGION"])

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> list[str]:
        """Every file below ``folder`` put under ``s3://bucket/prefix/`` (the bucket is created if
        needed); returns the keys in order."""
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        keys = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = f"{prefix.strip('/')}/{path.relative_to(folder).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            keys.append(key)
        return keys

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FlakyProxy:
    """An HTTP proxy to ``target`` on 127.0.0.1 that answers the first ``fail_ranged`` ranged GETs
    with 503 Slow Down (S3's "retry later") and forwards everything else unchanged (moto does not
    check signatures, so a request signed for the proxy's address passes). ``url`` is its endpoint;
    ``failed`` and ``forwarded`` count what it did."""

    def __init__(self, target: str, fail_ranged: int) -> None:
        self.target = target.removeprefix("http://")
        self.left = fail_ranged
        self.failed = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    fail = self.command == "GET" and "Range" in self.headers and proxy.left > 0
                    proxy.left -= fail
                    proxy.failed += fail
                    proxy.forwarded += not fail
                if fail:
                    payload = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.target, timeout=60)
                conn.request(self.command, self.path, body=body or None, headers=dict(self.headers))
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():  # a HEAD's Content-Length is the object's: kept
                    if name.lower() not in ("transfer-encoding", "connection") and (
                            self.command == "HEAD" or name.lower() != "content-length"):
                        self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> FlakyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
