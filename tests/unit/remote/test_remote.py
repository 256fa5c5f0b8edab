"""slimtok.remote: URLs, the windowed object file, and reads from a real S3-protocol server (moto)."""

from __future__ import annotations

import hashlib
import random

import pytest
import zstandard

from helpers.s3_server import FlakyProxy
from slimtok.errors import ObjectStoreError, ShardReadError
from slimtok.formats.streams import _zstd_blocks, data_blocks, open_shard
from slimtok.manifest import ShardEntry, build_manifest, manifest_digest
from slimtok.remote import ObjectFile, is_remote, list_objects, open_object, parse, stat_object
from slimtok.remote.files import WINDOW, WINDOWS_HELD


@pytest.mark.parametrize(("url", "scheme", "bucket", "key", "revision"), [
    ("s3://bkt/a/b.jsonl.zst", "s3", "bkt", "a/b.jsonl.zst", None),
    ("s3://bkt", "s3", "bkt", "", None),
    ("hf://datasets/acme/sp@v1/train/x.parquet", "hf", "datasets/acme/sp", "train/x.parquet", "v1"),
    ("hf://datasets/acme/sp", "hf", "datasets/acme/sp", "", None),
])
def test_urls_parse_into_their_parts(url, scheme, bucket, key, revision):
    u = parse(url)
    assert (u.scheme, u.bucket, u.key, u.revision) == (scheme, bucket, key, revision)
    assert is_remote(url) and not is_remote("/data/s3:/x") and not is_remote("bkt/a")


def test_a_url_of_another_kind_is_refused_naming_it():
    with pytest.raises(ObjectStoreError, match=r"^gs://bkt/x: not an object URL; write s3://"):
        parse("gs://bkt/x")


class _Counted:
    """``fetch`` over bytes in memory, recording every range asked for."""

    def __init__(self, data: bytes):
        self.data = data
        self.ranges: list[tuple[int, int]] = []

    def __call__(self, start: int, end: int) -> bytes:
        self.ranges.append((start, end))
        return self.data[start:end]


def test_object_file_reads_and_seeks_like_the_bytes_it_stands_for():
    rng = random.Random(7)
    data = rng.randbytes(100_003)
    fetch = _Counted(data)
    f = ObjectFile("s3://b/k", len(data), '"v"', fetch, window=4096)
    for _ in range(500):
        pos, n = rng.randrange(len(data) + 10), rng.choice([0, 1, 17, 4095, 4096, 4097, 9000])
        assert f.pread(n, pos) == data[pos:pos + n]
        assert len(f._held) <= WINDOWS_HELD
        f.seek(pos)
        assert f.read(n) == data[pos:pos + n]
        assert f.tell() == (pos if pos >= len(data) else min(len(data), pos + n))
    assert f.seek(-5, 2) == len(data) - 5 and f.read() == data[-5:]


def test_a_sequential_read_fetches_each_byte_once_in_windows():
    data = bytes(range(256)) * 1000
    fetch = _Counted(data)
    f = ObjectFile("s3://b/k", len(data), '"v"', fetch, window=10_000)
    out = bytearray()
    while chunk := f.read(3000):
        out += chunk
    assert out == data
    assert fetch.ranges == [(s, min(len(data), s + 10_000)) for s in range(0, len(data), 10_000)]
    fetch.ranges.clear()
    assert f.pread(25_000, 1) == data[1:25_001] and fetch.ranges == [(1, 25_001)]  # long: one request


def test_zstd_through_an_object_file_decompresses_as_the_whole_file_does(tmp_path):
    rng = random.Random(3)
    frames = [b"".join(b'{"text": "%d %s"}\n' % (i, rng.randbytes(40).hex().encode()) for i in range(2000))
              for _ in range(3)]
    raw = b"".join(zstandard.ZstdCompressor(level=3).compress(frame) for frame in frames)
    f = ObjectFile("s3://b/x.jsonl.zst", len(raw), '"v"', _Counted(raw), window=1000)  # headers cross windows
    assert b"".join(_zstd_blocks("s3://b/x.jsonl.zst", f, 1 << 16)) == b"".join(frames)


@pytest.fixture
def bucket(s3_server, monkeypatch):
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    client = s3_server.client()
    name = f"unit-{random.randrange(1 << 30)}"
    client.create_bucket(Bucket=name)
    return name, client


def test_list_and_stat_give_sizes_and_etags(bucket):
    name, client = bucket
    bodies = {f"p/{k}.jsonl": f"{k}\n".encode() * (k + 1) for k in range(5)} | {"other/x.jsonl": b"x\n"}
    for key, body in bodies.items():
        client.put_object(Bucket=name, Key=key, Body=body)
    listed = list_objects(f"s3://{name}/p")
    assert [(o.url, o.size, o.version) for o in listed] == [
        (f"s3://{name}/{key}", len(body), '"' + hashlib.md5(body).hexdigest() + '"')
        for key, body in sorted(bodies.items()) if key.startswith("p/")]
    assert stat_object(listed[0].url) == listed[0]


def test_an_object_replaced_while_being_read_is_refused_naming_both_versions(bucket):
    name, client = bucket
    old, new = b"a" * (20 << 20), b"b" * (20 << 20)
    client.put_object(Bucket=name, Key="big.jsonl", Body=old)
    f = open_object(f"s3://{name}/big.jsonl")
    assert f.read(10) == b"a" * 10  # the first window is held
    client.put_object(Bucket=name, Key="big.jsonl", Body=new)
    f.seek(16 << 20)
    with pytest.raises(ObjectStoreError) as err:
        f.read(10)
    assert hashlib.md5(old).hexdigest() in str(err.value) and hashlib.md5(new).hexdigest() in str(err.value)
    assert str(err.value).startswith(f"s3://{name}/big.jsonl: changed while being read")


def test_the_opener_names_a_missing_object_as_a_shard_read_error(bucket):
    name, _ = bucket
    with pytest.raises(ShardReadError, match=rf"^s3://{name}/none.jsonl.zst: object not found"):
        list(data_blocks(f"s3://{name}/none.jsonl.zst", "zstd", 1 << 20))
    with pytest.raises(ShardReadError, match="object not found"):
        open_shard(f"s3://{name}/none.parquet")


def test_an_empty_object_is_an_empty_file(bucket):
    name, client = bucket
    client.put_object(Bucket=name, Key="e.jsonl", Body=b"")
    with pytest.raises(ShardReadError, match=r"empty file \(0 bytes\)"):
        list(data_blocks(f"s3://{name}/e.jsonl", "", 1 << 20))


def test_manifest_of_a_prefix_leaves_hidden_objects_out_and_names_what_it_saw(bucket):
    name, client = bucket
    for key in ("sp/train/a.jsonl.zst", "sp/.cache/b.jsonl.zst", "sp/train/.c.jsonl.zst", "sp/readme.md"):
        client.put_object(Bucket=name, Key=key, Body=b"x")
    root, entries = build_manifest(f"s3://{name}/sp")
    assert root == f"s3://{name}/sp/" and [e.id for e in entries] == ["train/a"]
    with pytest.raises(Exception, match=r"no shards matching \*\.parquet found among its 2 files"):
        build_manifest(f"s3://{name}/sp/", ("*.parquet",))


def test_the_digest_of_local_entries_is_unchanged_and_covers_an_objects_version():
    import orjson

    local = [ShardEntry("a", "train", 0, 0, "/d/a.jsonl.zst", 10), ShardEntry("b", "test", 0, 1, "/d/b.jsonl.zst", 5)]
    old = hashlib.sha256(b"".join(orjson.dumps([e.id, e.split, e.chunk, e.index, e.size]) + b"\n" for e in local))
    assert manifest_digest(local) == old.hexdigest()
    assert "version" not in local[0].to_dict()
    one = [ShardEntry("a", "train", 0, 0, "s3://b/a.jsonl.zst", 10, '"e1"')]
    two = [ShardEntry("a", "train", 0, 0, "s3://b/a.jsonl.zst", 10, '"e2"')]
    assert manifest_digest(one) != manifest_digest(two) and one[0].to_dict()["version"] == '"e1"'


def test_transient_errors_are_retried_and_the_bytes_come_whole(bucket, s3_server, monkeypatch):
    name, client = bucket
    data = random.Random(5).randbytes(WINDOW + 12345)
    client.put_object(Bucket=name, Key="flaky.jsonl", Body=data)
    with FlakyProxy(s3_server.url, fail_ranged=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # a new client, through the proxy
        with open_object(f"s3://{name}/flaky.jsonl") as f:
            assert f.read() == data
            assert f.requests == 2  # two windows, each fetched once as far as the reader knows
        assert proxy.failed == 3 and proxy.forwarded == 1 + 2  # a HEAD, then two ranged GETs that got through


def test_the_disk_sampler_reads_an_object_as_it_reads_the_same_local_file(bucket, tmp_path):
    from helpers.corpus import make_dataset
    from slimtok.budget import sample_texts

    name, client = bucket
    ds = make_dataset(tmp_path / "ds", train_shards=1, docs_per_shard=40, holdout_docs=1)
    local = ds / "train/chunk1/example_train_0.jsonl.zst"
    client.put_object(Bucket=name, Key="s/x.jsonl.zst", Body=local.read_bytes())
    remote = sample_texts(f"s3://{name}/s/x.jsonl.zst", "text", 1 << 20)
    assert remote is not None and remote == sample_texts(str(local), "text", 1 << 20)
    client.delete_object(Bucket=name, Key="s/x.jsonl.zst")
    assert sample_texts(f"s3://{name}/s/x.jsonl.zst", "text", 1 << 20) is None  # gone: no sample, no crash
