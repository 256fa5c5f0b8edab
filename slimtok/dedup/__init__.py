"""``slimtok dedup``: exact deduplication and decontamination of a tokenized output root.

Phases, each a set of units claimed like shards (docs/DEDUP.md): scatter (hashes of a range of
shards, grouped by bucket), bucket (one hash range: find repeats), gather (drops of a range of
shards). The survivor of equal texts is the first in manifest order within each split; a train
document whose text occurs in validation or test is dropped from train.
"""

from .drops import DropReader, Exclusion, drops_for, exclusion_for
from .run import dedup_status, run_dedup

__all__ = ["DropReader", "Exclusion", "dedup_status", "drops_for", "exclusion_for", "run_dedup"]
