"""slimtok: turn SlimPajama-style ``.jsonl.zst`` shards into flat token files.

The pipeline follows the data: :mod:`slimtok.manifest` lists shards, :mod:`slimtok.claims`
hands them to workers through lock files, :mod:`slimtok.reader` streams documents out of a
shard, :mod:`slimtok.tokenizer` turns them into ids, :mod:`slimtok.worker` writes per-shard
token files with checkpoints, :mod:`slimtok.combine` concatenates them per split and
:mod:`slimtok.validate` checks the result. :mod:`slimtok.protocol` defines every file the
pipeline keeps under an output root.
"""

__version__ = "0.1.0"
