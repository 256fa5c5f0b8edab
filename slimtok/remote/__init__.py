"""Objects in object stores, named by URL: ``s3://bucket/key`` and ``hf://datasets/org/name[@rev]/path``.

The one place slimtok talks to an object store; everything else sees a URL string where it would
see a local path, and :func:`is_remote` tells the two apart (a local path never has a scheme).
What this module offers is what reading inputs needs and what an output root on a store will use:

* :func:`parse` a URL into an :class:`ObjectUrl` (store kind, bucket or repo, key);
* :func:`list_objects`: every object under a prefix with its size and version, listed once (an
  S3 LIST page holds 1,000 keys; the Hub's tree API pages the same way);
* :func:`stat_object`: one object's size and version (one HEAD);
* :func:`open_object`: a seekable, read-only file over ranged GETs (see :mod:`.files`), every
  request conditional on the version, so an object that changes under a reader is refused.

Invariant: an object's *version* says which bytes it holds. On S3 it is the ETag (a GET with
``If-Match`` fails with 412 once the object changed); on the Hub it is the commit, carried in the
URL too (``hf://datasets/org/name@<commit>/path``), under which a file never changes.

Clients (see :mod:`.stores`): S3 through obstore (Rust object_store), the Hub through
huggingface_hub. Credentials come from where those clients look (environment, AWS config and
profiles, ``HF_TOKEN``) and are never printed; an S3-compatible endpoint from
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (``http://`` allowed). Every failure a user can act
on is an :class:`~slimtok.errors.ObjectStoreError` naming the URL.
"""

from __future__ import annotations

import os

from .files import ObjectFile
from .stores import ObjectInfo, ObjectUrl, list_objects, open_object, parse, stat_object

__all__ = ["SCHEMES", "ObjectFile", "ObjectInfo", "ObjectUrl", "is_remote", "list_objects", "open_object", "parse",
           "stat_object"]

#: URL schemes of the object stores slimtok reads.
SCHEMES = ("s3://", "hf://")


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an object in a store (an ``s3://`` or ``hf://`` URL), not a local file."""
    return isinstance(path, str) and path.startswith(SCHEMES)
