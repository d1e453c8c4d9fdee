"""The small-data guard's move, applied after ingestion wrote every example by its label's hash.

Why afterwards: which label the guard moves (``splits.SplitRule``) is known only once every
accepted label has been seen. Deciding it before writing would make Beam hold every accepted
example, bytes included, until the last file is read: on the DirectRunner that is the whole
photo collection in the launcher's memory. So ingestion writes each example to its hash side
as it goes, and this step moves the one label, streaming, record by record. It runs only
when the hash put every label on one side, which takes a handful of labels (with 10% held
out, 50 labels land on one side with probability 0.5%), so it reads small data.
"""
from __future__ import annotations

import os

import tensorflow as tf
from tfx.dsl.io import fileio

from components.image_example_gen import features as F

_GZIP = "GZIP"
_WORK_DIR = "_guard_move"  # beside the splits; readers list only Split-*/


def _label_of(record: bytes) -> bytes:
    return tf.train.Example.FromString(record).features.feature[F.LABEL].bytes_list.value[0]


def split_dir(examples_uri: str, split: str) -> str:
    return os.path.join(examples_uri, f"Split-{split}")


def move_label(examples_uri: str, label: str, from_split: str, to_split: str, prefix: str) -> int:
    """Moves every example of ``label`` from one split's TFRecords to the other's.

    Each file of ``from_split`` is rewritten without the label (kept under its name, possibly
    empty, so the split keeps its files); the moved records go to one new file
    ``<prefix>-guard-00000-of-00001.gz`` in ``to_split``. Memory is one record at a time.

    Args:
      examples_uri: the Examples artifact's uri (holds ``Split-<name>/``).
      label: the label to move, as ingestion wrote it (UTF-8 in the ``label`` feature).
      from_split, to_split: split names.
      prefix: the TFRecord file prefix ingestion used.

    Returns:
      The number of examples moved.
    """
    wanted = label.encode("utf-8")
    work = os.path.join(examples_uri, _WORK_DIR)
    fileio.makedirs(work)
    moved = 0
    target = os.path.join(split_dir(examples_uri, to_split), f"{prefix}-guard-00000-of-00001.gz")
    with tf.io.TFRecordWriter(target, _GZIP) as out:
        for path in sorted(fileio.glob(os.path.join(split_dir(examples_uri, from_split), "*"))):
            kept = os.path.join(work, os.path.basename(path))
            with tf.io.TFRecordWriter(kept, _GZIP) as keep:
                for record in tf.data.TFRecordDataset(path, compression_type=_GZIP).as_numpy_iterator():
                    if _label_of(record) == wanted:
                        out.write(record)
                        moved += 1
                    else:
                        keep.write(record)
            fileio.rename(kept, path, overwrite=True)
    fileio.rmtree(work)
    return moved
