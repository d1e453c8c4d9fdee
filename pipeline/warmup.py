"""TF Serving warmup requests, written into every exported SavedModel.

TF Serving looks for ``<saved_model>/assets.extra/tf_serving_warmup_requests`` when it loads a
version: a TFRecord file of ``PredictionLog`` protos, each replayed (once by default) against
the freshly loaded bundle before the version is marked available, so the first real request
does not pay for the lazy initialisation (graph optimisation, oneDNN kernel choice, decoder
set-up). What TF Serving (``servables/tensorflow/saved_model_warmup{,_util}.cc``) does with it:

- a missing file is fine (no warmup); a record that does not parse, more than 1000 records, or
  ANY request that fails makes the version fail to load. So a bad warmup file costs a serving
  outage, not a slow first request: ``export`` in ``pipeline/signatures.py`` runs these requests
  through the signature before the model is saved and refuses to export if one fails;
- ``predict_log.request`` goes to the Predict path on the loaded bundle directly: the
  signature is ``model_spec.signature_name`` (empty means ``serving_default``), the inputs must
  be exactly the signature's; ``model_spec.name`` is never used to route, only echoed in the
  response and as a label of the latency metric. It is set to the contract's ``MODEL_NAME``,
  the name the clients use.

The requests hold a few tiny images generated here (no files, no downloads), the same bytes on
every export: a batch of one JPEG (the usual online request), and a JPEG with a PNG (a batch of
two, through the two decoders most clients send). The bytes are encoded by Pillow; the pixels
are a fixed pattern.

Written through ``tf.io`` (TFRecordWriter, gfile), so the export folder may be any filesystem
TensorFlow opens (local, gs://, ram://). TFX's Pusher copies the whole model folder, so the
file travels to ``serving_model/<version>/assets.extra/`` with the model.
"""
from __future__ import annotations

import io
from typing import List, Sequence

from components.retrieval import serving_contract as contract

ASSETS_EXTRA = "assets.extra"               # tensorflow/cc/saved_model/constants.h
WARMUP_FILE = "tf_serving_warmup_requests"  # TF Serving's WarmupConsts::kRequestsFileName
MAX_RECORDS = 1000                          # TF Serving's WarmupConsts::kMaxNumRecords


def warmup_path(saved_model_dir: str) -> str:
    """Where TF Serving reads the warmup requests of ``saved_model_dir``."""
    return f"{str(saved_model_dir).rstrip('/')}/{ASSETS_EXTRA}/{WARMUP_FILE}"


def _pattern(height: int, width: int):
    """A fixed RGB pattern (gradients and a square): deterministic, and not flat, so the
    decoders and the network see ordinary image content."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                      128 + 96 * np.sin((x + y) / 5.0)], axis=-1)
    image[height // 4: height // 2, width // 4: width // 2] = (250, 30, 30)
    return image.round().clip(0, 255).astype(np.uint8)


def _encode(pixels, fmt: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    options = {"quality": 90} if fmt == "JPEG" else {}
    Image.fromarray(pixels, "RGB").save(out, format=fmt, **options)
    return out.getvalue()


def warmup_batches() -> List[List[bytes]]:
    """The images of each warmup request: [[JPEG]], then [JPEG, PNG] (not square, so the
    resize pads as real photos are padded)."""
    jpeg = _encode(_pattern(48, 64), "JPEG")
    png = _encode(_pattern(40, 32), "PNG")
    return [[jpeg], [jpeg, png]]


def predict_request(images: Sequence[bytes]):
    """A ``PredictRequest`` for ``serving_default``: ``images`` as a DT_STRING [len] tensor."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = contract.MODEL_NAME
    request.model_spec.signature_name = contract.IMAGES_SIGNATURE
    request.inputs[contract.IMAGES_INPUT].CopyFrom(
        tf.make_tensor_proto(list(images), dtype=tf.string, shape=[len(images)]))
    return request


def warmup_logs(batches=None) -> list:
    """One ``PredictionLog`` (``predict_log.request``) per batch (``warmup_batches()`` by default)."""
    from tensorflow_serving.apis import prediction_log_pb2

    batches = warmup_batches() if batches is None else batches
    if not 0 < len(batches) <= MAX_RECORDS:
        raise ValueError(f"{len(batches)} warmup requests: write 1 to {MAX_RECORDS} "
                         f"(TF Serving refuses to load a model with more)")
    return [prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=predict_request(images)))
        for images in batches]


def write_warmup_file(saved_model_dir: str, logs) -> str:
    """Writes ``logs`` as ``assets.extra/tf_serving_warmup_requests`` of ``saved_model_dir``
    (any filesystem TensorFlow opens); returns the file's path."""
    import tensorflow as tf

    path = warmup_path(saved_model_dir)
    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_file(saved_model_dir: str) -> list:
    """The ``PredictionLog`` records of ``saved_model_dir``'s warmup file, as TF Serving parses
    them (a record that does not parse raises ``google.protobuf.message.DecodeError``)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(warmup_path(saved_model_dir)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record)
        logs.append(log)
    return logs


def replay(signature_fn, log):
    """Runs one warmup record's request through a signature function (a concrete function with
    keyword inputs, as ``loaded.signatures[...]`` or ``build_signatures`` give); returns its
    outputs as numpy arrays."""
    import tensorflow as tf

    inputs = {key: tf.constant(tf.make_ndarray(proto))
              for key, proto in log.predict_log.request.inputs.items()}
    return {key: value.numpy() for key, value in signature_fn(**inputs).items()}
