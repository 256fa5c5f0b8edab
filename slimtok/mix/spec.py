"""The mix spec: YAML (or JSON) parsed into a :class:`MixSpec`, every bad setting a MixError
naming the source and the setting."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import MixError
from ..protocol import SPLITS

#: Documents per output chunk: the unit of durable progress (a done record each). Part of the
#: resolved spec, so a relaunch with another value is a changed spec.
DEFAULT_CHUNK_DOCUMENTS = 65536


@dataclass
class SourceSpec:
    """One source: a root (and optionally one source label of it) with a weight or a token target."""

    name: str
    root: str
    weight: float | None = None
    tokens: int | None = None
    max_epochs: float = 1.0
    source: str | None = None


@dataclass
class MixSpec:
    """A resolved spec. ``shuffle`` is ``none``, ``document`` or ``chunk:N``; ``validation`` is
    ``{}``, ``{"documents": N}`` or ``{"fraction": f}``."""

    seed: int
    sources: list[SourceSpec]
    total_tokens: int | None = None
    split: str = "train"
    shuffle: str = "none"
    validation: dict[str, Any] = field(default_factory=dict)
    policy: str = "weights"
    alpha: float = 1.0
    chunk_documents: int = DEFAULT_CHUNK_DOCUMENTS
    #: drop a document of a later source whose text an earlier source (spec order) already gave
    dedup: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def shuffle_group(self) -> int:
        """Documents per shuffled group: 0 for none, 1 for document, N for chunk:N."""
        if self.shuffle == "none":
            return 0
        return 1 if self.shuffle == "document" else int(self.shuffle.split(":", 1)[1])


_TOP_KEYS = {"seed", "total_tokens", "split", "shuffle", "validation", "sources", "policy", "alpha",
             "chunk_documents", "dedup"}
_SOURCE_KEYS = {"name", "root", "weight", "tokens", "max_epochs", "source"}


def _number(value: Any, where: str, setting: str, path: str, integer: bool = False, positive: bool = True) -> Any:
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or (positive and value <= 0):
        kind = "a positive integer" if integer else "a positive number"
        raise MixError(f"{where}: {setting} is {value!r}, must be {kind}", path)
    return value


def _source(raw: Any, i: int, path: str, base: Path) -> SourceSpec:
    where = f"source {i + 1}"
    if not isinstance(raw, dict):
        raise MixError(f"{where} is not a mapping", path)
    where = f"source {raw.get('name', i + 1)!r}"
    unknown = set(raw) - _SOURCE_KEYS
    if unknown:
        raise MixError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}", path,
                       f"use {', '.join(sorted(_SOURCE_KEYS))}")
    for key in ("name", "root"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise MixError(f"{where}: `{key}` is missing or not a string", path)
    if raw.get("weight") is not None and raw.get("tokens") is not None:
        raise MixError(f"{where}: give `weight` or `tokens`, not both", path)
    root = Path(os.path.expanduser(raw["root"]))
    src = SourceSpec(name=raw["name"], root=str(root if root.is_absolute() else (base / root).resolve()),
                     source=raw.get("source"))
    if raw.get("weight") is not None:
        src.weight = float(_number(raw["weight"], where, "weight", path))
    if raw.get("tokens") is not None:
        src.tokens = int(_number(raw["tokens"], where, "tokens", path, integer=True))
    src.max_epochs = float(_number(raw.get("max_epochs", 1), where, "max_epochs", path))
    if src.source is not None and not isinstance(src.source, str):
        raise MixError(f"{where}: `source` must be a source label (a string)", path)
    return src


def _validation(raw: Any, path: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) != 1 or not ({"documents", "fraction"} & set(raw)):
        raise MixError(f"validation is {raw!r}, must be {{documents: N}} or {{fraction: f}}", path)
    if "documents" in raw:
        return {"documents": int(_number(raw["documents"], "validation", "documents", path, integer=True))}
    fraction = float(_number(raw["fraction"], "validation", "fraction", path))
    if fraction >= 1:
        raise MixError(f"validation: fraction is {fraction}, must be below 1", path)
    return {"fraction": fraction}


def _shuffle(raw: Any, path: str) -> str:
    text = str(raw)
    if text in ("none", "document"):
        return text
    if text.startswith("chunk:") and text[6:].isdigit() and int(text[6:]) > 0:
        return f"chunk:{int(text[6:])}"
    raise MixError(f"shuffle is {raw!r}, must be none, document or chunk:N (N documents per group)", path)


def parse_spec(data: Any, path: str = "<spec>", base: Path | None = None) -> MixSpec:
    """A :class:`MixSpec` from parsed YAML; relative roots are relative to ``base``."""
    base = base or Path.cwd()
    if not isinstance(data, dict):
        raise MixError("the spec is not a mapping of settings", path)
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise MixError(f"unknown setting(s) {', '.join(sorted(unknown))}", path,
                       f"use {', '.join(sorted(_TOP_KEYS))}")
    if not isinstance(data.get("dedup", False), bool):
        raise MixError(f"dedup is {data['dedup']!r}, must be true or false", path)
    if not isinstance(data.get("sources"), list) or not data["sources"]:
        raise MixError("`sources` is missing or empty", path)
    sources = [_source(raw, i, path, base) for i, raw in enumerate(data["sources"])]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise MixError(f"source names repeat: {', '.join(sorted({n for n in names if names.count(n) > 1}))}", path)
    spec = MixSpec(seed=int(_number(data.get("seed", 0), "spec", "seed", path, integer=True, positive=False)),
                   sources=sources, split=str(data.get("split", "train")),
                   shuffle=_shuffle(data.get("shuffle", "none"), path),
                   validation=_validation(data.get("validation"), path),
                   policy=str(data.get("policy", "weights")), dedup=data.get("dedup", False),
                   chunk_documents=int(_number(data.get("chunk_documents", DEFAULT_CHUNK_DOCUMENTS), "spec",
                                               "chunk_documents", path, integer=True)))
    if data.get("total_tokens") is not None:
        spec.total_tokens = int(_number(data["total_tokens"], "spec", "total_tokens", path, integer=True))
    if spec.split not in SPLITS:
        raise MixError(f"split is {spec.split!r}, must be one of {', '.join(SPLITS)}", path)
    if spec.policy not in ("weights", "unimax", "temperature"):
        raise MixError(f"policy is {spec.policy!r}, must be unimax or temperature (or absent for weights)", path)
    if spec.policy == "temperature":
        spec.alpha = float(_number(data.get("alpha"), "policy temperature", "alpha", path))
    _check_targets(spec, path)
    return spec


def _check_targets(spec: MixSpec, path: str) -> None:
    """Every source has exactly one way to get its target, and a total exists where one is needed."""
    for s in spec.sources:
        if spec.policy == "weights" and s.weight is None and s.tokens is None:
            raise MixError(f"source {s.name!r}: give `weight` or `tokens` (or a `policy`)", path)
        if spec.policy != "weights" and s.weight is not None:
            raise MixError(f"source {s.name!r}: `weight` is set but policy {spec.policy} decides the weights", path)
    if spec.total_tokens is None and any(s.tokens is None for s in spec.sources):
        raise MixError("total_tokens is missing, and not every source gives `tokens`", path)
    fixed = sum(s.tokens or 0 for s in spec.sources)
    if spec.total_tokens is not None and fixed > spec.total_tokens:
        raise MixError(f"the sources' `tokens` add up to {fixed:,}, more than total_tokens {spec.total_tokens:,}", path)


def load_spec(path: str | os.PathLike[str]) -> MixSpec:
    """Read and check a spec file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise MixError(f"cannot read the spec: {exc.strerror or exc}", path) from exc
    except yaml.YAMLError as exc:
        raise MixError(f"not valid YAML: {exc}", path) from exc
    return parse_spec(data, str(path), path.parent.absolute())
