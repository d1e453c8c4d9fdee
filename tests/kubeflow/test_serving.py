"""TF Serving's deployment: the Kubernetes manifests, the model config, and the pinned image's
TensorFlow op list. The clients that talk to it: tests/dolg_tfx/test_serving_client.py."""
import copy
import pathlib

import pytest
import yaml

import dolg_tfx  # noqa: F401  (before tensorflow: fixes the Keras flavour)
import kubernetes_validate
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from components.retrieval import serving_contract
from conftest import load_fixture

REPO = pathlib.Path(__file__).resolve().parents[2]
SERVING = REPO / "kubeflow" / "serving"
K8S_VERSION = "1.30"  # schemas bundled in kubernetes-validate; no download at test time


stand_in = load_fixture("stand_in_model")


# ------------------------------------------------------------------ manifests -------------

def _yaml_docs(name):
    return [doc for doc in yaml.safe_load_all((SERVING / name).read_text()) if doc]


@pytest.fixture(scope="module")
def deployment():
    (doc,) = _yaml_docs("deployment.yaml")
    return doc


@pytest.fixture(scope="module")
def service():
    (doc,) = _yaml_docs("service.yaml")
    return doc


@pytest.fixture(scope="module")
def model_config():
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((SERVING / "models.config").read_text(), config)  # unknown fields fail
    (entry,) = config.model_config_list.config
    return entry


def _container(deployment):
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _flags(container):
    return dict(arg.lstrip("-").split("=", 1) for arg in container["args"])


def _container_port(container, port):
    """A probe's or Service's port (a name or a number) -> the container port number."""
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    return by_name[port] if isinstance(port, str) else port


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml"])
def test_manifests_validate_against_kubernetes_schemas(name):
    docs = _yaml_docs(name)
    assert docs
    for doc in docs:
        # strict: the "-strict" schemas forbid fields that Kubernetes does not know.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _set(path, value):
    def mutate(doc):
        *parents, last = path
        for key in parents:
            doc = doc[key]
        doc[last] = value
    return mutate


CONTAINER = ["spec", "template", "spec", "containers", 0]
BROKEN = {
    "replicas-not-an-integer": ("deployment.yaml", _set(["spec", "replicas"], "two")),
    "unknown-container-field": ("deployment.yaml", _set(CONTAINER + ["imagePullPolicyy"], "Always")),
    "args-not-a-list": ("deployment.yaml", _set(CONTAINER + ["args"], "--port=8500")),
    "memory-limit-a-list": ("deployment.yaml", _set(CONTAINER + ["resources", "limits"],
                                                    {"memory": ["4Gi"]})),
    "service-port-a-string": ("service.yaml", _set(["spec", "ports", 0, "port"], "grpc")),
    "unknown-service-field": ("service.yaml", _set(["spec", "selectors"], {"a": "b"})),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_copy_fails_validation(case):
    name, mutate = BROKEN[case]
    (doc,) = _yaml_docs(name)
    broken = copy.deepcopy(doc)
    mutate(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_models_config(model_config):
    assert model_config.name == serving_contract.MODEL_NAME
    assert model_config.model_platform == "tensorflow"
    policy = model_config.model_version_policy
    assert policy.WhichOneof("policy_choice") == "latest"
    assert policy.latest.num_versions == 2


def test_deployment_agrees_with_models_config(deployment, model_config):
    container = _container(deployment)
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    flags = _flags(container)
    assert container["image"].startswith("tensorflow/serving:")
    assert container["image"].split(":")[1] not in ("", "latest")  # pinned
    assert container["command"] == ["tensorflow_model_server"]
    # The config file comes from a ConfigMap mounted where --model_config_file points.
    config_path = pathlib.PurePosixPath(flags["model_config_file"])
    assert config_path.name == "models.config"
    assert "configMap" in volumes[mounts[str(config_path.parent)]["name"]]
    assert int(flags["model_config_file_poll_wait_seconds"]) > 0
    # base_path is on the models volume as the pod mounts it (or is an object-store URI).
    base_path = model_config.base_path
    if "://" not in base_path:
        owners = [m for path, m in mounts.items()
                  if pathlib.PurePosixPath(base_path).is_relative_to(path)]
        assert owners, f"base_path {base_path} is on no volume mount"
        assert "persistentVolumeClaim" in volumes[owners[0]["name"]]
        assert owners[0]["readOnly"] is True
    # Probes: the readiness path is the status URL of the configured model, on the REST port.
    rest_port = int(flags["rest_api_port"])
    for probe in ("readinessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == f"/v1/models/{model_config.name}"
        assert _container_port(container, get["port"]) == rest_port
    assert _container_port(container, container["livenessProbe"]["tcpSocket"]["port"]) == int(flags["port"])
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


def test_service_matches_deployment(deployment, service):
    container = _container(deployment)
    flags = _flags(container)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {name: p["port"] for name, p in ports.items()} == {"grpc": 8500, "http": 8501}
    assert ports["grpc"]["port"] == int(flags["port"])
    assert ports["http"]["port"] == int(flags["rest_api_port"])
    for p in ports.values():
        assert _container_port(container, p["targetPort"]) == p["port"]


# ------------------------------------------------------------------ TF Serving's TensorFlow -
# The pushed DOLG model itself is checked against this list, and served by both stand-ins,
# in tests/pipeline/test_blessing_gate.py (which has pushed models at hand).

TESTDATA = pathlib.Path(__file__).resolve().parent / "testdata"


def test_op_list_is_the_pinned_tf_serving_version(deployment):
    tag = _container(deployment)["image"].split(":")[1]
    ops_file = TESTDATA / f"tf_{tag}_ops.txt"
    assert ops_file.exists(), f"tensorflow/serving is pinned to {tag}: generate its op list (list_tf_ops.py)"
    assert f"# tensorflow {tag}: " in ops_file.read_text()  # written by that TensorFlow, not renamed
    version, ops = stand_in.read_op_list(ops_file)
    assert version > 0 and len(ops) > 1000
    assert {"DecodeImage", "StatefulPartitionedCall", "ParseExampleV2"} <= set(ops)
