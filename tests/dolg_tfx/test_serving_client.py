"""The REST and gRPC clients of TF Serving (dolg_tfx/serving_client.py) and the serving
contract they rely on (components/retrieval/serving_contract.py).

No TF Serving binary can be installed here, so the clients are run against local stand-ins
of its two APIs (tests/fixtures/stand_in_model.py: an http.server and a grpc server on
127.0.0.1) that serve a small SavedModel with the pushed model's signatures and answer the
way TF Serving does: row-format JSON with ``{"b64": ...}`` values decoded into a [n] string
tensor, ``{"error": ...}`` with HTTP 400 on InvalidArgument, PredictResponse tensors over gRPC.
The same stand-ins serve a pushed DOLG model in tests/pipeline/test_blessing_gate.py.
"""
import base64
import json
import socket

import numpy as np
import pytest

import dolg_tfx  # noqa: F401  (before tensorflow: fixes the Keras flavour)
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image
from tensorflow.core.framework import types_pb2

from components.retrieval import serving_contract
from dolg_tfx import serving_client as sc
from dolg_tfx.cli import main as cli_main
from conftest import load_fixture

DIM = 16


stand_in = load_fixture("stand_in_model")


# ------------------------------------------------------------------ the model ------------

@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "dolg"
    stand_in.save_stand_in_model(base / "1", dim=DIM)
    return base


@pytest.fixture(scope="module")
def loaded(model_base):
    return tf.saved_model.load(str(model_base / "1"))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Four images in the formats the model decodes, and a file that is not an image."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    paths = []
    for name, fmt in [("a.jpg", "JPEG"), ("b.png", "PNG"), ("c.gif", "GIF"), ("d.bmp", "BMP")]:
        pixels = rng.integers(0, 256, (20 + len(paths) * 7, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, format=fmt)
        paths.append(folder / name)
    (folder / "not_an_image.jpg").write_bytes(b"<html>404 Not Found</html>")
    return {"good": paths, "bad": folder / "not_an_image.jpg"}


def _reference(loaded, blobs):
    """What the model itself answers, called directly (no server in between)."""
    return loaded.signatures["serving_default"](images=tf.constant(blobs))["embedding"].numpy()


def test_check_serving_signatures(model_base):
    info = serving_contract.check_signatures(model_base)  # a base dir: its highest version
    assert info["version"] == 1 and info["embedding_dim"] == DIM
    default = info["signatures"]["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert {k: (v["dtype"], v["shape"]) for k, v in default["inputs"].items()} == {
        "images": ("DT_STRING", [-1])}
    assert {k: (v["dtype"], v["shape"]) for k, v in default["outputs"].items()} == {
        "embedding": ("DT_FLOAT", [-1, DIM])}
    assert list(info["signatures"]["serving_examples"]["inputs"]) == ["examples"]
    assert serving_contract.check_signatures(model_base / "1")["embedding_dim"] == DIM


def test_check_serving_signatures_rejects_another_contract(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda image_bytes: {"embeddings": tf.zeros([tf.size(image_bytes), 3])},
                           input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    tf.saved_model.save(module, str(tmp_path / "7"), signatures={"serving_default": module.f})
    with pytest.raises(serving_contract.SignatureError) as err:
        serving_contract.check_signatures(tmp_path)
    for problem in ("no signature 'serving_examples'", "expected exactly ['images']",
                    "no output 'embedding'"):
        assert problem in str(err.value)
    with pytest.raises(serving_contract.SignatureError, match="no complete saved_model.pb"):
        serving_contract.check_signatures(tmp_path / "7" / "variables")


def test_examples_signature_matches_images_signature(loaded, image_files):
    blobs = sc.read_images(image_files["good"])
    examples = [stand_in.image_example(b) for b in blobs]
    by_example = loaded.signatures["serving_examples"](examples=tf.constant(examples))
    np.testing.assert_allclose(by_example["embedding"].numpy(), _reference(loaded, blobs), atol=1e-6)


# ------------------------------------------------------------------ REST ------------------

@pytest.fixture(scope="module")
def rest_server(loaded):
    server = stand_in.serve_rest(loaded)
    yield server
    server.shutdown()
    server.server_close()


def test_rest_request_payload_and_embeddings(rest_server, loaded, image_files):
    blobs = [p.read_bytes() for p in image_files["good"]]
    rest_server.calls.clear()
    client = sc.RestClient(rest_server.url)
    embeddings = client.embed(sc.read_images(image_files["good"]), batch_size=3)
    assert [(c[0], c[1]) for c in rest_server.calls] == [("POST", "/v1/models/dolg:predict")] * 2
    assert rest_server.calls[0][2]["Content-Type"] == "application/json"
    for call, batch in zip(rest_server.calls, (blobs[:3], blobs[3:])):
        assert json.loads(call[3]) == {
            "signature_name": "serving_default",
            "instances": [{"b64": base64.b64encode(b).decode()} for b in batch]}
    assert embeddings.shape == (4, DIM) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, _reference(loaded, blobs), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_rest_status_and_version(rest_server, image_files):
    client = sc.RestClient(rest_server.url, version=1)
    assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
    rest_server.calls.clear()
    client.embed(sc.read_images(image_files["good"][:1]))
    assert rest_server.calls[0][1] == "/v1/models/dolg/versions/1:predict"
    with pytest.raises(sc.ServingError, match="HTTP 404.*Servable not found"):
        sc.RestClient(rest_server.url, version=9).embed(sc.read_images(image_files["good"][:1]))


def test_rest_server_errors_become_client_errors(rest_server, image_files):
    client = sc.RestClient(rest_server.url)
    with pytest.raises(sc.ServingError) as err:
        client.embed(sc.read_images([image_files["good"][0], image_files["bad"]]))
    assert "HTTP 400" in str(err.value) and "Unknown image file format" in str(err.value)
    with pytest.raises(sc.ServingError, match="HTTP 404"):
        sc.RestClient(rest_server.url, model_name="nope").embed([b"x"])
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(sc.ServingError, match="cannot reach"):
        sc.RestClient(f"127.0.0.1:{free}", timeout=5).embed([b"x"])


def test_rest_answer_parsing():
    assert sc.parse_rest_predictions({"predictions": [[1, 0], [0, 1]]}, 2).shape == (2, 2)
    rows = {"predictions": [{"embedding": [1.0, 0.0], "other": 3}]}
    np.testing.assert_array_equal(sc.parse_rest_predictions(rows, 1), [[1.0, 0.0]])
    for bad in ({"outputs": [[1.0]]}, {"predictions": [[1.0]]}, {"predictions": [1.0, 2.0]},
                {"predictions": [[1.0], [1.0, 2.0]]}):
        with pytest.raises(sc.ServingError):
            sc.parse_rest_predictions(bad, 2)


def test_unreadable_files_are_refused_by_name(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    for path, why in [(tmp_path / "missing.jpg", "cannot read"), (tmp_path, "cannot read"),
                      (tmp_path / "empty.jpg", "empty")]:
        with pytest.raises(sc.ServingError, match=why) as err:
            sc.read_images([path])
        assert str(path) in str(err.value)


# ------------------------------------------------------------------ gRPC ------------------

@pytest.fixture(scope="module")
def grpc_server(loaded):
    server, target, service = stand_in.serve_grpc(loaded)
    yield target, service
    server.stop(0)


def test_grpc_request_fields_and_embeddings(grpc_server, loaded, image_files):
    target, service = grpc_server
    blobs = sc.read_images(image_files["good"])
    service.requests.clear()
    with sc.GrpcClient(target) as client:
        embeddings = client.embed(blobs, batch_size=3)
    assert len(service.requests) == 2
    request = service.requests[0]
    assert request.model_spec.name == "dolg"
    assert request.model_spec.signature_name == "serving_default"
    assert not request.model_spec.HasField("version")
    assert list(request.inputs) == ["images"]
    tensor = request.inputs["images"]
    assert tensor.dtype == types_pb2.DT_STRING
    assert [d.size for d in tensor.tensor_shape.dim] == [3]
    assert list(tensor.string_val) == blobs[:3]
    assert embeddings.shape == (4, DIM) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, _reference(loaded, blobs), atol=1e-6)


def test_grpc_errors_and_version(grpc_server, image_files):
    target, service = grpc_server
    good, bad = sc.read_images([image_files["good"][0], image_files["bad"]])
    with sc.GrpcClient(target, version=1) as client:
        client.embed([good])
        assert service.requests[-1].model_spec.version.value == 1
        with pytest.raises(sc.ServingError, match="(?s)INVALID_ARGUMENT.*Unknown image file format"):
            client.embed([good, bad])
    with sc.GrpcClient(target, model_name="nope") as client:
        with pytest.raises(sc.ServingError, match="NOT_FOUND"):
            client.embed([good])


# ------------------------------------------------------------------ the CLI ---------------

def test_cli_embed_rest_and_grpc(rest_server, grpc_server, loaded, image_files, tmp_path):
    files = [str(p) for p in image_files["good"]]
    expected = _reference(loaded, sc.read_images(files))
    runner = CliRunner()
    result = runner.invoke(cli_main, ["embed", "--server", rest_server.url, *files])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == files
    assert all(f"dim={DIM}\tnorm=1.0000" in line for line in lines)
    out = tmp_path / "emb.npy"
    result = runner.invoke(cli_main, ["embed", "--grpc", grpc_server[0], "-o", str(out), *files])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)


def test_cli_embed_refuses_bad_input(rest_server, image_files):
    runner = CliRunner()
    rest_server.calls.clear()
    missing = str(image_files["bad"].parent / "nope.jpg")
    result = runner.invoke(cli_main, ["embed", "--server", rest_server.url, missing])
    assert result.exit_code != 0 and missing in result.output
    assert rest_server.calls == []  # refused before any request
    result = runner.invoke(cli_main, ["embed", str(image_files["good"][0])])
    assert result.exit_code != 0 and "--server" in result.output
    result = runner.invoke(cli_main, ["embed", "--server", rest_server.url, str(image_files["bad"])])
    assert result.exit_code != 0 and "Unknown image file format" in result.output


def test_runtime_check_finds_what_tf_serving_cannot_run(model_base, tmp_path):
    """The check can fail: an op the list lacks, an attribute an op lacks, a Python-only op."""
    model = model_base / "1"
    ops_file = stand_in.pinned_ops_file()
    used, _ = stand_in.saved_model_ops(model)
    assert "MatMul" in used and "T" in used["MatMul"]
    assert stand_in.runtime_problems(model, ops_file) == []
    lines = ops_file.read_text().splitlines()
    without_matmul = tmp_path / "no_matmul.txt"
    without_matmul.write_text("\n".join(l for l in lines if not l.startswith("MatMul ")))
    assert stand_in.runtime_problems(model, without_matmul) == ["op MatMul does not exist there"]
    older_matmul = tmp_path / "older_matmul.txt"
    older_matmul.write_text("\n".join(l.replace("MatMul T,", "MatMul ") if l.startswith("MatMul ") else l
                                      for l in lines))
    assert stand_in.runtime_problems(model, older_matmul) == ["op MatMul: attributes ['T'] unknown there"]

    module = tf.Module()
    module.f = tf.function(lambda x: {"y": tf.py_function(lambda v: v * 2.0, [x], tf.float32)},
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "py"), signatures={"serving_default": module.f})
    assert "op EagerPyFunc needs a Python runtime" in stand_in.runtime_problems(tmp_path / "py", ops_file)
