"""The slimtok benchmark (``python -m tools.bench --help``); see tools/README.md and docs/BENCHMARKS.md.

Nothing is imported here: the peer drivers under tools/bench/peers import through this package in
venvs that hold no slimtok.
"""
