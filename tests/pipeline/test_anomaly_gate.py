"""AnomalyGate: schema violations found by TFDV stop the run with one readable line each."""
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tfx.types import artifact_utils, standard_artifacts

from pipeline.anomaly_gate import describe_anomalies, raise_on_anomalies
from pipeline.pipeline import SCHEMA_FILE


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


def _anomalies_artifact(tmp_path, examples_by_split):
    schema = tfdv.load_schema_text(SCHEMA_FILE)
    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = str(tmp_path / "anomalies")
    artifact.split_names = artifact_utils.encode_split_names(list(examples_by_split))
    for split, examples in examples_by_split.items():
        path = tmp_path / f"{split}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as w:
            for e in examples:
                w.write(e)
        stats = tfdv.generate_statistics_from_tfrecord(str(path))
        anomalies = tfdv.validate_statistics(stats, schema)
        out = tmp_path / "anomalies" / f"Split-{split}"
        out.mkdir(parents=True)
        (out / "SchemaDiff.pb").write_bytes(anomalies.SerializeToString())
    return artifact


def test_clean_data_passes(tmp_path):
    artifact = _anomalies_artifact(tmp_path, {"train": [_example("jpeg"), _example("png")]})
    assert describe_anomalies(artifact) == []
    raise_on_anomalies(artifact)


def test_schema_violations_stop_the_run_naming_split_and_feature(tmp_path):
    artifact = _anomalies_artifact(tmp_path, {
        "train": [_example("jpeg")],
        "eval": [_example("webp"), _example("jpeg", width=0)]})
    lines = describe_anomalies(artifact)
    assert any(l.startswith('split eval: feature "format"') and "webp" in l for l in lines), lines
    assert any(l.startswith('split eval: feature "width"') for l in lines), lines
    assert not any(l.startswith("split train") for l in lines)
    with pytest.raises(RuntimeError, match="schemas/schema.pbtxt") as err:
        raise_on_anomalies(artifact)
    assert "webp" in str(err.value)
