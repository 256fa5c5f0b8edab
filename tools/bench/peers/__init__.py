"""The peers slimtok is compared with: their drivers (run in venvs, see section.py) and the section.

The package and its drivers import nothing beyond the standard library and tools.bench.harness at
module level: the drivers run in a venv that holds the peer and not slimtok.
"""
