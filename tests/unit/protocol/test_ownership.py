"""slimtok.protocol owns the output root: no other module builds a path under it or touches a file
by itself (docs/ARCHITECTURE.md, slimtok/protocol/__init__.py).

Every module of slimtok outside ``slimtok/protocol/`` is parsed (AST, so strings and comments do
not count) and must contain neither ``<something>.root / ...`` (a path formatted by hand instead
of an ``OutputRoot`` method) nor a direct file operation (``open``, ``os.open``/``rename``/
``replace``/``link``/``unlink``/``stat``..., ``os.path.exists``..., ``Path.unlink``/``stat``/
``mkdir``/``read_bytes``/``exists``/``is_file``/``is_dir``/``glob``..., ``shutil.copytree``...):
those go through ``OutputRoot`` and its ``Storage`` (``slimtok.protocol.storage``), so a second
storage (an object store) is added in one place. The modules of ``ALLOWED`` read or write files
that are not part of an output root; each says which. numpy and pyarrow calls that need a real
local file (``np.memmap``, ``np.fromfile``, ``open_memmap``, ``ParquetWriter``) are allowed only in
the modules of ``LOCAL_FILES``, each with its reason: those sites are what an object store would
have to serve from a local copy.
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
    "space.py": "walks up to the nearest existing folder to statvfs it: free space is a property of a mounted "
                "file system (and space sits below protocol in the import order)",
}

#: Module -> why it hands a path under an output root to numpy or pyarrow, which need a local file.
LOCAL_FILES = {
    "dedup/units.py": "memory-maps the drop lists of the bucket units a gather unit merges",
    "export/packed.py": "pyarrow's ParquetWriter writes a packed part into the storage's stream of its temporary "
                        "file (a call by that name is flagged whatever it is given), which the publish renames",
}

#: ``os.<name>(...)`` calls that operate on a path.
OS_CALLS = {"open", "rename", "replace", "link", "symlink", "unlink", "remove", "rmdir", "stat", "lstat", "utime",
            "truncate", "makedirs", "mkdir", "listdir", "scandir", "walk"}
#: ``<path>.<name>(...)`` calls of pathlib that operate on a file.
PATH_CALLS = {"unlink", "rename", "stat", "lstat", "touch", "mkdir", "rmdir", "read_bytes", "write_bytes",
              "read_text", "write_text", "hardlink_to", "symlink_to", "tofile", "iterdir", "rglob", "glob",
              "exists", "is_file", "is_dir", "is_symlink", "samefile"}
#: ``os.path.<name>(...)`` calls that ask the file system (``join``, ``basename``... only compute).
OS_PATH_CALLS = {"exists", "lexists", "isfile", "isdir", "islink", "getsize", "getmtime", "getctime", "samefile"}
#: ``shutil.<name>(...)`` calls that copy, move or remove files.
SHUTIL_CALLS = {"copy", "copy2", "copyfile", "copytree", "copymode", "copystat", "move", "rmtree", "chown",
                "make_archive", "unpack_archive"}
#: ``<anything>.<name>(...)`` of numpy and pyarrow that open a file by its name (see ``LOCAL_FILES``).
LOCAL_FILE_CALLS = {"memmap", "fromfile", "open_memmap", "ParquetWriter"}


def _is_storage(receiver: ast.expr) -> bool:
    """``root.storage.stat(p)``, ``storage.delete(p)``, ``storage_for(p).stat(p)``: the seam itself."""
    text = ast.unparse(receiver)
    return text.endswith("storage") or text.startswith("storage_for(")


def violations(tree: ast.AST, local_files: bool = False) -> list[tuple[int, str]]:
    """Every forbidden operation in ``tree``; ``local_files``: numpy's and pyarrow's are allowed."""
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
                receiver = ast.unparse(func.value)
                if receiver in ("os", "os.path", "shutil"):
                    if func.attr in {"os": OS_CALLS, "os.path": OS_PATH_CALLS, "shutil": SHUTIL_CALLS}[receiver]:
                        found.append((node.lineno, f"{receiver}.{func.attr}(...)"))
                elif func.attr in LOCAL_FILE_CALLS:
                    if not local_files:
                        found.append((node.lineno, f"{receiver}.{func.attr}(...) (a local file: see LOCAL_FILES)"))
                elif func.attr in PATH_CALLS and not _is_storage(func.value):
                    found.append((node.lineno, f".{func.attr}(...)"))
    return sorted(found)


def test_only_protocol_touches_an_output_root():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module.startswith("protocol/") or module in ALLOWED:
            continue
        for line, what in violations(ast.parse(path.read_text(), str(path)), module in LOCAL_FILES):
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
    for module, why in LOCAL_FILES.items():
        path = PACKAGE / module
        assert path.is_file() and why, f"slimtok/{module} is a LOCAL_FILES module that does not exist or says no why"
        tree = ast.parse(path.read_text())
        assert set(violations(tree)) - set(violations(tree, True)), f"slimtok/{module} no longer opens a local file"


def test_the_check_sees_what_it_forbids():
    code = ("import os\nos.replace(a, b)\nopen(p)\nroot.root / 'locks'\np.unlink()\nx = 'root.root / \"x\"'\n"
            "os.path.join(a, b)\nroot.storage.stat(p)\nstorage_for(p).stat(p)\n"
            "Path(x).exists()\nroot.done(s).is_file()\nfolder.is_dir()\nfolder.glob('*.json')\nfolder.rglob('*')\n"
            "os.path.exists(p)\nshutil.copytree(a, b)\nnp.memmap(p, 'u1', 'r')\nnp.fromfile(p)\na.tofile(p)\n"
            "root.storage.exists(p)\nstorage_for(p).exists(p)\nstorage.list_names(folder)\nshutil.which('x')\n")
    assert [line for line, _ in violations(ast.parse(code))] == [2, 3, 4, 5, *range(10, 20)]
    assert [line for line, _ in violations(ast.parse(code), local_files=True)] == [2, 3, 4, 5, *range(10, 17), 19]
