#!/usr/bin/env bash
# The quality gates: lint (ruff) and types (mypy), as configured in pyproject.toml ([tool.ruff],
# [tool.mypy]: which files, which rules). Run from anywhere; reads the tree, writes only the tools'
# own caches (.ruff_cache/, .mypy_cache/). Needs the `lint` extra: pip install -e '.[lint]'.
# Exits non-zero when either gate finds anything; both always run, so one run lists everything.
set -uo pipefail
cd "$(dirname "$0")/../.."
status=0
ruff check . || status=1
mypy || status=1
exit "$status"
