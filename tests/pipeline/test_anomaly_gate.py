"""AnomalyGate: schema violations found by TFDV stop the run with one readable line each, on
the local disk and on a non-local filesystem (TensorFlow's in-memory ``ram://``, which goes
through the same tf.io.gfile path as gs://), and a missing or unreadable anomalies file stops
it too (fail closed)."""
import uuid

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tfx.types import artifact_utils, standard_artifacts

from pipeline.anomaly_gate import AnomaliesUnreadable, anomalies_path, describe_anomalies, raise_on_anomalies
from schemas import SCHEMA_FILE


def _example(fmt, width=10):
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\xff\xd8..."])),
        "image_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a.jpg"])),
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"tower"])),
        "format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[fmt.encode()])),
        "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[width])),
        "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[10])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(params=["local", "ram"])
def root(request, tmp_path):
    """Where the anomalies artifact lives: a local folder, or a fresh ram:// prefix."""
    if request.param == "local":
        yield str(tmp_path / "artifacts")
        return
    prefix = f"ram://gate-{uuid.uuid4().hex[:12]}"
    yield prefix
    if tf.io.gfile.exists(prefix):
        tf.io.gfile.rmtree(prefix)


def _anomalies_artifact(tmp_path, examples_by_split, root=None):
    """An ExampleAnomalies artifact under ``root`` (default: tmp_path) with TFDV's own
    anomalies for each split's examples, written through tf.io.gfile."""
    schema = tfdv.load_schema_text(SCHEMA_FILE)
    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = f"{root or tmp_path}/anomalies"
    artifact.split_names = artifact_utils.encode_split_names(list(examples_by_split))
    for split, examples in examples_by_split.items():
        path = tmp_path / f"{split}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as w:
            for e in examples:
                w.write(e)
        stats = tfdv.generate_statistics_from_tfrecord(str(path))
        anomalies = tfdv.validate_statistics(stats, schema)
        out = anomalies_path(artifact, split)
        tf.io.gfile.makedirs(out.rsplit("/", 1)[0])
        with tf.io.gfile.GFile(out, "wb") as f:
            f.write(anomalies.SerializeToString())
    return artifact


def test_clean_data_passes(tmp_path, root):
    artifact = _anomalies_artifact(tmp_path, {"train": [_example("jpeg"), _example("png")]}, root)
    assert describe_anomalies(artifact) == []
    raise_on_anomalies(artifact)


def test_schema_violations_stop_the_run_naming_split_and_feature(tmp_path, root):
    artifact = _anomalies_artifact(tmp_path, {
        "train": [_example("jpeg")],
        "eval": [_example("tiff"), _example("jpeg", width=0)]}, root)
    lines = describe_anomalies(artifact)
    assert any(l.startswith('split eval: feature "format"') and "tiff" in l for l in lines), lines
    assert any(l.startswith('split eval: feature "width"') for l in lines), lines
    assert not any(l.startswith("split train") for l in lines)
    with pytest.raises(RuntimeError, match="schemas/schema.pbtxt") as err:
        raise_on_anomalies(artifact)
    assert "tiff" in str(err.value)


def test_a_missing_anomalies_file_stops_the_run_naming_split_and_path(tmp_path, root):
    # Clean data in both splits, then the eval split's file is gone: "no file" must not
    # read as "no anomalies" (os.path.exists is False for every gs:// path).
    artifact = _anomalies_artifact(tmp_path, {"train": [_example("jpeg")], "eval": [_example("png")]}, root)
    missing = anomalies_path(artifact, "eval")
    tf.io.gfile.remove(missing)
    with pytest.raises(AnomaliesUnreadable) as err:
        raise_on_anomalies(artifact)
    assert "split eval" in str(err.value) and missing in str(err.value)
    assert isinstance(err.value, RuntimeError)  # the component fails like on anomalies


def test_an_unreadable_anomalies_file_stops_the_run(tmp_path, root):
    artifact = _anomalies_artifact(tmp_path, {"train": [_example("jpeg")]}, root)
    path = anomalies_path(artifact, "train")
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(b"\x12\x05ab")  # a length-delimited field cut short: a partial write
    with pytest.raises(AnomaliesUnreadable, match="split train") as err:
        describe_anomalies(artifact)
    assert path in str(err.value)


def test_an_empty_anomalies_file_stops_the_run(tmp_path):
    # Local only: ram:// cannot hold an empty file (a GFile that writes nothing leaves the
    # old content). An empty proto would parse as "no anomalies".
    artifact = _anomalies_artifact(tmp_path, {"train": [_example("jpeg")]})
    path = anomalies_path(artifact, "train")
    open(path, "wb").close()
    with pytest.raises(AnomaliesUnreadable, match="is empty") as err:
        describe_anomalies(artifact)
    assert path in str(err.value)


def test_an_artifact_without_splits_stops_the_run(tmp_path, root):
    artifact = _anomalies_artifact(tmp_path, {}, root)
    with pytest.raises(AnomaliesUnreadable, match="names no split"):
        raise_on_anomalies(artifact)
