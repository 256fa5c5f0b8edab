"""slimtok.protocol owns the output root: no other module builds a path under it or touches a file
by itself (docs/ARCHITECTURE.md, slimtok/protocol/__init__.py).

Every module of slimtok outside ``slimtok/protocol/`` is parsed (AST, so strings and comments do
not count) and must contain neither ``<something>.root / ...`` (a path formatted by hand instead
of an ``OutputRoot`` method) nor a direct file operation (``open``, ``os.open``/``rename``/
``replace``/``link``/``unlink``/``stat``..., ``Path.unlink``/``stat``/``mkdir``/``read_bytes``...):
those go through ``OutputRoot`` and its ``Storage`` (``slimtok.protocol.storage``), so a second
storage (an object store) is added in one place. The modules of ``ALLOWED`` read or write files
that are not part of an output root; each says which.
"""

from __future__ import annotations

import ast
from pathlib import Path

import slimtok

PACKAGE = Path(slimtok.__file__).parent

#: Module (path relative to slimtok/) -> why it may open files itself.
ALLOWED = {
    "formats/streams.py": "opens input shards of a dataset (the format readers all go through it)",
    "mirror/download.py": "downloads a dataset into a local mirror, an input folder, not an output root",
    "mirror/record.py": "the mirror's own records, kept beside the downloaded dataset",
    "manifest.py": "lists the dataset folder and stats each input shard to build a manifest",
    "tokenizer/loading.py": "loads a tokenizer from a file, a folder or the Hub cache",
    "worker/files.py": "source_state stats an input shard (size, mtime): does a checkpoint still fit it",
    "mix/spec.py": "reads the mix spec file named on the command line",
    "executor.py": "single_threaded counts this process's threads in /proc/self/task",
    "demo.py": "writes the demo's dataset and tokenizer (inputs) into a folder of the user's choice",
}

#: ``os.<name>(...)`` calls that operate on a path.
OS_CALLS = {"open", "rename", "replace", "link", "symlink", "unlink", "remove", "rmdir", "stat", "lstat", "utime",
            "truncate", "makedirs", "mkdir", "listdir", "scandir", "walk"}
#: ``<path>.<name>(...)`` calls of pathlib that operate on a file.
PATH_CALLS = {"unlink", "rename", "stat", "lstat", "touch", "mkdir", "rmdir", "read_bytes", "write_bytes",
              "read_text", "write_text", "hardlink_to", "symlink_to", "tofile", "iterdir", "rglob"}


def _is_storage(receiver: ast.expr) -> bool:
    """``root.storage.stat(p)``, ``storage.delete(p)``, ``storage_for(p).stat(p)``: the seam itself."""
    text = ast.unparse(receiver)
    return text.endswith("storage") or text.startswith("storage_for(")


def violations(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.left, ast.Attribute)
                and node.left.attr == "root"):
            found.append((node.lineno, f"{ast.unparse(node.left)} / ... (ask OutputRoot for the path)"))
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                found.append((node.lineno, "open(...)"))
            elif isinstance(func, ast.Attribute):
                if isinstance(func.value, ast.Name) and func.value.id == "os":
                    if func.attr in OS_CALLS:
                        found.append((node.lineno, f"os.{func.attr}(...)"))
                elif func.attr in PATH_CALLS and not _is_storage(func.value):
                    found.append((node.lineno, f".{func.attr}(...)"))
    return sorted(found)


def test_only_protocol_touches_an_output_root():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module.startswith("protocol/") or module in ALLOWED:
            continue
        for line, what in violations(ast.parse(path.read_text(), str(path))):
            problems.append(f"slimtok/{module}:{line}: {what}")
    assert not problems, ("file operations outside slimtok.protocol (use OutputRoot and its storage):\n"
                          + "\n".join(problems))


def test_allowlist_is_current():
    """Every allowed module exists, says why, and still needs its exception."""
    for module, why in ALLOWED.items():
        path = PACKAGE / module
        assert path.is_file(), f"slimtok/{module} is allowed but does not exist"
        assert why, f"slimtok/{module} is allowed without a reason"
        assert violations(ast.parse(path.read_text())), f"slimtok/{module} no longer needs its exception"


def test_the_check_sees_what_it_forbids():
    code = ("import os\nos.replace(a, b)\nopen(p)\nroot.root / 'locks'\np.unlink()\nx = 'root.root / \"x\"'\n"
            "os.path.join(a, b)\nroot.storage.stat(p)\nstorage_for(p).stat(p)\n")
    assert [line for line, _ in violations(ast.parse(code))] == [2, 3, 4, 5]
