"""The import rule of docs/ARCHITECTURE.md, checked on the source: imports only go down the stage list.

The graph is read with ``ast`` from every file under slimtok/, module-level and function-level
imports alike (a lazy import is still a dependency; only its cost is deferred), ``TYPE_CHECKING``
blocks included. Two checks:

* no import circle between slimtok modules, nor between stages (a package's ``__init__``
  importing its own submodules is the package's face, not a circle);
* every import between two stages goes from a later stage in :data:`STAGES` to an earlier one.
  ``cli`` is the one exception: it may import any stage inside its commands.

A failure names each offending import as ``file:line from → to``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import slimtok

PACKAGE = Path(slimtok.__file__).resolve().parent

#: The one ordered list of slimtok's stages and helpers, in data order where the imports allow:
#: a stage may import only the ones before it. A top-level module or package of slimtok is one
#: entry; ``__init__`` is the package's own face (``__version__``). A new module goes where its
#: imports put it, and this list and docs/ARCHITECTURE.md's table change together.
STAGES = [
    "__init__",   # __version__
    "errors",
    "space",      # free space on a filesystem, byte sizes as people read them
    "remote",     # objects in object stores (s3://, hf://): listing, ranged reads
    "protocol",   # the on-disk contract of an output root
    "publish",    # several files replaced as one set
    "progress",
    "formats",
    "mirror",     # download
    "manifest",   # list
    "budget",
    "reader",     # read
    "claims",     # claim
    "executor",   # runs claimed units on a node (job's heartbeat interval, launch, worker, dedup)
    "tokenizer",  # encode
    "job",
    "worker",     # tokenize
    "launch",
    "dedup",      # deduplicate
    "finished",   # reading a finished root
    "spans",
    "combine",    # concatenate, consume
    "mix",
    "clean",      # free the disk
    "data",       # check and hand over
    "mixed",
    "validate",
    "export",
    "status",     # watch
    "testing",    # synthetic roots for tests and benchmarks
    "demo",
    "cli",
    "__main__",
]

#: May import any stage, inside a function (its click commands).
LAZY_ANYTHING = "cli"


@dataclass(frozen=True)
class Import:
    """One import of a slimtok module: where it is written, what it imports, whether in a function."""

    source: str   # dotted module doing the import
    target: str   # dotted module imported (a submodule when ``from pkg import sub`` names one)
    where: str    # file:line
    lazy: bool

    def __str__(self) -> str:
        return f"{self.where} {self.source} → {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The slimtok modules one import statement loads (the deepest module each name resolves to)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        names = [f"{origin}.{a.name}" if _is_module(f"{origin}.{a.name}") else origin for a in node.names]
    return sorted({n for n in names if n == "slimtok" or n.startswith("slimtok.")})


def _imports() -> list[Import]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module, is_package = _module_name(path), path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        lazy_lines = {id(n) for f in functions for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                for target in _targets(node, module, is_package):
                    if target != module:
                        found.append(Import(module, target, where, id(node) in lazy_lines))
    return found


def _stage(module: str) -> str:
    """The stage a dotted module belongs to: ``slimtok.combine.copy`` → ``combine``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle in ``edges`` as a list of nodes (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_every_module_is_a_listed_stage():
    modules = {_stage(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    unlisted = sorted(modules - set(STAGES))
    assert not unlisted, (f"slimtok module(s) {', '.join(unlisted)} are not in STAGES of {__file__}: add each where "
                          "its imports put it (and to docs/ARCHITECTURE.md's table)")


def _refuse_circle(imports: list[Import], node: Callable[[str], str], what: str) -> None:
    edges: dict[str, set[str]] = {}
    for i in imports:
        if node(i.source) != node(i.target):
            edges.setdefault(node(i.source), set()).add(node(i.target))
    circle = _cycle(edges)
    if circle is not None:
        steps = [next(str(i) for i in imports if (node(i.source), node(i.target)) == pair)
                 for pair in pairwise(circle)]
        raise AssertionError(f"import circle between {what}: " + " → ".join(circle) + ":\n  " + "\n  ".join(steps))


def test_no_import_circle_between_slimtok_modules_or_stages():
    # a package's face importing its own submodules is the package, not a circle
    imports = [i for i in _imports() if not i.target.startswith(i.source + ".")]
    _refuse_circle(imports, lambda module: module, "modules")
    _refuse_circle(imports, _stage, "stages")


def test_imports_only_go_down_the_stage_list():
    rank = {stage: n for n, stage in enumerate(STAGES)}
    upward = []
    for i in _imports():
        source, target = _stage(i.source), _stage(i.target)
        if source == target or source not in rank or target not in rank:
            continue  # unlisted modules fail test_every_module_is_a_listed_stage
        if source == LAZY_ANYTHING and i.lazy:
            continue
        if rank[target] > rank[source]:
            upward.append(f"{i}  ({source} is stage {rank[source]}, {target} is stage {rank[target]}, after it)")
    assert not upward, ("imports going up the stage list (STAGES in tests/test_imports.py; move the code down, "
                        "or the stage in the list if the list is wrong):\n  " + "\n  ".join(upward))
