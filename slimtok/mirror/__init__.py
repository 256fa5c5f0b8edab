"""Stage 1, before the manifest: bring a Hub repo onto disk (:mod:`.download`) and record what
was brought (:mod:`.record`), which ``slimtok manifest`` compares its listing with."""

from ..errors import MirrorError
from .download import MirrorResult, mirror
from .record import (
    MIRROR_RECORD_NAME,
    MirrorRecord,
    MirrorRun,
    RecordedFile,
    cache_snapshot,
    compare_with_mirror_record,
    find_mirror_record,
    load_mirror_record,
)

__all__ = ["MIRROR_RECORD_NAME", "MirrorError", "MirrorRecord", "MirrorResult", "MirrorRun", "RecordedFile",
           "cache_snapshot", "compare_with_mirror_record", "find_mirror_record", "load_mirror_record", "mirror"]
