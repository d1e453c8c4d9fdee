"""Environment smoke tests: the TFX 1.21 stack imports and its moving parts work here."""
import os
import subprocess
import sys

import pytest


def test_stack_imports_at_pinned_versions():
    import importlib.metadata as md

    import apache_beam  # noqa: F401
    import tensorflow as tf
    import tensorflow_model_analysis  # noqa: F401
    import tensorflow_transform  # noqa: F401
    import tfx  # noqa: F401

    assert md.version("tfx") == "1.21.0"
    assert tf.__version__.startswith("2.21.")
    assert md.version("tensorflow-transform").startswith("1.21.")
    assert md.version("tensorflow-model-analysis").startswith("0.52.")


def test_tf_keras_is_keras_2_in_process():
    import tensorflow as tf
    import tf_keras

    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert tf.keras.layers.Dense is tf_keras.layers.Dense
    assert tf_keras.__version__.startswith("2.")


def test_tf_keras_is_keras_2_in_a_cli_subprocess():
    """Started like the console script, without the variable: the package must set it."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run(
        [sys.executable, "-c", "from dolg_tfx.cli import main; main()", "env"],
        env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("tf.keras"))
    assert line.split()[-1].startswith("tf_keras"), out.stdout


def test_importing_tensorflow_first_is_refused():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, "-c", "import tensorflow, dolg_tfx"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "TF_USE_LEGACY_KERAS" in out.stderr


def test_cli_help_and_version():
    out = subprocess.run(["dolg-tfx", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "0.1.0" in out.stdout
    out = subprocess.run(["dolg-tfx", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Usage" in out.stdout


def test_ml_metadata_sqlite_store_roundtrip(tmp_path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(tmp_path / "mlmd.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(config)
    atype = metadata_store_pb2.ArtifactType(name="Images")
    atype.properties["n"] = metadata_store_pb2.INT
    type_id = store.put_artifact_type(atype)
    art = metadata_store_pb2.Artifact(type_id=type_id, uri="/data/images")
    art.properties["n"].int_value = 42
    [art_id] = store.put_artifacts([art])

    reopened = metadata_store.MetadataStore(config)
    [got] = reopened.get_artifacts_by_id([art_id])
    assert got.uri == "/data/images" and got.properties["n"].int_value == 42
    assert (tmp_path / "mlmd.sqlite").stat().st_size > 0


def test_beam_direct_runner_pipeline(tmp_path):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    out = tmp_path / "counts"
    with beam.Pipeline(options=PipelineOptions(runner="DirectRunner")) as p:
        (p | beam.Create(["a", "b", "a", "c", "a"])
           | beam.combiners.Count.PerElement()
           | beam.MapTuple(lambda k, n: f"{k},{n}")
           | beam.io.WriteToText(str(out), shard_name_template=""))
    lines = sorted(out.read_text().split())
    assert lines == ["a,3", "b,1", "c,1"]
