"""Token streams compared: sha256 of id arrays, eos placement, and a peer's documents against ours.

Reads id arrays in memory only. A verdict says whether two streams hold the same documents, in
the same order or not, and whether the only difference is how literal special-token strings in
the text were encoded (a peer encodes them as special ids, slimtok as text).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np


def sha(flats: Iterable[np.ndarray]) -> str:
    h = hashlib.sha256()
    for flat in flats:
        h.update(np.ascontiguousarray(flat, dtype=np.uint32).data)
    return h.hexdigest()


def with_eos(ids: np.ndarray, ends: np.ndarray, eos: int) -> np.ndarray:
    """A flat id array with ``eos`` inserted after each document ending at ``ends`` (exclusive)."""
    return np.insert(ids, ends.astype(np.int64), eos)


def stream_documents(stream: np.ndarray, ends: np.ndarray) -> list[bytes]:
    """The token stream cut into documents at ``ends`` (exclusive token offsets), as bytes."""
    starts = np.concatenate([[0], ends[:-1]])
    return [stream[a:b].tobytes() for a, b in zip(starts, ends, strict=True)]


def compare_streams(peer: np.ndarray, peer_ends: np.ndarray, ours: np.ndarray, eos: int, tokenizer: Any) -> str:
    """How the peer's ids relate to slimtok's, document by document, and in which order.

    A peer document with no equal in slimtok's output is decoded and encoded again the way slimtok
    encodes (special-token strings in text as text); if it then matches, the two differ only in how
    literal special-token strings in the text were treated.
    """
    from collections import Counter

    ours_docs = stream_documents(ours, np.flatnonzero(ours == eos) + 1)
    peer_docs = stream_documents(peer, peer_ends)
    known = set(ours_docs)
    as_ours = [d if d in known else _as_slimtok_encodes(d, tokenizer, eos) for d in peer_docs]
    changed = sum(a != b for a, b in zip(peer_docs, as_ours, strict=True))
    if as_ours == ours_docs:
        order = "same document order"
    elif Counter(as_ours) == Counter(ours_docs):
        order = "documents in another order (compared as multisets)"
    else:
        unmatched = sum((Counter(as_ours) - Counter(ours_docs)).values())
        return f"IDS DIFFER: {unmatched} of {len(peer_docs)} documents have no equal in slimtok's output"
    if not changed:
        return f"identical ids, {order}"
    return (f"{len(peer_docs) - changed} of {len(peer_docs)} documents identical, {order}; the other {changed} "
            "contain literal special-token strings, which the peer encodes as special ids and slimtok as text: "
            "decoded and encoded slimtok's way they are identical too")


def _as_slimtok_encodes(doc: bytes, tokenizer: Any, eos: int) -> bytes:
    """A peer document's ids decoded to text and encoded again with special-token strings as text, + eos."""
    text = tokenizer.decode(np.frombuffer(doc, np.uint32)[:-1].tolist(), skip_special_tokens=False)
    return np.array(tokenizer.encode(text, add_special_tokens=False).ids + [eos], np.uint32).tobytes()


