"""Artifact readers on a non-local filesystem: TensorFlow's in-memory ``ram://``.

``ram://`` is reached only through tf.io.gfile / TFX fileio, exactly like gs://, and is
invisible to ``os.path`` and ``open``: code that would quietly read nothing from an object
store fails here. (The schema gate's own ram:// tests are in test_anomaly_gate.py; the
pipeline's real Evaluator output and pushed model are read from ram:// in
test_kill_anywhere.py.)
"""
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.retrieval import model_versions
from components.retrieval.embedder import Embedder
from components.retrieval.serving_contract import resolve_model_dir
from conftest import load_fixture
from pipeline import local_runner

stand_in = load_fixture("stand_in_model")
ram_fs = load_fixture("ram_fs")
copy_tree = ram_fs.copy_tree


@pytest.fixture
def ram():
    prefix = ram_fs.fresh_prefix("store")
    yield prefix
    ram_fs.remove(prefix)


@pytest.fixture(scope="module")
def stand_in_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m"
    stand_in.save_stand_in_model(path, dim=16)
    return path


def _jpeg(seed):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 50, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_model_base_on_ram_resolves_to_its_newest_complete_version_and_embeds(ram, stand_in_model):
    base = f"{ram}/serving"
    copy_tree(stand_in_model, f"{base}/5")
    copy_tree(stand_in_model, f"{base}/7")
    # Version 9: what a push killed mid-copy leaves (variables, no saved_model.pb);
    # version 8: killed inside saved_model.pb (truncated). Neither may be chosen.
    copy_tree(stand_in_model / "variables", f"{base}/9/variables")
    data = (stand_in_model / "saved_model.pb").read_bytes()
    copy_tree(stand_in_model / "variables", f"{base}/8/variables")
    with tf.io.gfile.GFile(f"{base}/8/saved_model.pb", "wb") as f:
        f.write(data[: len(data) // 2])
    assert [v.rsplit("/", 1)[1] for v in model_versions.version_dirs(base)] == ["5", "7", "8", "9"]
    assert resolve_model_dir(base) == f"{base}/7"
    jpegs = [_jpeg(1), _jpeg(2)]
    np.testing.assert_allclose(Embedder(base).embed_bytes(jpegs),
                               Embedder(str(stand_in_model)).embed_bytes(jpegs), rtol=1e-6)
    assert model_versions.remove_incomplete_versions(base) == [f"{base}/8", f"{base}/9"]
    assert [v.rsplit("/", 1)[1] for v in model_versions.version_dirs(base)] == ["5", "7"]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_model_dir(f"{ram}/nothing-here")


def test_ingestion_summary_reads_from_ram_and_a_missing_file_is_named(ram):
    report = f"{ram}/ImageExampleGen/report/3"
    tf.io.gfile.makedirs(report)
    with tf.io.gfile.GFile(f"{report}/summary.json", "w") as f:
        f.write(json.dumps({"emitted_total": 5, "rejected": 1}))
    assert local_runner.read_json_artifact_file(report, "summary.json") == {"emitted_total": 5, "rejected": 1}
    with pytest.raises(local_runner.ArtifactUnreadable, match=f"{ram}/ImageExampleGen/report/4/summary.json"):
        local_runner.read_json_artifact_file(f"{ram}/ImageExampleGen/report/4", "summary.json")


def test_evaluation_without_metrics_is_an_error_naming_the_artifact(ram):
    tf.io.gfile.makedirs(f"{ram}/Evaluator/evaluation/9")
    with pytest.raises(local_runner.ArtifactUnreadable, match=f"{ram}/Evaluator/evaluation/9"):
        local_runner.evaluation_metrics(f"{ram}/Evaluator/evaluation/9")


def test_the_reports_split_reader_reads_examples_on_an_object_store(ram):
    """``demo_report.read_split`` (the run report's and the demo's reader of the Examples) on a
    ``ram://`` artifact. Mutation that fails it: listing the split with ``glob.glob``, which sees
    local files only, so the report silently found no examples on a gs:// pipeline root."""
    from pipeline import demo_report
    from pipeline import features as F

    def example(i):
        feature = {F.IMAGE: f"bytes-{i}".encode(), F.IMAGE_ID: f"id-{i}".encode(), F.LABEL: f"l{i % 2}".encode()}
        return tf.train.Example(features=tf.train.Features(feature={
            k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) for k, v in feature.items()}))

    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for shard, rows in (("data_tfrecord-00000-of-00002.gz", range(0, 3)), ("data_tfrecord-00001-of-00002.gz", range(3, 5))):
        tf.io.gfile.makedirs(f"{ram}/examples/Split-eval")
        with tf.io.TFRecordWriter(f"{ram}/examples/Split-eval/{shard}", options) as writer:
            for i in rows:
                writer.write(example(i).SerializeToString())
    ids, images, labels = demo_report.read_split(f"{ram}/examples", "eval")
    assert ids == [f"id-{i}" for i in range(5)]
    assert images == [f"bytes-{i}".encode() for i in range(5)]
    assert labels == ["l0", "l1", "l0", "l1", "l0"]
