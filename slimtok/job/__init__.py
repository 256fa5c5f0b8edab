"""The job: what ``slimtok tokenize`` was asked to do, pinned once in ``job.json``.

``settings`` holds the request (:class:`TokenizeSettings`) and the CLI's defaults, ``pin`` pins it
(job.json, the manifest and tokenizer copies) and returns the :class:`Job` a launch runs, ``disk``
the launch's disk-budget check, ``pinned`` reads a pinned job back for every later stage.
"""

from .disk import check_disk_budget
from .pin import (
                  Job,
                  keep_lease_fresh,
                  launch_lease,
                  manifest_change,
                  open_job,
                  pin_job,
                  publish_pin,
                  request_digest,
                  requested_job,
)
from .pinned import (
                     document_policy,
                     load_job,
                     load_pinned_tokenizer,
                     pinned_tokenizer_path,
                     read_job,
                     tokenizer_fingerprint,
)
from .settings import CHECKPOINT_EVERY, MIN_FREE_FRACTION, PARITY_SHARE, STALE_AFTER, TOKENS_PER_WRITE, TokenizeSettings

__all__ = ["CHECKPOINT_EVERY", "Job", "MIN_FREE_FRACTION", "PARITY_SHARE", "STALE_AFTER", "TOKENS_PER_WRITE",
           "TokenizeSettings",
           "check_disk_budget", "document_policy", "keep_lease_fresh", "launch_lease", "load_job",
           "load_pinned_tokenizer", "manifest_change", "open_job",
           "pin_job", "pinned_tokenizer_path", "publish_pin",
           "read_job", "request_digest", "requested_job", "tokenizer_fingerprint"]
