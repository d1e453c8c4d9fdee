"""The serving contract: what a pushed DOLG model offers, and the one place every reader and
the exporter take it from (``pipeline/signatures.py`` writes it; the Evaluator's config, the local
embedder, the REST/gRPC clients, ``explain``, the index and the demo read it).

A pushed model is a SavedModel in TF Serving's layout ``<base>/<version>/saved_model.pb``
(version: an integer). Its ``serve`` MetaGraph has, all with method ``tensorflow/serving/predict``:

* ``serving_default``: input ``images``, tf.string [None] of encoded image bytes; output
  ``embedding``, float32 [None, D], L2-normalised. Bytes that are not an accepted image raise
  InvalidArgumentError;
* ``serving_examples``: input ``examples``, serialized tf.Examples with a bytes feature
  ``image``; output ``embedding`` (what the Evaluator feeds);
* ``serving_scales``: inputs ``images`` and ``scales`` (float32 [None]); output ``embedding``
  at the scales of the request;
* ``transform_features``: input ``examples``; the Transform graph's outputs;
* ``attention``: input ``image`` (one encoded image, a scalar); output ``attention``
  [H, W], the local attention map over the image's pixels.

Nothing here imports TensorFlow at module level, so the CLI and the clients stay light.
"""
from __future__ import annotations

import os
from typing import Optional

from components.retrieval import model_versions
from components.retrieval.model_versions import model_version  # noqa: F401  (part of the contract's API)

MODEL_NAME = "dolg"                      # the name TF Serving serves it under (models.config)
SERVE_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"

IMAGES_SIGNATURE = "serving_default"
EXAMPLES_SIGNATURE = "serving_examples"
SCALES_SIGNATURE = "serving_scales"
TRANSFORM_SIGNATURE = "transform_features"
ATTENTION_SIGNATURE = "attention"

IMAGES_INPUT = "images"
EXAMPLES_INPUT = "examples"
SCALES_INPUT = "scales"
ATTENTION_INPUT = "image"
EMBEDDING_OUTPUT = "embedding"
ATTENTION_OUTPUT = "attention"


class SignatureError(ValueError):
    """A SavedModel does not have the signatures the contract promises."""


def resolve_model_dir(path: str) -> str:
    """The SavedModel directory to load: ``path`` itself or its highest complete version.

    Both the base folder TF Serving watches and one version folder are accepted. Any location
    TensorFlow opens (a local path, gs://, ram://); a version folder a killed push left
    incomplete is never chosen (``model_versions``), as TF Serving would not load it either.

    Raises:
      FileNotFoundError: neither a complete SavedModel nor a base folder holding one.
    """
    import tensorflow as tf

    from components.image_example_gen import storage

    path = os.fspath(path)
    if not storage.is_uri(path):
        path = os.path.abspath(storage.canonical(path))
    if model_versions.is_complete_version(path):
        return path
    if not tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"{path}: not a model directory (no such folder)")
    versions = model_versions.complete_versions(path)
    if not versions:
        raise FileNotFoundError(f"{path}: no complete saved_model.pb here nor in an integer version folder")
    return versions[-1]


def _describe_tensor(info) -> dict:
    from tensorflow.core.framework import types_pb2

    shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
    return {"dtype": types_pb2.DataType.Name(info.dtype), "shape": shape, "name": info.name}


def _describe_signature(sig) -> dict:
    return {"method_name": sig.method_name,
            "inputs": {k: _describe_tensor(v) for k, v in sorted(sig.inputs.items())},
            "outputs": {k: _describe_tensor(v) for k, v in sorted(sig.outputs.items())}}


def _embedding_problems(name: str, sig: dict, input_key: str) -> tuple[list, Optional[int]]:
    """What is wrong with one embedding signature, and its D when it is right."""
    problems = []
    if sig["method_name"] != PREDICT_METHOD:
        problems.append(f"{name}: method {sig['method_name']!r}, expected {PREDICT_METHOD!r}")
    if list(sig["inputs"]) != [input_key]:
        problems.append(f"{name}: inputs {list(sig['inputs'])}, expected exactly ['{input_key}']")
    else:
        tensor = sig["inputs"][input_key]
        if tensor["dtype"] != "DT_STRING" or tensor["shape"] != [-1]:
            problems.append(f"{name}: input '{input_key}' is {tensor['dtype']} {tensor['shape']}, "
                            "expected DT_STRING [-1]")
    out = sig["outputs"].get(EMBEDDING_OUTPUT)
    if out is None:
        problems.append(f"{name}: no output '{EMBEDDING_OUTPUT}' (has: {list(sig['outputs'])})")
        return problems, None
    shape = out["shape"]
    if out["dtype"] != "DT_FLOAT" or shape is None or len(shape) != 2 or shape[0] != -1 or shape[1] < 1:
        problems.append(f"{name}: output '{EMBEDDING_OUTPUT}' is {out['dtype']} {shape}, "
                        "expected DT_FLOAT [-1, D] with D known")
        return problems, None
    return problems, shape[1]


def check_signatures(saved_model_dir: str, require_examples: bool = True) -> dict:
    """Checks the embedding signatures the clients rely on; returns what ``saved_model_cli``
    shows.

    ``saved_model_dir`` is a SavedModel or a TF Serving base folder (then its newest complete
    version is checked). ``serving_default`` must have exactly one input, ``images`` DT_STRING
    [-1] (one input is what lets REST's row format send bare ``{"b64": ...}`` instances), and an
    output ``embedding`` DT_FLOAT [-1, D]; ``serving_examples`` (unless
    ``require_examples=False``) the same with ``examples``, and the same D.

    Returns:
      ``{"saved_model_dir", "version", "embedding_dim", "signatures": {name: {"method_name",
      "inputs", "outputs"}}}``.
    Raises:
      SignatureError: listing every problem found.
    """
    from tensorflow.python.tools import saved_model_utils

    try:
        path = resolve_model_dir(saved_model_dir)
    except FileNotFoundError as err:
        raise SignatureError(str(err)) from err
    try:
        meta_graph = saved_model_utils.get_meta_graph_def(path, SERVE_TAG)
    except RuntimeError as err:  # raised when no MetaGraph has the tag set
        raise SignatureError(f"{path}: {err}") from err
    signatures = {name: _describe_signature(sig) for name, sig in sorted(meta_graph.signature_def.items())}
    expected = {IMAGES_SIGNATURE: IMAGES_INPUT}
    if require_examples:
        expected[EXAMPLES_SIGNATURE] = EXAMPLES_INPUT
    problems, dims = [], {}
    for name, input_key in expected.items():
        if name not in signatures:
            problems.append(f"no signature '{name}' (has: {sorted(signatures)})")
            continue
        found, dim = _embedding_problems(name, signatures[name], input_key)
        problems += found
        if dim is not None:
            dims[name] = dim
    if len(set(dims.values())) > 1:
        problems.append(f"embedding widths differ between signatures: {dims}")
    if problems:
        raise SignatureError(f"{path}: " + "; ".join(problems))
    return {"saved_model_dir": path, "version": model_version(path),
            "embedding_dim": next(iter(dims.values())), "signatures": signatures}


def has_signature(saved_model_dir: str, name: str) -> bool:
    """True when ``saved_model_dir`` is a SavedModel whose ``serve`` MetaGraph has ``name``
    (False for any other folder, e.g. a Keras save without the exported signatures)."""
    import tensorflow as tf
    from tensorflow.python.tools import saved_model_utils

    # tf.io.gfile: the model may be on gs:// or any filesystem TensorFlow opens.
    if not tf.io.gfile.exists(f"{str(saved_model_dir).rstrip('/')}/saved_model.pb"):
        return False
    meta = saved_model_utils.get_meta_graph_def(str(saved_model_dir), SERVE_TAG)
    return name in meta.signature_def
