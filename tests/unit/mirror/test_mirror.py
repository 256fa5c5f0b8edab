"""`slimtok mirror` through the real huggingface_hub client against a local Hub (tests/helpers/hub_server.py).

huggingface_hub reads HF_ENDPOINT, HF_HOME, the token path and its Xet/telemetry switches once, at
import, and another test module may have imported it already. So the ``hf`` fixture sets the
environment (for subprocesses) and also points the already-imported ``huggingface_hub.constants`` at
the local server, with no token and no Xet; a guard refuses name lookups of any host but localhost,
so a missed setting fails loudly instead of reaching huggingface.co.
"""

from __future__ import annotations

import io
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from huggingface_hub import constants
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from helpers import REPO_ROOT
from helpers.hub_server import FakeHub, HubRepo
from helpers.terminal import drain_pty, terminal
from slimtok.manifest import build_manifest
from slimtok.mirror import (
    MIRROR_RECORD_NAME,
    MirrorError,
    compare_with_mirror_record,
    find_mirror_record,
    load_mirror_record,
    mirror,
)
from slimtok.progress import ProgressDisplay
from slimtok.space import DiskSpace, format_bytes
from slimtok.tokenizer import TokenizerError, load_tokenizer

SLIM = "acme/SlimPajama-mini"
TOK = "acme/tiny-bpe"
GATED = "acme/gated-slim"
GRANTED_TOKEN = "hf_granted_test_token"
SETS = ("RedPajamaCommonCrawl", "RedPajamaC4", "RedPajamaGithub", "RedPajamaBook", "RedPajamaArXiv",
        "RedPajamaWikipedia", "RedPajamaStackExchange")
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but "
         "have an they you were her she there one all we data token shard chunk model train holdout").split()


def _shard(seed: int, docs: int = 250) -> bytes:
    """A SlimPajama-like shard: zstd-compressed jsonl with text and meta.redpajama_set_name."""
    rng = random.Random(seed)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60))),
                         "meta": {"redpajama_set_name": rng.choice(SETS)}}) for _ in range(docs)]
    return zstandard.ZstdCompressor(level=3).compress(("\n".join(lines) + "\n").encode())


def _slimpajama_files() -> dict[str, bytes]:
    layout = {"train/chunk1": ("train", 3), "train/chunk2": ("train", 2), "validation/chunk1": ("holdout", 2),
              "test/chunk1": ("holdout", 1)}
    paths = [f"{folder}/example_{kind}_{i}.jsonl.zst" for folder, (kind, count) in layout.items() for i in range(count)]
    files = {path: _shard(seed) for seed, path in enumerate(paths)}
    files["README.md"] = b"# SlimPajama-mini\n\nA few generated shards laid out like SlimPajama-627B.\n"
    files[".gitattributes"] = b"*.zst filter=lfs diff=lfs merge=lfs -text\n"
    return files


def _tokenizer_json() -> bytes:
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=150, special_tokens=["[UNK]", "<|endoftext|>"], show_progress=False)
    tok.train_from_iterator([" ".join(WORDS), "the model reads a shard of tokens", "we train on data"], trainer)
    return tok.to_str().encode()


SLIM_FILES = _slimpajama_files()
SHARDS = sorted(p for p in SLIM_FILES if p.endswith(".jsonl.zst"))
TOK_FILES = {
    "tokenizer.json": _tokenizer_json(),
    "tokenizer_config.json": json.dumps({"eos_token": "<|endoftext|>",
                                         "tokenizer_class": "PreTrainedTokenizerFast"}).encode(),
    "config.json": b'{"model_type": "gpt2"}\n',
    "model.safetensors": random.Random(7).randbytes(4096),
}


@pytest.fixture(scope="module")
def hub():
    with FakeHub(page_size=4) as server:  # small pages: the tree listing is paginated
        server.add_repo(SLIM, SLIM_FILES)
        server.add_repo(TOK, TOK_FILES, repo_type="model")
        server.add_repo(GATED, {p: SLIM_FILES[p] for p in SHARDS[:2]}, gated=True, granted_tokens=(GRANTED_TOKEN,))
        yield server


def _point_client_at(monkeypatch: pytest.MonkeyPatch, url: str, home: Path) -> None:
    """Point huggingface_hub, imported or not, at ``url``, with ``home`` as HF_HOME and no token."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE", "HF_HUB_CACHE",
                 "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"HF_ENDPOINT": url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
                        "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
        monkeypatch.setenv(name, value)
    for name, value in {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,  # telemetry and agent detection would call the endpoint
        "HF_HUB_DISABLE_XET": True,
    }.items():
        monkeypatch.setattr(constants, name, value)


@pytest.fixture
def hf(hub, tmp_path, monkeypatch):
    """The fake Hub, with huggingface_hub pointed at it and its request log and faults cleared."""
    _point_client_at(monkeypatch, hub.url, tmp_path / "hf_home")
    real_getaddrinfo = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(f"test guard: refusing to resolve {host!r}; only the local fake Hub is allowed")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    hub.reset_requests()
    hub.clear_faults()
    yield hub
    hub.clear_faults()


def _repo(hub: FakeHub, repo_id: str = SLIM, repo_type: str = "dataset") -> HubRepo:
    return hub.repos[(repo_type, repo_id)]


def _tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (links followed) except the mirror record and huggingface_hub's .cache."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != MIRROR_RECORD_NAME and ".cache" not in p.relative_to(root).parts}


def _quiet(message: str) -> None:
    pass


# -- full mirror, manifest, filters ---------------------------------------------------------------


def test_full_mirror_is_byte_identical_and_recorded(hf, tmp_path):
    cache = tmp_path / "cache"
    result = mirror(SLIM, cache_dir=cache, log=_quiet)

    commit = _repo(hf).commit
    repo_folder = cache / "datasets--acme--SlimPajama-mini"
    assert result.snapshot_path == repo_folder / "snapshots" / commit
    assert _tree(result.snapshot_path) == SLIM_FILES
    assert (repo_folder / "refs" / "main").read_text() == commit
    assert (result.commit, result.files, result.bytes) == (commit, len(SLIM_FILES),
                                                          sum(map(len, SLIM_FILES.values())))
    assert (result.downloaded_files, result.skipped_files, result.skipped_bytes) == (len(SLIM_FILES), 0, 0)
    assert hf.count("GET", "tree") > 1  # the listing came in several pages

    assert result.record_path == result.snapshot_path / MIRROR_RECORD_NAME
    record = json.loads(result.record_path.read_text())
    assert (record["repo_id"], record["repo_type"], record["commit"]) == (SLIM, "dataset", commit)
    assert [(r["revision"], r["include"], r["exclude"], r["downloaded_files"]) for r in record["runs"]] == \
        [("main", [], [], len(SLIM_FILES))]
    assert record["runs"][0]["started_at"] <= record["runs"][0]["finished_at"]
    by_path = {f["path"]: f for f in record["files"]}
    assert sorted(by_path) == sorted(SLIM_FILES)
    for path, content in SLIM_FILES.items():
        hub_file = _repo(hf).files[path]
        assert (by_path[path]["size"], by_path[path]["sha256"]) == \
            (len(content), hub_file.sha256 if hub_file.lfs else None)

    # Stage 2 of the workflow: the manifest of the cache repo folder lists every shard, and agrees with the record.
    root, entries = build_manifest(repo_folder)
    assert root == result.snapshot_path
    relpaths = [Path(e.path).relative_to(root).as_posix() for e in entries]
    assert sorted(relpaths) == SHARDS
    assert compare_with_mirror_record(repo_folder, relpaths) == []


@pytest.mark.parametrize("mode", ["cache_dir", "local_dir"])
def test_progress_counts_the_files_and_the_bytes_fetched(hf, tmp_path, mode):
    out, made = io.StringIO(), []

    def display(files, nbytes):
        made.append(ProgressDisplay(files, nbytes, unit="files", stream=out, every=0, label="mirror"))
        return made[-1]

    train = sorted(p for p in SLIM_FILES if p.startswith("train/"))
    first = mirror(SLIM, include=["train/*"], log=_quiet, progress=display, **{mode: tmp_path / mode})
    fetched = sum(len(SLIM_FILES[p]) for p in train)
    assert (made[0].total_shards, made[0].total_bytes, made[0].figures) == \
        (len(train), fetched, (len(train), None, None, fetched))
    assert first.downloaded_bytes == fetched
    assert out.getvalue().splitlines()[-1].startswith(f"mirror: files {len(train)}/{len(train)} · ")

    mirror(SLIM, include=["train/*"], log=_quiet, progress=display, **{mode: tmp_path / mode})
    assert (made[1].total_bytes, made[1].figures) == (0, (len(train), None, None, 0))  # present files count


def test_progress_is_a_bar_on_a_terminal(hf, tmp_path):
    master, slave = terminal()
    with os.fdopen(slave, "w") as tty:
        mirror(SLIM, cache_dir=tmp_path / "cache", log=_quiet,
               progress=lambda files, nbytes: ProgressDisplay(files, nbytes, unit="files", stream=tty, label="mirror"))
        seen = drain_pty(master)
    os.close(master)
    assert f"mirror: files {len(SLIM_FILES)}/{len(SLIM_FILES)} · " in seen and "100%|" in seen


def test_include_and_exclude_select_what_snapshot_download_fetches(hf, tmp_path):
    result = mirror(SLIM, include=["train/chunk1/*", "validation/"], exclude=["*_1.jsonl.zst"],
                    cache_dir=tmp_path / "cache", log=_quiet)

    expected = ["train/chunk1/example_train_0.jsonl.zst", "train/chunk1/example_train_2.jsonl.zst",
                "validation/chunk1/example_holdout_0.jsonl.zst"]
    assert sorted(_tree(result.snapshot_path)) == expected
    assert sorted(r.path for r in hf.requests if r.method == "GET" and r.route == "resolve") == expected
    assert [f.path for f in load_mirror_record(result.record_path).files] == expected
    assert result.files == 3


def test_globs_matching_nothing_are_refused_with_an_example_path(hf, tmp_path):
    words = r"dataset acme/SlimPajama-mini: no file at \w+ passes .*; globs .* such as '\w+/chunk1/example_"
    with pytest.raises(MirrorError, match=words):
        mirror(SLIM, include=["chunk1/*"], cache_dir=tmp_path / "cache", log=_quiet)
    assert hf.count(route="resolve") == 0


# -- resume ---------------------------------------------------------------------------------------


def test_dropped_connection_resumes_with_range_to_identical_bytes(hf, tmp_path, monkeypatch):
    shard = "train/chunk2/example_train_1.jsonl.zst"
    content = SLIM_FILES[shard]
    # huggingface_hub writes what it received in DOWNLOAD_CHUNK_SIZE pieces (10 MiB); shrink them so a
    # drop in a small test file leaves bytes on disk to resume from.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 2048)
    assert len(content) > 3 * 2048
    hf.drop_connection(SLIM, shard, after_bytes=len(content) * 2 // 3)

    result = mirror(SLIM, include=["train/chunk2/*"], cache_dir=tmp_path / "cache", log=_quiet)

    assert (result.snapshot_path / shard).read_bytes() == content
    gets = [r for r in hf.requests if r.method == "GET" and r.path == shard]
    assert [r.status for r in gets] == [200, 206]
    assert gets[1].range is not None and int(gets[1].range.removeprefix("bytes=").rstrip("-")) > 0


def _run_mirror_process(url: str, home: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """`mirror` in a fresh interpreter configured only through the environment, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(REPO_ROOT))
    code = ("import sys\nfrom slimtok.mirror import MirrorError, mirror\n"
            f"try:\n    r = mirror({SLIM!r}, include=['train/*'], cache_dir={str(cache)!r})\n"
            "except MirrorError as e:\n    sys.exit(f'ERROR: {e}')\n"
            "print('RESULT', r.downloaded_files, r.skipped_files)\n")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_failed_file_is_the_only_one_fetched_by_the_next_process(hf, tmp_path):
    broken = "train/chunk1/example_train_1.jsonl.zst"
    train = [p for p in SHARDS if p.startswith("train/")]
    cache = tmp_path / "cache"
    hf.fail_file(SLIM, broken, status=500)

    first = _run_mirror_process(hf.url, tmp_path / "home", cache)

    assert first.returncode != 0
    assert "re-running the same command resumes" in first.stderr, first.stderr
    snapshot = cache / "datasets--acme--SlimPajama-mini" / "snapshots" / _repo(hf).commit
    assert sorted(_tree(snapshot)) == sorted(set(train) - {broken})
    assert not (snapshot / MIRROR_RECORD_NAME).exists()  # nothing is recorded for an incomplete run
    assert not (cache / "datasets--acme--SlimPajama-mini" / "refs" / "main").exists()

    hf.clear_faults()
    hf.reset_requests()
    second = _run_mirror_process(hf.url, tmp_path / "home", cache)

    assert second.returncode == 0, second.stderr
    assert f"RESULT 1 {len(train) - 1}" in second.stdout
    assert [(r.method, r.path) for r in hf.requests if r.route == "resolve"] == [("HEAD", broken), ("GET", broken)]
    assert _tree(snapshot) == {p: SLIM_FILES[p] for p in train}


@pytest.mark.parametrize("mode", ["cache_dir", "local_dir"])
def test_a_failed_file_does_not_stop_the_files_after_it(hf, tmp_path, mode):
    # one download at a time, the first file in the queue failing: every other file is still fetched
    train = sorted(p for p in SHARDS if p.startswith("train/"))
    hf.fail_file(SLIM, train[0], status=503)
    target = {mode: tmp_path / mode}

    with pytest.raises(MirrorError) as info:
        mirror(SLIM, include=["train/*"], max_workers=1, log=_quiet, **target)

    message = str(info.value)
    assert f"1 of {len(train)} file(s)" in message and train[0] in message and "503" in message
    assert sorted(r.path for r in hf.requests if r.method == "GET" and r.route == "resolve" and r.status == 200) \
        == train[1:]
    hf.clear_faults()
    hf.reset_requests()
    result = mirror(SLIM, include=["train/*"], max_workers=1, log=_quiet, **target)
    assert [r.path for r in hf.requests if r.method == "GET" and r.route == "resolve"] == [train[0]]
    assert _tree(result.snapshot_path) == {p: SLIM_FILES[p] for p in train}


def test_refused_access_to_a_file_stops_the_run_at_once(hf, tmp_path):
    train = sorted(p for p in SHARDS if p.startswith("train/"))
    hf.fail_file(SLIM, train[0], status=403)

    with pytest.raises(MirrorError, match="refused access"):
        mirror(SLIM, include=["train/*"], max_workers=1, cache_dir=tmp_path / "cache", log=_quiet)

    # the failing file was the first of the queue; the one thread may have begun the next file
    # before the failure was seen, but no later one
    gets = [r.path for r in hf.requests if r.method == "GET" and r.route == "resolve"]
    assert gets[0] == train[0] and len(gets) <= 2 < len(train)


@pytest.mark.parametrize("mode", ["cache_dir", "local_dir"])
def test_second_run_downloads_nothing(hf, tmp_path, mode):
    target = {mode: tmp_path / mode}
    first = mirror(SLIM, include=["train/*"], log=_quiet, **target)
    hf.reset_requests()

    second = mirror(SLIM, include=["train/*"], log=_quiet, **target)

    assert hf.count(route="resolve") == 0  # neither HEAD nor GET of any file
    assert (second.downloaded_files, second.downloaded_bytes) == (0, 0)
    assert (second.skipped_files, second.skipped_bytes) == (first.files, first.bytes)
    assert second.snapshot_path == first.snapshot_path
    assert len(load_mirror_record(second.record_path).runs) == 2


def test_local_dir_file_with_wrong_content_is_fetched_again(hf, tmp_path):
    local = tmp_path / "slim"
    mirror(SLIM, include=["validation/*"], local_dir=local, log=_quiet)
    shard = local / "validation/chunk1/example_holdout_0.jsonl.zst"
    damaged = bytearray(shard.read_bytes())
    damaged[100] ^= 0xFF  # same size, different content: only the sha256 tells
    shard.write_bytes(bytes(damaged))
    hf.reset_requests()
    messages: list[str] = []

    result = mirror(SLIM, include=["validation/*"], local_dir=local, log=messages.append)

    assert shard.read_bytes() == SLIM_FILES["validation/chunk1/example_holdout_0.jsonl.zst"]
    assert (result.downloaded_files, result.skipped_files) == (1, 1)
    assert any("differs from the Hub's copy" in m for m in messages)


def test_cache_relinks_a_present_blob_and_refetches_a_truncated_one(hf, tmp_path):
    first = mirror(SLIM, include="train/chunk2/*", cache_dir=tmp_path / "cache", log=_quiet)
    unlinked, truncated = (first.snapshot_path / p for p in SHARDS if p.startswith("train/chunk2/"))
    unlinked.unlink()  # the blob stays: huggingface_hub links it again without downloading
    truncated.resolve().write_bytes(b"cut")  # the blob itself is damaged
    hf.reset_requests()
    messages: list[str] = []

    second = mirror(SLIM, include="train/chunk2/*", cache_dir=tmp_path / "cache", log=messages.append)

    assert _tree(second.snapshot_path) == {p: SLIM_FILES[p] for p in SHARDS if p.startswith("train/chunk2/")}
    assert [r.path for r in hf.requests if r.method == "GET" and r.route == "resolve"] == \
        [truncated.relative_to(second.snapshot_path).as_posix()]
    assert (second.downloaded_files, second.skipped_files) == (1, 1)
    assert any("differs from the Hub's copy" in m for m in messages)


def test_a_commit_as_revision_is_recorded_and_writes_no_ref(hf, tmp_path):
    commit = _repo(hf).commit
    result = mirror(SLIM, revision=commit, include=["README.md"], cache_dir=tmp_path / "cache", log=_quiet)

    assert result.commit == commit
    assert load_mirror_record(result.record_path).runs[0].revision == commit
    assert not (tmp_path / "cache" / "datasets--acme--SlimPajama-mini" / "refs").exists()


# -- errors ---------------------------------------------------------------------------------------


def test_gated_repo_without_token_says_how_to_log_in(hf, tmp_path):
    with pytest.raises(MirrorError) as info:
        mirror(GATED, cache_dir=tmp_path / "cache", log=_quiet)
    assert "gated" in str(info.value) and "hf auth login" in str(info.value) and "HF_TOKEN" in str(info.value)
    assert hf.count(route="tree") == 0 and hf.count(route="resolve") == 0  # refused before listing


def test_gated_repo_with_a_token_without_access(hf, tmp_path, monkeypatch, capsys):
    token = "hf_this_token_was_not_granted"
    monkeypatch.setenv("HF_TOKEN", token)

    with pytest.raises(MirrorError) as info:
        mirror(GATED, cache_dir=tmp_path / "cache")

    assert "HTTP 403" in str(info.value) and "hf auth login" in str(info.value)
    assert hf.count("HEAD", "resolve", status=403) > 0
    captured = capsys.readouterr()
    assert token not in str(info.value) + captured.out + captured.err


def test_gated_repo_with_a_granted_token(hf, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GRANTED_TOKEN)
    result = mirror(GATED, cache_dir=tmp_path / "cache", log=_quiet)
    assert _tree(result.snapshot_path) == {p: SLIM_FILES[p] for p in SHARDS[:2]}


@pytest.mark.parametrize(("repo_id", "kwargs", "words"), [
    ("acme/no-such-repo", {}, "dataset acme/no-such-repo: was not found on http://127.0.0.1"),
    (TOK, {}, "dataset acme/tiny-bpe: was not found"),  # a model asked for as a dataset
    (SLIM, {"revision": "v9"}, "dataset acme/SlimPajama-mini: revision 'v9' does not exist"),
])
def test_unknown_repo_or_revision(hf, tmp_path, repo_id, kwargs, words):
    with pytest.raises(MirrorError, match=words):
        mirror(repo_id, cache_dir=tmp_path / "cache", log=_quiet, **kwargs)


def test_unreachable_hub_says_rerunning_resumes(hf, tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    _point_client_at(monkeypatch, dead_url, tmp_path / "hf_home")

    words = "dataset acme/SlimPajama-mini: network failure .*; .*re-running the same command resumes"
    with pytest.raises(MirrorError, match=words):
        mirror(SLIM, cache_dir=tmp_path / "cache", log=_quiet)


def test_free_space_refusal_gives_the_numbers(hf, tmp_path, monkeypatch):
    to_fetch = sum(len(SLIM_FILES[p]) for p in SHARDS)
    # A disk of 10x the download with 2x free: 10% would remain, under the 20% headroom.
    monkeypatch.setattr("slimtok.space.disk_space", lambda path: DiskSpace(str(path), 2 * to_fetch, 10 * to_fetch))

    with pytest.raises(MirrorError) as info:
        mirror(SLIM, include=["*.jsonl.zst"], cache_dir=tmp_path / "cache", log=_quiet)

    message = str(info.value)
    for number in (f"{format_bytes(to_fetch)} to download", f"{format_bytes(2 * to_fetch)} free",
                   f"of {format_bytes(10 * to_fetch)}", "leave 10.0% free", "at least 20%"):
        assert number in message, (number, message)
    assert hf.count(route="resolve") == 0
    assert not (tmp_path / "cache").exists()

    # The same disk passes with a lower headroom requirement.
    result = mirror(SLIM, include=["*.jsonl.zst"], cache_dir=tmp_path / "cache", min_free_fraction=0.05, log=_quiet)
    assert result.downloaded_bytes == to_fetch


def test_free_space_refusal_on_the_real_disk(hf, tmp_path):
    with pytest.raises(MirrorError, match="not enough disk space .* at least 100% must stay free; free some space"):
        mirror(SLIM, cache_dir=tmp_path / "cache", min_free_fraction=0.999999, log=_quiet)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"cache_dir": "a", "local_dir": "b"}, "both a cache dir and a local dir were given; pass either"),
    ({"repo_type": "space"}, "unknown repo type 'space'; use one of"),
    ({"min_free_fraction": 1.0}, r"min_free_fraction is 1.0; min_free_fraction must be in \[0, 1\)"),
    ({"max_workers": 0}, "max_workers is 0; max_workers must be at least 1"),
])
def test_bad_arguments(hf, kwargs, words):
    with pytest.raises(MirrorError, match=words):
        mirror(SLIM, log=_quiet, **kwargs)


# -- the record and the manifest ------------------------------------------------------------------


def test_record_names_a_deleted_shard_in_cache_mode(hf, tmp_path):
    result = mirror(SLIM, cache_dir=tmp_path / "cache", log=_quiet)
    deleted = "train/chunk1/example_train_1.jsonl.zst"
    (result.snapshot_path / deleted).unlink()
    repo_folder = result.snapshot_path.parent.parent

    root, entries = build_manifest(repo_folder)
    relpaths = [Path(e.path).relative_to(root).as_posix() for e in entries]
    assert compare_with_mirror_record(repo_folder, relpaths) == [deleted]
    assert compare_with_mirror_record(result.snapshot_path, relpaths) == [deleted]
    assert find_mirror_record(repo_folder) == find_mirror_record(result.snapshot_path) == result.record_path

    # A manifest of one split: paths are relative to that folder, and so is the answer.
    train = result.snapshot_path / "train"
    _, entries = build_manifest(train)
    assert compare_with_mirror_record(train, [Path(e.path).relative_to(train).as_posix() for e in entries]) == \
        ["chunk1/example_train_1.jsonl.zst"]


def test_record_names_a_deleted_shard_in_local_dir_mode(hf, tmp_path):
    local = tmp_path / "slim"
    result = mirror(SLIM, include=["validation/*", "test/*"], local_dir=local, log=_quiet)
    assert result.snapshot_path == local.resolve() and result.record_path == local.resolve() / MIRROR_RECORD_NAME
    (local / "test/chunk1/example_holdout_0.jsonl.zst").unlink()

    root, entries = build_manifest(local)
    relpaths = [Path(e.path).relative_to(root).as_posix() for e in entries]
    assert compare_with_mirror_record(local, relpaths) == ["test/chunk1/example_holdout_0.jsonl.zst"]


def test_runs_at_the_same_commit_add_up_in_the_record(hf, tmp_path):
    mirror(SLIM, include=["train/chunk1/*"], cache_dir=tmp_path / "cache", log=_quiet)
    result = mirror(SLIM, include=["train/chunk2/*"], cache_dir=tmp_path / "cache", log=_quiet)

    record = load_mirror_record(result.record_path)
    assert [f.path for f in record.files] == [p for p in SHARDS if p.startswith("train/")]
    assert [r.include for r in record.runs] == [["train/chunk1/*"], ["train/chunk2/*"]]
    assert compare_with_mirror_record(result.snapshot_path, [f.path for f in record.files]) == []


def test_no_record_means_nothing_to_compare(tmp_path):
    assert find_mirror_record(tmp_path) is None
    assert compare_with_mirror_record(tmp_path, []) == []


def test_damaged_record_is_reported(tmp_path):
    (tmp_path / MIRROR_RECORD_NAME).write_text("{not json")
    with pytest.raises(MirrorError, match="not a readable slimtok mirror record"):
        compare_with_mirror_record(tmp_path, [])


# -- tokenizer repo -------------------------------------------------------------------------------


def test_model_repo_tokenizer_files_load(hf, tmp_path):
    result = mirror(TOK, repo_type="model", include=["tokenizer*"], cache_dir=tmp_path / "cache", log=_quiet)

    assert result.snapshot_path.parent.parent.name == "models--acme--tiny-bpe"
    assert sorted(_tree(result.snapshot_path)) == ["tokenizer.json", "tokenizer_config.json"]
    original = Tokenizer.from_str(TOK_FILES["tokenizer.json"].decode())
    mirrored = Tokenizer.from_file(str(result.snapshot_path / "tokenizer.json"))
    text = "the model reads a shard of tokens"
    assert mirrored.encode(text).ids == original.encode(text).ids
    # What `slimtok tokenize --tokenizer <snapshot folder>` does with it.
    loaded = load_tokenizer(str(result.snapshot_path))
    assert (loaded.eos_token, loaded.eos_token_id) == ("<|endoftext|>", original.token_to_id("<|endoftext|>"))


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_mirror(hf, tmp_path):
    """Needs `mirror` in slimtok/cli.py (the command in the issue #4 hand-off); fails, not skips, until then."""
    from click.testing import CliRunner

    from slimtok.cli import main

    assert "mirror" in getattr(main, "commands", {}), "slimtok.cli.main has no `mirror` command yet"
    cache = tmp_path / "cache"
    args = ["mirror", SLIM, "--repo-type", "dataset", "--include", "validation/*", "--exclude", "*_1.jsonl.zst",
            "--cache-dir", str(cache), "--max-workers", "2", "--min-free-fraction", "0.1"]

    ok = CliRunner().invoke(main, args)

    assert ok.exit_code == 0, ok.output
    snapshot = cache / "datasets--acme--SlimPajama-mini" / "snapshots" / _repo(hf).commit
    assert ok.stdout.strip().splitlines()[-1] == str(snapshot)
    assert "downloaded 1" in ok.output and "skipped 0 already present" in ok.output
    assert "mirror: files 1/1 · " in ok.stderr and "%|" not in ok.stderr  # not a terminal: the plain line
    assert sorted(_tree(snapshot)) == ["validation/chunk1/example_holdout_0.jsonl.zst"]

    refused = CliRunner().invoke(main, ["mirror", GATED, "--cache-dir", str(cache)])
    assert refused.exit_code != 0
    assert "hf auth login" in refused.output and "Traceback" not in refused.output


def test_cli_manifest_warns_or_fails_strict_on_a_shard_missing_from_the_mirror(hf, tmp_path):
    from click.testing import CliRunner

    from slimtok.cli import main

    result = mirror(SLIM, cache_dir=tmp_path / "cache", log=_quiet)
    deleted = "train/chunk1/example_train_1.jsonl.zst"
    (result.snapshot_path / deleted).unlink()
    repo_folder = result.snapshot_path.parent.parent
    args = ["manifest", "--dataset-dir", str(repo_folder), "--output-dir", str(tmp_path / "m")]
    warned = CliRunner().invoke(main, args)
    assert warned.exit_code == 0 and f"missing under {result.snapshot_path}: {deleted}" in warned.output
    strict = CliRunner().invoke(main, args + ["--strict", "--output-dir", str(tmp_path / "m2")])
    assert strict.exit_code == 2 and deleted in strict.output and not (tmp_path / "m2").exists()


def test_tokenizer_by_hub_repo_id_loads_through_the_hub_client(hf):
    """`slimtok tokenize --tokenizer org/name` fetches tokenizer.json and tokenizer_config.json."""
    loaded = load_tokenizer(TOK)
    original = Tokenizer.from_str(TOK_FILES["tokenizer.json"].decode())
    assert loaded.sha256 == load_tokenizer_from_str(original).sha256
    assert (loaded.eos_token, loaded.eos_token_id) == ("<|endoftext|>", original.token_to_id("<|endoftext|>"))
    assert hf.count(method="GET", route="resolve", path="tokenizer.json", status=200) == 1
    with pytest.raises(TokenizerError, match="slimtok mirror acme/nope"):
        load_tokenizer("acme/nope")


def load_tokenizer_from_str(tok: Tokenizer):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tok.save(f"{d}/tokenizer.json")
        return load_tokenizer(f"{d}/tokenizer.json", eos_id=tok.token_to_id("<|endoftext|>"))
