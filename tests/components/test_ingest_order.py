"""The order ImageExampleGen writes examples in: sweeps over all labels, not label by label.

The Trainer shuffles through a 10,000-example buffer, so a data set written label by label
(a folder tree's order, a manifest sorted by label) would hand it batches of a few labels at
a time. ``ListCandidates`` ends in ``hash_order.HashOrder`` (candidates in the order of
their id's hash), so that every stretch of the written examples is a sample of all labels.
Checked here through the real ingestion (``executor.build_ingestion`` on Beam's DirectRunner,
as the Executor runs it), reading the train split's TFRecords in order; at 20,000
candidates, without files, in tests/components/test_hash_order.py.
"""
import glob
import hashlib
import io
import os

import pytest
import tensorflow as tf
from PIL import Image

from components.image_example_gen import inputs
from components.image_example_gen.executor import build_ingestion

N_LABELS, PER_LABEL = 30, 4


@pytest.fixture(scope="module")
def png():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def _written_labels(input_base, out):
    import apache_beam as beam

    with beam.Pipeline() as p:
        build_ingestion(p, input_base, None, str(out / "examples"), str(out / "report"), 0.2, 1 << 20, 10 ** 6, "s")
    files = sorted(glob.glob(str(out / "examples" / "Split-train" / "data_tfrecord-*.gz")))
    assert files
    assert not os.path.exists(out / "report" / "_listing")  # HashOrder's files removed at the end
    return [tf.train.Example.FromString(r.numpy()).features.feature["label"].bytes_list.value[0].decode()
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _assert_sweeps_over_labels(labels):
    """The first third of the examples holds at least 2/3 of the labels; written label by label
    it would hold a third of them (measured: 18 of 22 labels for the folder tree and 18 of 23
    for the manifest in hash order, 8 of 22 and 8 of 23 in listing order)."""
    n = len(set(labels))
    assert n >= 20 and len(labels) == n * PER_LABEL  # most labels in train, none lost
    first = labels[:len(labels) // 3]
    assert len(set(first)) >= 2 * n / 3, (len(set(first)), n, labels)


def test_a_label_ordered_folder_tree_is_written_in_sweeps_over_all_labels(tmp_path, png):
    """Mutation: ListCandidates._folder without its ``HashOrder`` (the walked order) -> the
    first third of the examples holds 8 labels of 22 (fails); with it, 18."""
    for label in range(N_LABELS):
        folder = tmp_path / "data" / f"landmark_{label:02d}"
        folder.mkdir(parents=True)
        for i in range(PER_LABEL):
            (folder / f"view_{i}.png").write_bytes(png)
    _assert_sweeps_over_labels(_written_labels(str(tmp_path / "data"), tmp_path / "out"))


def test_a_manifest_sorted_by_label_is_written_in_sweeps_over_all_labels(tmp_path, png):
    """GLDv2-like ids (16 hex digits) and layout, rows sorted by label. Mutation:
    ListCandidates._manifest with a GroupByKey on ids for ``first_listed`` instead of its
    ``HashOrder`` -> the rows come out nearly in row order on the DirectRunner: the first
    third holds 8 labels of 23 (fails); with it, 18."""
    root = tmp_path / "gld"
    rows = ["id,landmark_id"]
    for label in range(N_LABELS):
        for i in range(PER_LABEL):
            image_id = hashlib.sha1(f"{label}/{i}".encode()).hexdigest()[:16]
            target = root / "train" / inputs.gldv2_relpath(image_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png)
            rows.append(f"{image_id},{label}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    _assert_sweeps_over_labels(_written_labels(str(root / "train.csv"), tmp_path / "out"))
