"""Helpers shared by the test modules under tests/unit and tests/e2e (pyproject.toml puts tests/ on
sys.path, so they import ``helpers.<module>``). A test module imports from here, never from another
test module."""

from __future__ import annotations

from pathlib import Path

# The checkout under test: its tools/, systemd/ and the folder a subprocess needs on PYTHONPATH.
REPO_ROOT = Path(__file__).resolve().parents[2]
