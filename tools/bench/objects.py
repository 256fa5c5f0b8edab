"""Object-store clients measured on this job's request patterns, against a real S3-protocol server.

    PYTHONPATH=$PWD python3 -m tools.bench.objects --work /tmp/slimtok-objects [--s3fs-path DIR]

(from the checkout's root). Starts moto's S3 server on 127.0.0.1 (its own process, its request log
to a file) and measures each client on the same objects, in its own process:

  list      one listing of --objects small objects under a prefix: requests, seconds
  stream    sequential reads of --big objects of 16 MiB: requests, MB/s
            (obstore: one streamed GET per object; obstore-windows: slimtok's ObjectFile, 8 MiB
            ranged GETs each conditional on the ETag; s3fs: its buffered file, 8 MiB blocks)
  ranged    --ranges random 64 KiB ranged reads: requests, reads/s
  create    conditional create (If-None-Match: *) by --racers threads at once on one key: winners
            (must be 1), losers refused, requests
  cas       compare-and-swap (PUT If-Match: <etag>) by --racers threads holding the same ETag:
            winners (must be 1), losers refused with 412, requests

Requests are counted from the server's own log (one line per HTTP request), so they include every
retry and every request a client makes on its own (a HEAD before a read, say). s3fs is not a
slimtok dependency (it pins aiobotocore, which pins botocore to other versions than boto3's): give
a folder it is installed in with ``--s3fs-path`` (``pip install --target DIR s3fs``), which only
its child process puts on sys.path. Numbers go to docs/ARCHITECTURE.md ("Object storage").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.request import urlopen

BUCKET = "bench"
BIG = 16 << 20
RANGE = 64 << 10
_REQUEST = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/1\.1" (\d+)')


class Log:
    """Requests the server logged since the last :meth:`take`, by method (and ``LIST`` for listings)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size

    def take(self) -> Counter[str]:
        time.sleep(0.2)  # the server writes its log line after the response
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        counts: Counter[str] = Counter()
        for method, target, status in _REQUEST.findall(data.decode(errors="replace")):
            counts["LIST" if method == "GET" and "list-type" in target else method] += 1
            counts[f"status {status}"] += 1
        return counts


def _phase(log: Log, run: Callable[[], dict]) -> dict:
    log.take()
    start = time.perf_counter()
    result = run()
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["requests"] = dict(log.take())
    return result


def _race(racers: int, attempt: Callable[[], bool]) -> dict:
    """``attempt`` in ``racers`` threads released at once; how many won."""
    barrier = threading.Barrier(racers)
    wins: list[bool] = []

    def one() -> None:
        barrier.wait()
        wins.append(attempt())
    threads = [threading.Thread(target=one) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"winners": sum(wins), "losers": racers - sum(wins)}


def _obstore(args: argparse.Namespace, log: Log) -> dict[str, dict]:
    import obstore
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    from slimtok.remote import open_object
    from slimtok.remote.stores import _s3

    store = _s3(BUCKET)
    rng = random.Random(1)
    out: dict[str, dict] = {}
    out["list"] = _phase(log, lambda: {"objects": sum(len(c) for c in obstore.list(store, "many/", chunk_size=1000))})

    def stream() -> dict:
        total = 0
        for i in range(args.big):
            for chunk in obstore.get(store, f"big/{i}").stream(min_chunk_size=1 << 20):
                total += len(chunk)
        return {"MB/s": 0, "bytes": total}
    out["stream"] = _phase(log, stream)

    def windows() -> dict:
        total = 0
        for i in range(args.big):
            with open_object(f"s3://{BUCKET}/big/{i}") as f:
                while block := f.read(1 << 20):
                    total += len(block)
        return {"MB/s": 0, "bytes": total}
    out["stream-windows"] = _phase(log, windows)

    def ranged() -> dict:
        for _ in range(args.ranges):
            start = rng.randrange(BIG - RANGE)
            assert len(obstore.get_range(store, f"big/{rng.randrange(args.big)}", start=start, length=RANGE)) == RANGE
        return {"reads": args.ranges}
    out["ranged"] = _phase(log, ranged)

    def create() -> bool:
        try:
            obstore.put(store, "claims/create", b"mine", mode="create")
            return True
        except AlreadyExistsError:
            return False
    out["create"] = _phase(log, lambda: _race(args.racers, create))
    etag = obstore.put(store, "claims/cas", b"v0")["e_tag"]

    def cas() -> bool:
        try:
            obstore.put(store, "claims/cas", b"v1", mode={"e_tag": etag})
            return True
        except PreconditionError:
            return False
    out["cas"] = _phase(log, lambda: _race(args.racers, cas))
    return out


def _s3fs(args: argparse.Namespace, log: Log) -> dict[str, dict]:
    import s3fs
    from botocore.exceptions import ClientError

    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], use_listings_cache=False)
    rng = random.Random(1)
    out: dict[str, dict] = {}
    out["list"] = _phase(log, lambda: {"objects": len(fs.find(f"{BUCKET}/many/"))})

    def stream() -> dict:
        total = 0
        for i in range(args.big):
            with fs.open(f"{BUCKET}/big/{i}", "rb", block_size=8 << 20) as f:
                while block := f.read(1 << 20):
                    total += len(block)
        return {"MB/s": 0, "bytes": total}
    out["stream"] = _phase(log, stream)

    def ranged() -> dict:
        for _ in range(args.ranges):
            start = rng.randrange(BIG - RANGE)
            data = fs.cat_file(f"{BUCKET}/big/{rng.randrange(args.big)}", start=start, end=start + RANGE)
            assert len(data) == RANGE
        return {"reads": args.ranges}
    out["ranged"] = _phase(log, ranged)

    def refused(exc: ClientError | OSError) -> bool:
        text = str(exc)
        return "PreconditionFailed" in text or "412" in text or "ConditionalRequestConflict" in text

    def create() -> bool:
        try:
            fs.pipe_file(f"{BUCKET}/claims/create-s3fs", b"mine", mode="create")
            return True
        except (ClientError, OSError) as exc:
            if refused(exc) or isinstance(exc, FileExistsError):
                return False
            raise
    out["create"] = _phase(log, lambda: _race(args.racers, create))
    etag = fs.call_s3("put_object", Bucket=BUCKET, Key="claims/cas-s3fs", Body=b"v0")["ETag"]

    def cas() -> bool:  # s3fs has no If-Match write of its own: botocore's put_object through it
        try:
            fs.call_s3("put_object", Bucket=BUCKET, Key="claims/cas-s3fs", Body=b"v1", IfMatch=etag)
            return True
        except (ClientError, OSError) as exc:
            if refused(exc):
                return False
            raise
    out["cas"] = _phase(log, lambda: _race(args.racers, cas))
    return out


def _fill(args: argparse.Namespace) -> None:
    """The objects every client reads: --objects small ones under many/, --big 16 MiB ones under big/."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    import obstore

    from slimtok.remote.stores import _s3

    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
    store = _s3(BUCKET)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: obstore.put(store, f"many/{i:06d}.jsonl.zst", b"x" * (i % 97)), range(args.objects)))
    rng = random.Random(0)
    for i in range(args.big):
        obstore.put(store, f"big/{i}", rng.randbytes(BIG))


def _child(args: argparse.Namespace) -> None:
    log = Log(Path(args.log))
    result = _obstore(args, log) if args.client == "obstore" else _s3fs(args, log)
    for row in result.values():
        if "MB/s" in row:
            row["MB/s"] = round(row["bytes"] / 1e6 / row["seconds"], 1)
    print(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimtok-objects"))
    parser.add_argument("--objects", type=int, default=3000, help="small objects listed")
    parser.add_argument("--big", type=int, default=4, help="16 MiB objects streamed")
    parser.add_argument("--ranges", type=int, default=200, help="64 KiB ranged reads")
    parser.add_argument("--racers", type=int, default=32, help="threads racing one conditional write")
    parser.add_argument("--s3fs-path", type=Path, default=None, help="folder s3fs is installed in (--target)")
    parser.add_argument("--client", choices=("obstore", "s3fs"), help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return _child(args)
    args.work.mkdir(parents=True, exist_ok=True)
    log_path = args.work / "moto.log"
    port = _free_port()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    with log_path.open("wb") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(600):
            try:
                urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2).close()  # noqa: S310 - our own server
                break
            except OSError:
                time.sleep(0.1)
        os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                               "AWS_REGION")})
        _fill(args)
        flags = ["--objects", str(args.objects), "--big", str(args.big), "--ranges", str(args.ranges),
                 "--racers", str(args.racers), "--log", str(log_path)]
        clients = [("obstore", env)]
        if args.s3fs_path:
            clients.append(("s3fs", {**env, "PYTHONPATH": os.pathsep.join([str(args.s3fs_path), os.getcwd()])}))
        for client, client_env in clients:
            proc = subprocess.run([sys.executable, "-m", "tools.bench.objects", "--client", client, *flags],
                                  env=client_env, capture_output=True, text=True, check=True)
            for phase, row in json.loads(proc.stdout.splitlines()[-1]).items():
                print(f"{client:8} {phase:15} {json.dumps(row)}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
