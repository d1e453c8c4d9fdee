"""Clients for the DOLG model served by TensorFlow Serving (the contract they rely on is
``components.retrieval.serving_contract``: ``serving_default`` takes ``images``, tf.string [None]
of encoded image bytes, and returns ``embedding``, float32 [None, D]).

Two clients send the original file bytes (no decoding or resizing on the client: the model
does that, so client and training see the same preprocessing):

REST, ``POST {server}/v1/models/{name}:predict`` in TF Serving's *row* format::

    {"signature_name": "serving_default", "instances": [{"b64": "<base64>"}, ...]}

A ``{"b64": ...}`` object is TF Serving's spelling of one binary value, not a named-input
object; since the signature has exactly one input, each instance is that input's value for
one image and TF Serving batches them into ``images`` of shape [n]. The answer is
``{"predictions": [[e_1, ..., e_D], ...]}`` (one row per instance; rows would be objects
keyed by output name if the signature had several outputs, which the parser also accepts).
Errors come back as ``{"error": "..."}`` with a 4xx/5xx status.

gRPC, ``PredictionService.Predict`` with ``model_spec.name``, ``model_spec.signature_name``
and ``inputs["images"]`` a DT_STRING tensor of shape [n]; the answer's
``outputs["embedding"]`` is read with ``tf.make_ndarray``.

"""
from __future__ import annotations

import base64
import pathlib
from typing import Iterable, Sequence

import numpy as np

from components.retrieval.serving_contract import (EMBEDDING_OUTPUT, IMAGES_INPUT, IMAGES_SIGNATURE,
                                                   MODEL_NAME)


class ServingError(RuntimeError):
    """A request to TF Serving failed, or an input could not be sent; the message says why."""


# ------------------------------------------------------------------ inputs ---------------

def read_images(paths: Iterable) -> list[bytes]:
    """Read each file's bytes as they are. An unreadable or empty file is refused by name.

    Nothing is decoded here: the served model decodes, so a file that is not an image is
    reported by the server (as InvalidArgument) rather than guessed at by the client.
    """
    blobs = []
    for path in paths:
        try:
            data = pathlib.Path(path).read_bytes()
        except OSError as err:  # missing, a directory, no permission...
            raise ServingError(f"{path}: cannot read the file ({err.strerror or err})") from err
        if not data:
            # An empty request element would only come back as a decode error for the whole
            # batch; refusing it here names the culprit.
            raise ServingError(f"{path}: the file is empty")
        blobs.append(data)
    return blobs


def _batches(items: Sequence, size: int):
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, not {size}")
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ------------------------------------------------------------------ REST -----------------

def rest_predict_payload(images: Sequence[bytes],
                         signature_name: str = IMAGES_SIGNATURE) -> dict:
    """The JSON body of a row-format predict request for encoded images."""
    return {
        "signature_name": signature_name,
        "instances": [{"b64": base64.b64encode(blob).decode("ascii")} for blob in images],
    }


def parse_rest_predictions(body, expected_rows: int) -> np.ndarray:
    """``{"predictions": [...]}`` -> float32 array [n, D]; anything else is a ServingError."""
    if not isinstance(body, dict) or "predictions" not in body:
        keys = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise ServingError(f"TF Serving's answer has no 'predictions' (got {keys})")
    rows = body["predictions"]
    if not isinstance(rows, list) or len(rows) != expected_rows:
        got = len(rows) if isinstance(rows, list) else type(rows).__name__
        raise ServingError(f"expected {expected_rows} predictions, got {got}")
    # With several outputs TF Serving writes each row as {output_name: value}.
    rows = [row[EMBEDDING_OUTPUT] if isinstance(row, dict) and EMBEDDING_OUTPUT in row else row
            for row in rows]
    try:
        array = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ServingError(f"predictions are not a numeric [n, D] array: {err}") from err
    if array.ndim != 2:
        raise ServingError(f"predictions have shape {array.shape}, expected [n, D]")
    return array


class RestClient:
    """TF Serving's REST API (port 8501 by default) for one model and signature."""

    def __init__(self, server: str, model_name: str = MODEL_NAME,
                 signature_name: str = IMAGES_SIGNATURE, timeout: float = 60.0,
                 session=None, version: int | None = None):
        import requests

        # "host:8501" is accepted for convenience; TF Serving speaks plain HTTP by default.
        self.server = server.rstrip("/") if "://" in server else f"http://{server.rstrip('/')}"
        self.model_name = model_name
        self.signature_name = signature_name
        self.timeout = timeout
        self.session = session or requests.Session()
        self.version = version  # None: TF Serving answers with the newest loaded version

    @property
    def model_url(self) -> str:
        """The model's URL: with a pinned version, that version's; without, the model's own
        (the path the Deployment's readiness probe asks)."""
        url = f"{self.server}/v1/models/{self.model_name}"
        return url if self.version is None else f"{url}/versions/{int(self.version)}"

    @property
    def predict_url(self) -> str:
        return f"{self.model_url}:predict"

    def _call(self, method: str, url: str, **kwargs) -> dict:
        import requests

        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as err:
            raise ServingError(f"cannot reach TF Serving at {url}: {err}") from err
        try:
            body = response.json()
        except ValueError:
            body = None  # e.g. an HTML error page from a proxy in front of the server
        if response.status_code != 200:
            if isinstance(body, dict) and "error" in body:
                detail = body["error"]
            else:
                detail = response.text[:300] or response.reason
            raise ServingError(
                f"TF Serving {url} answered HTTP {response.status_code}: {detail}")
        if body is None:
            raise ServingError(f"TF Serving {url} answered with a body that is not JSON")
        return body

    def status(self) -> dict:
        """GET the model status: ``{"model_version_status": [{"version", "state", ...}]}``."""
        return self._call("GET", self.model_url)

    def embed(self, images: Sequence[bytes], batch_size: int = 32) -> np.ndarray:
        """Embeddings [n, D] for encoded images, ``batch_size`` images per request."""
        parts = []
        for batch in _batches(list(images), batch_size):
            body = self._call("POST", self.predict_url,
                              json=rest_predict_payload(batch, self.signature_name))
            parts.append(parse_rest_predictions(body, len(batch)))
        return _stack(parts)


# ------------------------------------------------------------------ gRPC -----------------

class GrpcClient:
    """TF Serving's gRPC PredictionService (port 8500 by default)."""

    def __init__(self, target: str, model_name: str = MODEL_NAME,
                 signature_name: str = IMAGES_SIGNATURE, timeout: float = 60.0,
                 max_message_bytes: int = 64 * 1024 * 1024, version: int | None = None):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.target = target
        self.model_name = model_name
        self.signature_name = signature_name
        self.timeout = timeout
        self.version = version
        # gRPC's default 4 MB limit is below a batch of photos (or a batch of 2048-d answers).
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        self._channel = grpc.insecure_channel(target, options=options)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def build_request(self, images: Sequence[bytes]):
        """A PredictRequest carrying the images as one DT_STRING tensor of shape [n]."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = self.signature_name
        if self.version is not None:  # unset: the newest loaded version
            request.model_spec.version.value = int(self.version)
        request.inputs[IMAGES_INPUT].CopyFrom(
            tf.make_tensor_proto(list(images), dtype=tf.string, shape=[len(images)]))
        return request

    def predict(self, images: Sequence[bytes]):
        """Send one PredictRequest and return the PredictResponse."""
        import grpc

        try:
            return self._stub.Predict(self.build_request(images), timeout=self.timeout)
        except grpc.RpcError as err:
            raise ServingError(
                f"TF Serving gRPC {self.target} answered {err.code().name}: {err.details()}"
            ) from err

    def embed(self, images: Sequence[bytes], batch_size: int = 32) -> np.ndarray:
        """Embeddings [n, D] for encoded images, ``batch_size`` images per request."""
        import tensorflow as tf

        parts = []
        for batch in _batches(list(images), batch_size):
            response = self.predict(batch)
            if EMBEDDING_OUTPUT not in response.outputs:
                raise ServingError(f"the answer has no output '{EMBEDDING_OUTPUT}' "
                                   f"(outputs: {sorted(response.outputs)})")
            array = tf.make_ndarray(response.outputs[EMBEDDING_OUTPUT]).astype(np.float32)
            if array.ndim != 2 or array.shape[0] != len(batch):
                raise ServingError(f"output '{EMBEDDING_OUTPUT}' has shape {array.shape}, "
                                   f"expected [{len(batch)}, D]")
            parts.append(array)
        return _stack(parts)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _stack(parts: list) -> np.ndarray:
    if not parts:
        return np.zeros((0, 0), np.float32)
    widths = {part.shape[1] for part in parts}
    if len(widths) > 1:
        raise ServingError(f"embedding widths differ between requests: {sorted(widths)}")
    return np.concatenate(parts, axis=0)
