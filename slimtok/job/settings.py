"""What ``slimtok tokenize`` is asked to do (:class:`TokenizeSettings`) and the defaults the CLI shows.

Reads and writes nothing; the pinned subset of these settings lives in ``job.json``
(:mod:`slimtok.job.pin`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..executor import refresh_interval
from ..protocol import DEFAULT_SOURCE_KEY, SPLITS, new_token
from ..protocol.records import DEFAULT_MAX_LINE_BYTES

#: Defaults of ``slimtok tokenize`` (the CLI shows these; nothing else re-types them).
TOKENS_PER_WRITE = 131072
#: The share of documents the parity sample re-encodes with the reference (docs/BENCHMARKS.md: about
#: 1% of a fastokens worker's CPU, the reference being ~100x slower per byte; ~0.01% of a tokenizers one).
PARITY_SHARE = 1 / 8192
CHECKPOINT_EVERY = 5.0
STALE_AFTER = 300.0
MIN_FREE_FRACTION = 0.1


@dataclass
class TokenizeSettings:
    """What ``slimtok tokenize`` was asked to do; the pinned subset lives in job.json."""

    manifest: str
    output_root: str
    tokenizer: str
    #: the transformers class that builds a tokenizer without a tokenizer.json ("": refused); pinned
    tokenizer_class: str = ""
    tokens_per_write: int = TOKENS_PER_WRITE
    #: seconds of work between checkpoints (0: at every write); a crash redoes at most this much
    checkpoint_every: float = CHECKPOINT_EVERY
    splits: tuple[str, ...] = SPLITS
    text_key: str = "text"
    eos_id: int | None = None
    #: auto|always|never: the bos before each document (auto: what the tokenizer's template adds)
    bos: str = "auto"
    #: literal|parse: what special-token strings inside a document's text become
    special_text: str = "literal"
    #: auto: uint16 when every id fits, else uint32
    dtype: str = "auto"
    #: dotted path whose value names a document's source ("" for none); pinned in job.json
    source_key: str = DEFAULT_SOURCE_KEY
    #: longer lines (parquet/Arrow texts, in UTF-8 bytes) are skipped as line_too_long; pinned in job.json
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    #: documents with fewer characters / tokens (separators aside) are skipped as too_few_chars /
    #: too_few_tokens (0: off); pinned in job.json
    min_chars: int = 0
    min_tokens: int = 0
    #: encoder backend (auto|tokenizers|fastokens); not pinned: every backend gives the reference ids
    backend: str = "auto"
    #: share of documents re-encoded by the reference and compared (slimtok.worker.task); not pinned
    parity_share: float = PARITY_SHARE
    retry_failed: bool = False
    #: refuse to start when the estimated token files would leave less than this share of the disk free
    min_free_fraction: float = MIN_FREE_FRACTION
    stale_after: float = STALE_AFTER
    process_index: int = 0
    process_count: int = 1
    workers: int = 1
    launch: str = field(default_factory=new_token)

    @property
    def heartbeat_interval(self) -> float:
        return refresh_interval(self.stale_after)
