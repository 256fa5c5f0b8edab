"""Write combined splits in the layouts other trainers read; one module per target.

Reads ``meta.json``, ``<split>.bin`` and ``<split>.idx`` of an output root (after ``combine``);
writes nothing there except under the export paths :class:`~slimtok.protocol.OutputRoot` names.

* **Megatron** (:func:`export_megatron`, :mod:`.megatron`): ``<prefix>_<split>_text_document.bin``
  / ``.idx`` in megatron-core's indexed-dataset layout; the tokens are linked, never rewritten.
* **Megatron blend** (:func:`export_data_args`, :mod:`.data_args`): the same files for each root
  of a blend and a ``--data-args-path`` file listing ``weight prefix`` pairs.
* **Packed** (:func:`export_packed`, :mod:`.packed`): rows of exactly ``seq_len`` tokens in
  parquet or npy files with a ``manifest.json``.
* **datatrove / nanotron** (:func:`export_datatrove`, :mod:`.datatrove`): ``<split>.ds``,
  ``.ds.index`` (both linked) and ``.ds.metadata`` in a folder of their own per split.
* **litdata** (:func:`export_litdata`, :mod:`.litdata`): chunk files and ``index.json`` whose
  ``TokensLoader`` blocks are the split's consecutive windows, items the documents.
* **MosaicML streaming** (:func:`export_mds`, :mod:`.mds`): MDS shards of ``seq_len`` rows and
  ``index.json``.
* **torchtitan** (:func:`export_torchtitan`, :mod:`.torchtitan`): ``tokens.bin`` (uint32) and
  ``document_offsets.npy`` in a folder of their own per split.

:mod:`.source` is what they share: the combined split they read and the trainer dtype;
:mod:`.folder` the export's own folder: linking, its record of the files written, publishing. Every
file is written under a temporary name and renamed into place, so a rerun replaces an
interrupted export; the same inputs always give the same bytes.
"""

from .data_args import export_data_args
from .datatrove import export_datatrove
from .folder import EXPORT_RECORD
from .litdata import LITDATA_CHUNK_BYTES, export_litdata
from .mds import export_mds
from .megatron import (
    INDEX_CHUNK,
    MEGATRON_CODES,
    MEGATRON_MAGIC,
    MEGATRON_VERSION,
    export_megatron,
    write_megatron_index,
)
from .packed import PACKED_FILE_BYTES, PACKED_FORMATS, PACKED_MANIFEST, PARQUET_ROW_GROUP_BYTES, export_packed
from .source import trainer_dtype
from .torchtitan import export_torchtitan

__all__ = ["export_megatron", "export_data_args", "export_packed", "export_datatrove", "export_torchtitan",
           "export_litdata", "export_mds", "EXPORT_RECORD", "LITDATA_CHUNK_BYTES", "write_megatron_index",
           "trainer_dtype",
           "MEGATRON_MAGIC", "MEGATRON_VERSION", "MEGATRON_CODES", "INDEX_CHUNK", "PACKED_FORMATS",
           "PACKED_MANIFEST", "PACKED_FILE_BYTES", "PARQUET_ROW_GROUP_BYTES"]
