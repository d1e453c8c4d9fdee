"""TF Serving warmup requests in every exported model (``pipeline/warmup.py``).

The model is exported by the Trainer's own function, ``pipeline.signatures.export``, with a real
Transform graph (the pipeline's ``preprocessing_fn`` analysed by tf.Transform on a few generated
images, the pipeline's schema) and the ``tiny`` preset's DOLG, into the Model artifact's
``Format-Serving`` folder as the Trainer does; then TFX's own Pusher executor pushes it into a
TF Serving base folder, and every check reads the PUSHED copy, so the file is shown to travel
with the model. The warmup file's writer and reader are also run on ``ram://`` (reached only
through ``tf.io``, as gs:// is). (The whole export is not pushed from ram://: TensorFlow's
ram:// lists a folder by raw name prefix, so ``assets`` there lists ``assets.extra``'s name as a
bogus file ``.extra``, which TFX's copy then fails on; gs:// lists ``assets/`` and is not
affected.)

What breaks these tests:

- ``export`` no longer writes ``assets.extra/tf_serving_warmup_requests`` (or writes it outside
  the folder the Pusher copies, or with Python's ``open``, which cannot reach ram://, gs://);
- a record that is not a ``PredictionLog`` with ``predict_log.request`` (TF Serving refuses to
  load the version), or more than 1000 records;
- a request that does not fit ``serving_default``: another signature name, input keys other
  than the signature's (a renamed ``images`` input), another dtype, an incompatible shape;
- a request the model cannot run (the decoder starts refusing the warmup images, an empty
  batch, a NaN embedding): replayed here through the loaded SavedModel, as TF Serving replays
  it at load time, and each must give a finite [n, D] embedding;
- ``export`` no longer checking the requests before the save: a failing request must stop the
  export (TF Serving would not load such a model) and leave no ``saved_model.pb``.

Not checked: the TF Serving binary itself (not installable here); the replay goes through
``tf.saved_model.load``'s signature, the same graph TF Serving's Predict path runs.
"""
import functools
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from components.retrieval import serving_contract as contract
from conftest import load_fixture
from pipeline import signatures, warmup
from pipeline.config import load_config
from pipeline.preprocessing import preprocessing_fn, transform_config

ram_fs = load_fixture("ram_fs")
CONFIG = load_config("tiny")


def _raw_examples():
    """The generated JPEG and PNG, twice each, as raw examples with every feature of the
    pipeline's schema (width and height are not read by the Transform)."""
    batches = warmup.warmup_batches()
    images = [batches[0][0], batches[1][1]] * 2
    return [{"image": [img], "image_id": [f"{i}.img".encode()], "label": [[b"a", b"b"][i % 2]],
             "format": [b"jpeg" if img[:2] == b"\xff\xd8" else b"png"], "width": [1], "height": [1]}
            for i, img in enumerate(images)]


def _transform_output(out_dir):
    """The pipeline's preprocessing_fn analysed by tf.Transform (Beam's DirectRunner) with the
    pipeline's schema: the same kind of transform graph the Trainer is handed."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    from schemas import SCHEMA_FILE

    schema = text_format.Parse(pathlib.Path(SCHEMA_FILE).read_text(), schema_pb2.Schema())
    metadata = dataset_metadata.DatasetMetadata(schema)
    fn = functools.partial(preprocessing_fn, custom_config=transform_config(CONFIG))
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=os.path.join(out_dir, "tmp")):
        raw = pipeline | beam.Create(_raw_examples(), reshuffle=False)
        transform_fn = (raw, metadata) | tft_beam.AnalyzeDataset(fn)
        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    # The raw schema, as TFX's Transform writes it beside the graph (raw_feature_spec reads it).
    metadata_io.write_metadata(metadata, os.path.join(out_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return tft.TFTransformOutput(out_dir)


def _serving_model_dir(model_uri):
    """Where the Trainer exports inside its Model artifact (``fn_args.serving_model_dir``)."""
    from tfx.utils import path_utils

    return path_utils.serving_model_path(model_uri)


def _push(model_uri, base):
    """TFX's Pusher executor (the pipeline's Pusher) on a blessed Model artifact at
    ``model_uri``; returns the version folder it pushed to."""
    from tfx.components.pusher.executor import Executor
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    model = standard_artifacts.Model()
    model.uri = model_uri
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = f"{base}-artifacts/blessing"
    blessing.set_int_custom_property("blessed", 1)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = f"{base}-artifacts/pushed"
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base))
    Executor().Do({"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
                  {"push_destination": proto_utils.proto_to_json(destination)})
    assert pushed.get_int_custom_property("pushed") == 1
    return pushed.get_string_custom_property("pushed_destination")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from dolg_model import model as dolg_lib

    tmp = tmp_path_factory.mktemp("warmup")
    tft_output = _transform_output(str(tmp / "transform"))
    dolg = dolg_lib.build_dolg(CONFIG.model)
    model_uri = str(tmp / "Trainer" / "model" / "1")
    export_dir = _serving_model_dir(model_uri)
    signatures.export(dolg, tft_output, CONFIG.model.scales, export_dir, CONFIG.resize_mode)
    exported = pathlib.Path(warmup.warmup_path(export_dir)).read_bytes()
    pushed = _push(model_uri, str(tmp / "serving_model"))
    return {"dolg": dolg, "tft_output": tft_output, "pushed": pushed, "exported_bytes": exported, "tmp": tmp}


def _signature_def(model_dir, name):
    from tensorflow.python.tools import saved_model_utils

    meta = saved_model_utils.get_meta_graph_def(model_dir, contract.SERVE_TAG)
    assert name in meta.signature_def, (name, sorted(meta.signature_def))
    return meta.signature_def[name]


def test_the_pushed_model_carries_the_warmup_file_and_it_parses(built):
    pushed = built["pushed"]
    assert pathlib.Path(pushed).parent.name == "serving_model" and pathlib.Path(pushed).name.isdigit()
    path = pathlib.Path(warmup.warmup_path(pushed))
    assert path == pathlib.Path(pushed) / "assets.extra" / "tf_serving_warmup_requests"
    assert path.read_bytes() == built["exported_bytes"]  # the Pusher copied it byte for byte
    logs = warmup.read_warmup_file(pushed)  # TFRecord framing and CRCs, then each proto parses
    assert 0 < len(logs) <= warmup.MAX_RECORDS
    for log in logs:
        assert log.WhichOneof("log_type") == "predict_log"
        assert log.predict_log.HasField("request") and log.predict_log.request.inputs
    assert [len(log.predict_log.request.inputs[contract.IMAGES_INPUT].string_val) for log in logs] == [1, 2]
    # Deterministic: the same bytes on every export.
    assert logs == warmup.warmup_logs()


def test_each_request_fits_serving_default(built):
    signature = _signature_def(built["pushed"], contract.IMAGES_SIGNATURE)
    assert signature.method_name == contract.PREDICT_METHOD
    for log in warmup.read_warmup_file(built["pushed"]):
        request = log.predict_log.request
        assert request.model_spec.signature_name == contract.IMAGES_SIGNATURE
        assert request.model_spec.name == contract.MODEL_NAME
        assert set(request.inputs) == set(signature.inputs) == {contract.IMAGES_INPUT}
        for key, tensor in request.inputs.items():
            assert tensor.dtype == signature.inputs[key].dtype == tf.string.as_datatype_enum
            shape = tf.TensorShape(tensor.tensor_shape)
            assert shape.is_fully_defined()
            assert shape.is_compatible_with(tf.TensorShape(signature.inputs[key].tensor_shape)), (
                shape, signature.inputs[key].tensor_shape)
            assert shape.num_elements() == len(tensor.string_val) > 0


def test_replaying_the_requests_through_the_loaded_model_gives_finite_embeddings(built):
    """What TF Serving does at load time, through the loaded SavedModel: each request's inputs,
    as tensors, into the signature it names."""
    loaded = tf.saved_model.load(built["pushed"])
    for log in warmup.read_warmup_file(built["pushed"]):
        request = log.predict_log.request
        assert request.model_spec.signature_name in loaded.signatures
        serve = loaded.signatures[request.model_spec.signature_name]
        specs = serve.structured_input_signature[1]
        inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
        assert set(inputs) == set(specs)
        for key, value in inputs.items():
            assert value.dtype == specs[key].dtype and specs[key].shape.is_compatible_with(value.shape)
        images = inputs[contract.IMAGES_INPUT].numpy()
        assert all(isinstance(b, bytes) and b for b in images)
        embedding = serve(**inputs)[contract.EMBEDDING_OUTPUT].numpy()
        assert embedding.shape == (len(images), CONFIG.model.embedding_dim)
        assert np.isfinite(embedding).all()
        np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-4)
        # The helper the exporter checks with, before the save, gives the same numbers.
        np.testing.assert_allclose(warmup.replay(serve, log)[contract.EMBEDDING_OUTPUT], embedding, atol=1e-6)


def test_a_failing_warmup_request_stops_the_export(built, monkeypatch):
    monkeypatch.setattr(warmup, "warmup_batches", lambda: [[b"not an image"]])
    export_dir = str(built["tmp"] / "refused")
    with pytest.raises(RuntimeError, match="TF Serving would not load the model"):
        signatures.export(built["dolg"], built["tft_output"], CONFIG.model.scales, export_dir,
                          CONFIG.resize_mode)
    assert not os.path.exists(os.path.join(export_dir, "saved_model.pb"))


def test_the_file_is_written_and_read_on_an_object_store_path():
    ram = ram_fs.fresh_prefix("warmup-file")
    try:
        path = warmup.write_warmup_file(f"{ram}/model/", warmup.warmup_logs())
        assert path == f"{ram}/model/assets.extra/tf_serving_warmup_requests"
        assert warmup.read_warmup_file(f"{ram}/model") == warmup.warmup_logs()
    finally:
        ram_fs.remove(ram)


def test_the_pushed_model_reloads_in_keras_as_the_trained_network(built):
    """The export skips Keras' per-layer traces (``save_traces=False``: 8 of the tiny preset's
    10 s of saving), so ``load_model`` rebuilds the network from its layers' configs and the saved
    weights. What breaks this: a layer whose ``get_config`` drops an argument, an unregistered
    class, weights saved under other names: the rebuilt network must give the trained one's
    embeddings, with the project's own layer classes (not Keras' revived stand-ins)."""
    from dolg_model import heads, layers

    again = tf.keras.models.load_model(built["pushed"], compile=False)
    project = (heads.__name__, layers.__name__)
    assert any(type(layer).__module__ in project for layer in again.layers), [type(l) for l in again.layers]
    pixels = tf.random.stateless_uniform([2, CONFIG.model.image_size, CONFIG.model.image_size, 3], [7, 1],
                                         maxval=255.0)
    np.testing.assert_allclose(again(pixels, training=False).numpy(),
                               built["dolg"](pixels, training=False).numpy(), rtol=0, atol=1e-6)
