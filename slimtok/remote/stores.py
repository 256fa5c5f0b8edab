"""URL parsing and the two store clients: S3 through obstore, the Hugging Face Hub through huggingface_hub.

Why these clients (measured in docs/ARCHITECTURE.md, "Object storage"): obstore speaks S3's
conditional requests (``If-Match`` on GET; ``If-None-Match: *`` and ``If-Match`` on PUT, which
output roots need for claims) with typed errors, retries transient failures with backoff itself,
and is one wheel with no dependencies. The Hub is read through huggingface_hub's own
``hf_hub_url`` / ``http_backoff`` (the requests ``HfFileSystem`` makes, without the tree listing
``HfFileSystem`` does on every open: workers must never list, the Hub limits listing calls).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..errors import ObjectStoreError
from .files import ObjectFile

_HF_RE = re.compile(r"^hf://(?P<kind>datasets|models|spaces)/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?(?:/(?P<key>.*))?$")
_S3_RE = re.compile(r"^s3://(?P<bucket>[^/]+)(?:/(?P<key>.*))?$")
#: The retry policy of every S3 request: transient failures (5xx, timeouts, dropped connections)
#: are retried with exponential backoff, for at most three minutes per request.
S3_RETRY = {"max_retries": 10, "retry_timeout": timedelta(minutes=3),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=15), "base": 2}}


@dataclass(frozen=True)
class ObjectUrl:
    """A parsed object URL: ``scheme`` "s3" (``bucket``, ``key``) or "hf" (``bucket`` is
    ``<kind>/<org>/<name>``, ``revision`` the branch, tag or commit, ``key`` the path in the repo)."""

    scheme: str
    bucket: str
    key: str
    revision: str | None = None

    @property
    def repo_id(self) -> str:
        return self.bucket.split("/", 1)[1]

    @property
    def repo_type(self) -> str:
        return self.bucket.split("/", 1)[0][:-1]

    def with_key(self, key: str, revision: str | None = None) -> ObjectUrl:
        return ObjectUrl(self.scheme, self.bucket, key, revision or self.revision)

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{self.scheme}://{self.bucket}{at}/{self.key}"


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its URL (for the Hub, pinned to the commit), ``size``, ``version`` (S3: the
    ETag; the Hub: the commit) and last-modified time in ns (0 where the store does not say)."""

    url: str
    size: int
    version: str
    mtime_ns: int = 0


def parse(url: str) -> ObjectUrl:
    """``url`` as an :class:`ObjectUrl`; an ObjectStoreError for anything but s3:// and hf:// URLs."""
    if m := _S3_RE.match(url):
        return ObjectUrl("s3", m["bucket"], m["key"] or "")
    if m := _HF_RE.match(url):
        return ObjectUrl("hf", f"{m['kind']}/{m['repo']}", m["key"] or "", m["rev"])
    raise ObjectStoreError("not an object URL", url, "write s3://bucket/prefix/ or hf://datasets/org/name[@revision]/")


# -- S3 ------------------------------------------------------------------------------------------

def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


#: The environment a client is built from: a client is made again when one of them changes.
_S3_ENVIRONMENT = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                   "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _s3(bucket: str) -> Any:
    """The obstore client of ``bucket`` under the current environment (made once per process)."""
    return _s3_client(bucket, tuple(os.environ.get(name) for name in _S3_ENVIRONMENT))


@functools.cache
def _s3_client(bucket: str, environment: tuple[str | None, ...]) -> Any:
    """The obstore client of ``bucket``. Keys from the environment as obstore reads them; without
    them, from boto3's chain (AWS config, profiles, SSO, instance roles) when boto3 is installed.
    The endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, path-style. ``environment`` is only
    the cache key."""
    from obstore.store import S3Store

    config: dict[str, Any] = {}
    endpoint = _endpoint()
    if endpoint:
        config.update(endpoint=endpoint, allow_http=endpoint.startswith("http://"),
                      virtual_hosted_style_request=False)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    provider = None
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        try:
            import boto3
            from obstore.auth.boto3 import Boto3CredentialProvider
        except ImportError:
            boto3 = None
        if boto3 is not None:
            session = boto3.Session()
            region = region or session.region_name
            if session.get_credentials() is not None:
                provider = Boto3CredentialProvider(session)
    config["region"] = region or "us-east-1"
    return S3Store(bucket, config=config, retry_config=S3_RETRY, credential_provider=provider)  # type: ignore[arg-type]


def _s3_error(exc: Exception, url: str, what: str) -> ObjectStoreError:
    """One line for a failed S3 request: the bucket, the key or the access at fault, never a secret."""
    from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

    bucket = parse(url).bucket
    text = str(exc)
    where = _endpoint() or "AWS"
    if "NoSuchBucket" in text:
        return ObjectStoreError(f"bucket {bucket!r} does not exist at {where}", url,
                                "check the bucket name and AWS_ENDPOINT_URL")
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or any(
            code in text for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403 Forbidden")):
        return ObjectStoreError(f"access denied to {what} in bucket {bucket!r} at {where}", url,
                                "check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) and the bucket's policy")
    if isinstance(exc, NotFoundError | FileNotFoundError):
        return ObjectStoreError("object not found", url, "rebuild the manifest with `slimtok manifest`")
    first = text.splitlines()[0] if text else type(exc).__name__
    return ObjectStoreError(f"cannot {what}: {first}", url, "check the store and AWS_ENDPOINT_URL, then retry")


def _s3_info(bucket: str, meta: Mapping[str, Any]) -> ObjectInfo:
    return ObjectInfo(f"s3://{bucket}/{meta['path']}", int(meta["size"]), str(meta["e_tag"] or ""),
                      int(meta["last_modified"].timestamp() * 1e9))


def _s3_list(u: ObjectUrl) -> list[ObjectInfo]:
    import obstore

    prefix = u.key if not u.key or u.key.endswith("/") else u.key + "/"
    try:
        return [_s3_info(u.bucket, meta) for chunk in obstore.list(_s3(u.bucket), prefix or None, chunk_size=1000)
                for meta in chunk]
    except Exception as exc:  # obstore's errors share no base but Exception
        raise _s3_error(exc, str(u), "list objects") from exc


def _s3_stat(u: ObjectUrl) -> ObjectInfo:
    import obstore

    try:
        return _s3_info(u.bucket, obstore.head(_s3(u.bucket), u.key))
    except Exception as exc:
        raise _s3_error(exc, str(u), "read the object") from exc


def _s3_fetch(u: ObjectUrl, version: str) -> Callable[[int, int], bytes]:
    import obstore
    from obstore.exceptions import PreconditionError

    store = _s3(u.bucket)

    def fetch(start: int, end: int) -> bytes:
        try:
            return bytes(obstore.get(store, u.key, options={"range": (start, end), "if_match": version}).bytes())
        except PreconditionError as exc:
            now = _s3_stat(u).version
            raise ObjectStoreError(f"changed while being read (version {version} when opened, {now} now)",
                                   str(u), "relaunch with --retry-failed to read it again") from exc
        except Exception as exc:
            raise _s3_error(exc, str(u), "read the object") from exc
    return fetch


# -- the Hugging Face Hub ------------------------------------------------------------------------

def _hf_error(exc: Exception, url: str) -> ObjectStoreError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return ObjectStoreError("access denied: the repository is gated", url,
                                "accept its terms on the Hub and set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        return ObjectStoreError("repository not found (or private)", url, "check the name, or set HF_TOKEN")
    if isinstance(exc, RevisionNotFoundError):
        return ObjectStoreError("revision not found", url, "pass a branch, tag or commit of the repository")
    if isinstance(exc, EntryNotFoundError):
        return ObjectStoreError("file not found at this commit", url, "rebuild the manifest with `slimtok manifest`")
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ObjectStoreError(f"cannot read from the Hub: {first}", url, "check HF_ENDPOINT and HF_TOKEN, then retry")


def _hf_list(u: ObjectUrl) -> list[ObjectInfo]:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    try:
        commit = api.repo_info(u.repo_id, repo_type=u.repo_type, revision=u.revision).sha
        assert commit is not None  # the Hub always names the commit a revision resolves to
        pinned = u.with_key(u.key, commit)
        tree = api.list_repo_tree(u.repo_id, path_in_repo=u.key.rstrip("/") or None, recursive=True,
                                  repo_type=u.repo_type, revision=commit)
        return [ObjectInfo(str(pinned.with_key(item.path)), item.size, commit) for item in tree
                if isinstance(item, RepoFile)]
    except Exception as exc:
        raise _hf_error(exc, str(u)) from exc


def _hf_stat(u: ObjectUrl) -> ObjectInfo:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        meta = get_hf_file_metadata(hf_hub_url(u.repo_id, u.key, repo_type=u.repo_type, revision=u.revision))
    except Exception as exc:
        raise _hf_error(exc, str(u)) from exc
    return ObjectInfo(str(u.with_key(u.key, meta.commit_hash)), int(meta.size or 0), meta.commit_hash or "")


def _hf_fetch(u: ObjectUrl, version: str) -> Callable[[int, int], bytes]:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff

    # Pinned to the commit the manifest recorded: under it the file's bytes never change.
    url = hf_hub_url(u.repo_id, u.key, repo_type=u.repo_type, revision=version)

    def fetch(start: int, end: int) -> bytes:
        try:
            response = http_backoff("GET", url, headers={"range": f"bytes={start}-{end - 1}", **build_hf_headers()})
            hf_raise_for_status(response)
        except Exception as exc:
            raise _hf_error(exc, str(u)) from exc
        return response.content
    return fetch


# -- the API -------------------------------------------------------------------------------------

def list_objects(url: str) -> list[ObjectInfo]:
    """Every object below the prefix ``url`` (a folder: ``s3://b/p`` lists ``p/...``), in key order.

    On the Hub the revision is resolved once and every URL returned is pinned to that commit.
    """
    u = parse(url)
    return sorted(_s3_list(u) if u.scheme == "s3" else _hf_list(u), key=lambda o: o.url)


def stat_object(url: str) -> ObjectInfo:
    """Size and version of the object at ``url``: one HEAD request."""
    u = parse(url)
    return _s3_stat(u) if u.scheme == "s3" else _hf_stat(u)


def open_object(url: str) -> ObjectFile:
    """The object at ``url`` for reading: one HEAD for its size and version, then every read is
    conditional on that version (S3: ``If-Match``; the Hub: the commit in the URL), so an object
    that changes under the reader is refused, naming both versions."""
    info = stat_object(url)
    u = parse(url)
    fetch = _s3_fetch(u, info.version) if u.scheme == "s3" else _hf_fetch(u, info.version)
    return ObjectFile(url, info.size, info.version, fetch)
