"""Input formats: which files are shards (:mod:`.registry`) and how their bytes become records.

``registry`` maps a file-name suffix to its layout and compression; ``streams`` decompresses and
cuts lines; ``jsonl`` parses a line and classifies skips; ``pieces`` decodes huge texts lazily;
``columnar`` reads parquet and Arrow IPC batches. ``slimtok.reader.ShardReader`` puts them together.
"""

from .registry import FORMATS, SUFFIXES, InputFormat, format_of, strip_suffix

__all__ = ["FORMATS", "SUFFIXES", "InputFormat", "format_of", "strip_suffix"]
