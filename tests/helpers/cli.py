"""The real command line, run in subprocesses: ``slimtok()``, the ``manifest``/``tokenize`` steps
most tests start with, and the whole manifest → tokenize → combine pipeline.

Subprocesses inherit the environment, so PYTHONPATH (the checkout under test) carries over."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def slimtok(*args: object, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess; with ``check``, a non-zero exit fails the test
    showing both streams."""
    proc = subprocess.run([sys.executable, "-m", "slimtok", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"slimtok {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def slimtok_in_python(prelude: str, epilogue: str, *args: object) -> subprocess.CompletedProcess:
    """Run the command line in a fresh python: ``prelude`` first (a hook, say), then the command,
    then ``epilogue`` with ``code`` holding its exit status (both print to stdout)."""
    code = (f"{prelude}\nimport sys\nfrom slimtok.cli import main\ntry:\n    main(sys.argv[1:])\n"
            f"except SystemExit as e:\n    code = e.code\n{epilogue}\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          check=True, timeout=300)


def manifest(work: Path, dataset: Path, *extra: object) -> Path:
    """``slimtok manifest`` of ``dataset`` into ``work/m``; returns the manifest file."""
    slimtok("manifest", "--dataset-dir", dataset, "--output-dir", work / "m", *extra)
    return work / "m" / "manifest.jsonl"


def tokenize_args(manifest: Path, root: Path, tokenizer: Path, *extra: object,
                  dtype: str | None = "uint32") -> list[str]:
    """``tokenize`` arguments, quiet. uint32 unless ``dtype`` says otherwise (None: the tokenizer's
    own choice), so outputs compare with the reference ids whatever the vocabulary; ``extra``
    comes last and so wins over these."""
    width = ["--dtype", dtype] if dtype else []
    return ["tokenize", *width, "--manifest", str(manifest), "--output-root", str(root), "--tokenizer", str(tokenizer),
            "--quiet", *map(str, extra)]


def tokenize_cmd(manifest: Path, root: Path, tokenizer: Path, *extra: object,
                 dtype: str | None = "uint32") -> list[str]:
    """The argv of a ``slimtok tokenize`` to start with Popen (for kills and concurrent launches)."""
    return [sys.executable, "-m", "slimtok", *tokenize_args(manifest, root, tokenizer, *extra, dtype=dtype)]


def tokenize(manifest: Path, root: Path, tokenizer: Path, *extra: object, dtype: str | None = "uint32",
             check: bool = True) -> subprocess.CompletedProcess:
    """Run ``slimtok tokenize`` to its end (see :func:`tokenize_args`)."""
    return slimtok(*tokenize_args(manifest, root, tokenizer, *extra, dtype=dtype), check=check)


#: The tokenize flags of :func:`run_pipeline` (and of the cached roots that stand in for one).
PIPELINE_TOKENIZE = ("--dtype", "uint32", "--quiet", "--spawn-workers", "1")


def run_pipeline(dataset: Path, work: Path, tokenizer: Path, *tokenize_extra: object,
                 patterns: tuple[str, ...] = ("*.jsonl.zst",)) -> Path:
    """manifest → tokenize → combine through the real command line; returns the output root
    (``work/out``; the manifest is ``work/m/manifest.jsonl``)."""
    listed = manifest(work, dataset, *[a for p in patterns for a in ("--pattern", p)])
    root = work / "out"
    slimtok("tokenize", "--manifest", listed, "--output-root", root, "--tokenizer", tokenizer, *PIPELINE_TOKENIZE,
            *tokenize_extra)
    slimtok("combine", "--output-root", root)
    return root
