"""Kubeflow / Vertex compilation, submission, CLI and the Dockerfile.

Both outputs are compiled with a gs:// pipeline root while every tfx.dsl.io.fileio call on a
gs:// path raises: compiling must be offline (no wheel packaging under <root>/_wheels). The
files are read back with kfp's pipeline-spec protos, as kfp.Client and Vertex read them.
No docker build and no cluster here: the Dockerfile is checked statically, and its build-time
smoke check is run in this environment.
"""
import difflib
import fnmatch
import importlib
import inspect
import json
import os
import pathlib
import re
import sys
import types

import pytest
import yaml
from click.testing import CliRunner
from google.protobuf import json_format

import dolg_tfx  # noqa: F401  (before tensorflow: fixes the Keras flavour)
import kfp
from kfp.pipeline_spec import pipeline_spec_pb2
from tensorflow_model_analysis.proto import config_pb2 as tfma_config_pb2
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2

from dolg_tfx.cli import main as cli_main
from pipeline import kubeflow_runner as kr
from pipeline.config import load_config

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "kubeflow" / "Dockerfile"
IMAGE = "registry.example/dolg-tfx:test"
ROOT = "gs://bucket/root"
SERVING = "gs://bucket/serving/dolg"
DATA = "/gcs/bucket/images"
EXECUTOR_CMD = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
RESOLVER = "latest_blessed_model_resolver"
TASKS = {"ImageExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomalyGate",
         "Transform", "Trainer", "Evaluator", "Pusher",
         # The Resolver compiles into one task per resolved channel.
         f"{RESOLVER}-model-resolver", f"{RESOLVER}-model-blessing-resolver"}
BEAM_TASKS = ("ImageExampleGen", "StatisticsGen", "Transform", "Evaluator")
DATAFLOW = ["--runner=DataflowRunner", "--project=proj", "--region=europe-west4",
            "--temp_location=gs://bucket/tmp"]
_GUARDED = ("open", "copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "remove",
            "rename", "rmtree", "stat", "walk")


# Fixtures and readers
@pytest.fixture(scope="module", autouse=True)
def no_gcs():
    """Any fileio access to gs:// fails at once (instead of waiting on credentials/network)."""
    def guard(fn):
        def wrapped(*args, **kwargs):
            for arg in args:
                if str(arg).startswith("gs://"):
                    raise AssertionError(f"fileio.{fn.__name__}({arg!r}): compile touched GCS")
            return fn(*args, **kwargs)
        return wrapped

    with pytest.MonkeyPatch.context() as mp:
        for name in _GUARDED:
            mp.setattr(fileio, name, guard(getattr(fileio, name)))
        yield


def read_yaml_spec(path):
    # As kfp.Client does: the first YAML document is the PipelineSpec (comments are ignored).
    with open(path) as f:
        docs = list(yaml.safe_load_all(f))
    return json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())


def read_json_job(path):
    job = json_format.Parse(pathlib.Path(path).read_text(), pipeline_spec_pb2.PipelineJob())
    spec = json_format.ParseDict(json_format.MessageToDict(job.pipeline_spec), pipeline_spec_pb2.PipelineSpec())
    return job, spec


def executors(spec):
    deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                       pipeline_spec_pb2.PipelineDeploymentConfig())
    return deployment.executors


def task_executor(spec, task):
    component = spec.components[spec.root.dag.tasks[task].component_ref.name]
    return executors(spec)[component.executor_label]


def param(spec, task, name):
    """A task's constant parameter, schema 2.1 (`constant`) or 2.0 (`constantValue`)."""
    parameters = spec.root.dag.tasks[task].inputs.parameters
    if name not in parameters:  # TFX leaves out parameters whose value is None
        return None
    value = parameters[name].runtime_value
    if value.WhichOneof("value") == "constant":
        return value.constant.string_value
    return value.constant_value.string_value


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """One .yaml (2 GPUs, default type) and one .json (1 NVIDIA_L4) of the tiny preset."""
    out = tmp_path_factory.mktemp("kfp")
    config = load_config("tiny")
    yaml_path = kr.compile_pipeline(config, IMAGE, ROOT, str(out / "dolg.yaml"), DATA, SERVING, gpus=2)
    json_path = kr.compile_pipeline(config, IMAGE, ROOT, str(out / "dolg.json"), DATA, SERVING, gpus=1,
                                    gpu_type="NVIDIA_L4")
    job, json_spec = read_json_job(json_path)
    return {"yaml": read_yaml_spec(yaml_path), "json": json_spec, "job": job,
            "yaml_path": yaml_path, "json_path": json_path}


FORMATS = ("yaml", "json")


# The two formats
def test_fileio_guard_is_armed():
    with pytest.raises(AssertionError, match="touched GCS"):
        fileio.exists("gs://bucket/root/_wheels")


def test_yaml_is_a_bare_pipeline_spec_for_kfp(compiled):
    raw = yaml.safe_load(pathlib.Path(compiled["yaml_path"]).read_text())
    assert "pipelineSpec" not in raw and "runtimeConfig" not in raw
    spec = compiled["yaml"]
    assert spec.pipeline_info.name == "dolg-tfx"
    # 2.1: the KFP 2 backend only resolves `runtimeValue.constant`, not 2.0's `constantValue`.
    assert spec.schema_version == "2.1.0"
    assert spec.root.dag.tasks["Pusher"].inputs.parameters["push_destination"].runtime_value.HasField("constant")
    assert spec.default_pipeline_root == ROOT  # the YAML has no runtimeConfig to carry it
    assert pathlib.Path(compiled["yaml_path"]).read_text().startswith("# PIPELINE DEFINITION")


def test_json_is_a_vertex_pipeline_job(compiled):
    job = compiled["job"]
    assert job.runtime_config.gcs_output_directory == ROOT
    assert job.display_name == "dolg-tfx"
    assert compiled["json"].schema_version == "2.0.0"
    assert compiled["json"].default_pipeline_root == ROOT


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_component_is_compiled_and_wired(compiled, fmt):
    spec = compiled[fmt]
    tasks = spec.root.dag.tasks
    assert set(tasks) == TASKS
    assert "AnomalyGate" in tasks["Transform"].dependent_tasks  # the gate stops bad data
    assert {"Evaluator", "Trainer"} <= set(tasks["Pusher"].dependent_tasks)
    assert f"{RESOLVER}-model-resolver" in tasks["Evaluator"].dependent_tasks
    report = spec.components["ImageExampleGen"].output_definitions.artifacts["report"]
    assert report.artifact_type.instance_schema.startswith("title: dolg_tfx.IngestionReport")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_executor_runs_the_image(compiled, fmt):
    containers = 0
    for label, executor in executors(compiled[fmt]).items():
        if label.startswith(RESOLVER):
            assert executor.HasField("resolver"), label  # resolvers are MLMD queries, no pod
            continue
        assert executor.container.image == IMAGE, label
        assert list(executor.container.command) == EXECUTOR_CMD, label
        containers += 1
    assert containers == len(TASKS) - 2
    for task in BEAM_TASKS:  # no --runner given: the config's DirectRunner flags stay
        assert "--direct_running_mode=in_memory" in task_executor(compiled[fmt], task).container.args, task


@pytest.mark.parametrize("fmt,count,kind", [("yaml", 2, "nvidia.com/gpu"), ("json", 1, "NVIDIA_L4")])
def test_gpu_is_requested_on_the_trainer_only(compiled, fmt, count, kind):
    spec = compiled[fmt]
    resources = task_executor(spec, "Trainer").container.resources
    assert resources.accelerator.resource_type == kind and resources.accelerator.type == kind
    assert resources.accelerator.resource_count == str(count) and resources.accelerator.count == count
    assert resources.resource_cpu_limit == "8" and resources.cpu_limit == 8.0
    assert resources.resource_memory_limit == "30G" and resources.memory_limit == 30.0
    for task in TASKS - {"Trainer"}:
        executor = task_executor(spec, task)
        assert not executor.container.HasField("resources"), task


@pytest.mark.parametrize("fmt", FORMATS)
def test_evaluator_metric_module_and_pusher_destination(compiled, fmt):
    eval_config = json_format.Parse(param(compiled[fmt], "Evaluator", "eval_config"), tfma_config_pb2.EvalConfig())
    metrics = [m for spec in eval_config.metrics_specs for m in spec.metrics]
    assert [(m.module, m.class_name) for m in metrics] == [("components.retrieval.tfma_metric", "RetrievalMetrics")]
    assert hasattr(importlib.import_module(metrics[0].module), metrics[0].class_name)  # as the image will
    destination = json_format.Parse(param(compiled[fmt], "Pusher", "push_destination"), pusher_pb2.PushDestination())
    assert destination.filesystem.base_directory == SERVING


@pytest.mark.parametrize("fmt", FORMATS)
def test_modules_are_referenced_by_import_path_and_nothing_is_packed(compiled, fmt):
    spec = compiled[fmt]
    assert param(spec, "Transform", "preprocessing_fn") == "pipeline.preprocessing.preprocessing_fn"
    assert param(spec, "Trainer", "run_fn") == "pipeline.trainer.run_fn"
    for task in ("Transform", "Trainer", "Evaluator"):
        assert not param(spec, task, "module_file"), task
        assert not param(spec, task, "module_path"), task
    for dotted in ("pipeline.preprocessing.preprocessing_fn", "pipeline.trainer.run_fn"):
        module, name = dotted.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name))
    text = pathlib.Path(compiled[f"{fmt}_path"]).read_text()
    assert "_wheels" not in text and ".whl" not in text
    assert param(spec, "ImportSchemaGen", "schema_file") == kr.CONTAINER_SCHEMA_FILE
    assert str(REPO) not in param(spec, "ImportSchemaGen", "schema_file")


def test_a_module_file_is_refused_before_any_wheel_is_built(tmp_path, monkeypatch):
    import pipeline.pipeline as pp

    original = pp.create_pipeline

    def with_module_file(*args, **kwargs):
        built = original(*args, **kwargs)
        trainer = next(c for c in built.components if c.id == "Trainer")
        trainer.exec_properties["module_file"] = str(REPO / "pipeline" / "trainer.py")
        return built

    monkeypatch.setattr(pp, "create_pipeline", with_module_file)
    with pytest.raises(ValueError, match="_wheels"):
        kr.compile_pipeline(load_config("tiny"), IMAGE, ROOT, str(tmp_path / "p.yaml"), DATA, SERVING)
    assert not (tmp_path / "p.yaml").exists()


# The CLI
def _compile_cli(tmp_path, *extra, name="p.yaml"):
    out = tmp_path / name
    result = CliRunner().invoke(cli_main, [
        "kubeflow", "compile", "--image", IMAGE, "--pipeline-root", ROOT, "--data", DATA,
        "--serving-dir", SERVING, "--preset", "tiny", "-o", str(out), *extra])
    return result, out


def test_cli_beam_args_reach_the_beam_components(tmp_path):
    result, out = _compile_cli(tmp_path, *[f"--beam-arg={a}" for a in DATAFLOW], "--gpus", "0")
    assert result.exit_code == 0, result.output
    assert "Kubeflow Pipelines PipelineSpec" in result.output
    spec = read_yaml_spec(out)
    for task in BEAM_TASKS:
        args = list(task_executor(spec, task).container.args)
        for arg in DATAFLOW:
            assert arg in args, (task, arg)
        # The DirectRunner's flags are not forced on Dataflow; workers get our image.
        assert not any(a.startswith("--direct_") for a in args), (task, args)
        assert f"--sdk_container_image={IMAGE}" in args, task
        last_runner = [a for a in args if a.startswith("--runner=")][-1]
        assert last_runner == DATAFLOW[0], task
    trainer = task_executor(spec, "Trainer").container.resources
    assert not trainer.HasField("accelerator") and trainer.resource_cpu_limit == "8"


def test_cli_json_output_with_vertex_gpu(tmp_path):
    result, out = _compile_cli(tmp_path, "--gpu-type", "NVIDIA_TESLA_A100", "--gpus", "4", "--cpu", "12",
                               "--memory", "85Gi", name="p.json")
    assert result.exit_code == 0, result.output
    job, spec = read_json_job(out)
    resources = task_executor(spec, "Trainer").container.resources
    assert (resources.accelerator.type, resources.accelerator.count) == ("NVIDIA_TESLA_A100", 4)
    assert resources.resource_memory_limit == "85Gi" and resources.memory_limit == pytest.approx(85 * 2**30 / 1e9)
    assert job.runtime_config.gcs_output_directory == ROOT


@pytest.mark.parametrize("name", ["Bad_Name", "-dolg", "dolg.tfx", "a" * 129])
def test_cli_bad_pipeline_name_is_a_clear_error(tmp_path, name):
    result, out = _compile_cli(tmp_path, "--pipeline-name", name)
    assert result.exit_code == 1
    assert "[a-z0-9][a-z0-9-]{0,127}" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_compile_checks_the_name_itself(tmp_path):
    config = load_config("tiny").replace()  # a copy: load_config returns the shared preset
    object.__setattr__(config, "pipeline_name", "DOLG")  # as if built without validation
    with pytest.raises(ValueError, match=r"pipeline_name='DOLG'.*as Kubeflow requires"):
        kr.compile_pipeline(config, IMAGE, ROOT, str(tmp_path / "p.yaml"), DATA, SERVING)
    assert load_config("tiny").pipeline_name == "dolg-tfx"  # the preset itself is untouched
    for good in ("a" * 128, "dolg-tfx-2"):
        load_config("tiny").replace(pipeline_name=good)
    for bad in ("a" * 129, "-dolg", "dolg_tfx"):
        with pytest.raises(ValueError, match="pipeline_name"):
            load_config("tiny").replace(pipeline_name=bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_object_store_data_compiles(tmp_path, fmt):
    # ImageExampleGen reads through fileio, so a gs:// input_base is fine; compiling must
    # still not touch it (the no_gcs guard would fail any fileio access to gs://).
    data = "gs://bucket/images/train.csv"
    out = kr.compile_pipeline(load_config("tiny"), IMAGE, ROOT, str(tmp_path / f"p.{fmt}"), data, SERVING)
    spec = read_yaml_spec(out) if fmt == "yaml" else read_json_job(out)[1]
    assert param(spec, "ImageExampleGen", "input_base") == data


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_gallery_adds_the_indexer_after_the_pusher(tmp_path, fmt):
    """GalleryIndexer compiles as one more task, fed by the Pusher (whose version names the
    index), the Trainer's model and the blessing; without a gallery there is none (TASKS)."""
    gallery = "gs://bucket/gallery"
    result, out = _compile_cli(tmp_path, "--gallery", gallery, name=f"p.{fmt}")
    assert result.exit_code == 0, result.output
    spec = read_yaml_spec(out) if fmt == "yaml" else read_json_job(out)[1]
    assert set(spec.root.dag.tasks) == TASKS | {"GalleryIndexer"}
    task = spec.root.dag.tasks["GalleryIndexer"]
    assert {"Pusher", "Trainer", "Evaluator"} <= set(task.dependent_tasks)
    assert set(task.inputs.artifacts) == {"model", "model_blessing", "pushed_model"}
    assert task.inputs.artifacts["pushed_model"].task_output_artifact.producer_task == "Pusher"
    assert param(spec, "GalleryIndexer", "gallery") == gallery
    assert param(spec, "GalleryIndexer", "index_dir") == kr.default_gallery_index_dir(SERVING)
    assert task_executor(spec, "GalleryIndexer").container.image == IMAGE
    chosen, out = _compile_cli(tmp_path, "--gallery", gallery, "--gallery-index-dir", "gs://bucket/idx",
                               name=f"q.{fmt}")
    assert chosen.exit_code == 0, chosen.output
    spec = read_yaml_spec(out) if fmt == "yaml" else read_json_job(out)[1]
    assert param(spec, "GalleryIndexer", "index_dir") == "gs://bucket/idx"


@pytest.mark.parametrize("changes,message", [
    ({"data": "images"}, "absolute path"),
    ({"pipeline_root": "/tmp/root"}, "object-store URI"),
    ({"serving_model_dir": "serving"}, "serving_model_dir"),
    ({"output_file": "p.txt"}, r"\.yaml"),
    ({"output_file": "p.json", "gpu_type": "nvidia.com/gpu"}, "Vertex accelerator"),
    ({"output_file": "p.yaml", "gpu_type": "NVIDIA_TESLA_T4"}, "Kubernetes resource"),
    ({"gpus": -1}, "gpus"),
    ({"memory": "lots"}, "memory"),
    ({"config": load_config("tiny").replace(gallery="gallery")}, "gallery 'gallery' must be a URI"),
    ({"config": load_config("tiny").replace(gallery=DATA), "gallery_index_dir": "idx"}, "gallery_index_dir"),
])
def test_compile_rejects_what_cannot_run(tmp_path, changes, message):
    args = dict(config=load_config("tiny"), image=IMAGE, pipeline_root=ROOT, output_file="p.yaml",
                data=DATA, serving_model_dir=SERVING)
    args.update(changes)
    args["output_file"] = str(tmp_path / args["output_file"])
    with pytest.raises(ValueError, match=message):
        kr.compile_pipeline(**args)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,expected", [
    ([], ["kubeflow"]), (["kubeflow"], ["compile", "submit"]),
    (["kubeflow", "compile"], ["--image", "--pipeline-root", "--data", "--serving-dir", "--gpus", "--beam-arg",
                               "--gallery", "--gallery-index-dir"]),
    (["kubeflow", "submit"], ["--host", "--run-name", "--experiment"])])
def test_cli_help(argv, expected):
    result = CliRunner().invoke(cli_main, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    assert all(word in result.output for word in expected), result.output


# Submission, with a stand-in kfp.Client
def _bound(method, fake_self, args, kwargs):
    """The arguments of a call bound to the real kfp.Client method's signature: a misspelt or
    surplus argument raises TypeError here, as it would against the real client."""
    bound = inspect.signature(method).bind(fake_self, *args, **kwargs)
    return {name: value for name, value in bound.arguments.items() if name != "self"}


@pytest.fixture
def fake_kfp(monkeypatch):
    """kfp.Client replaced by a recorder of its construction and create_run_from_pipeline_package,
    each call checked against the real client's signature."""
    calls = []
    real = kfp.Client

    class FakeClient:
        def __init__(self, *args, **kwargs):
            calls.append(("init", _bound(real.__init__, self, args, kwargs)))

        def create_run_from_pipeline_package(self, *args, **kwargs):
            calls.append(("run", _bound(real.create_run_from_pipeline_package, self, args, kwargs)))
            return types.SimpleNamespace(run_id="run-123")

    monkeypatch.setattr(kfp, "Client", FakeClient)
    return calls


def test_submit_sends_the_package_to_kfp(compiled, fake_kfp):
    run_id = kr.submit("http://kfp.example:8080", compiled["yaml_path"], run_name="first", experiment="dolg",
                       params={"x": 1})
    assert run_id == "run-123"
    assert fake_kfp == [("init", {"host": "http://kfp.example:8080"}),
                        ("run", {"pipeline_file": compiled["yaml_path"], "arguments": {"x": 1},
                                 "run_name": "first", "experiment_name": "dolg"})]


def test_fake_client_refuses_what_the_real_client_would(fake_kfp):
    with pytest.raises(TypeError, match="hots"):
        kfp.Client(hots="http://h:8080")
    client = kfp.Client("http://h:8080")  # positional, as the real one takes it
    with pytest.raises(TypeError, match="experiment"):
        client.create_run_from_pipeline_package("p.yaml", experiment="dolg")
    assert fake_kfp == [("init", {"host": "http://h:8080"})]


def test_submit_refuses_a_vertex_job(compiled, fake_kfp):
    with pytest.raises(ValueError, match="Vertex"):
        kr.submit("http://kfp.example:8080", compiled["json_path"])
    assert fake_kfp == []


def test_cli_submit(compiled, fake_kfp):
    result = CliRunner().invoke(cli_main, ["kubeflow", "submit", compiled["yaml_path"], "--host", "http://h:8080",
                                           "--run-name", "r1", "--param", "steps=3", "--param", "tag=abc"])
    assert result.exit_code == 0, result.output
    assert "run-123" in result.output
    assert fake_kfp[1][1]["arguments"] == {"steps": 3, "tag": "abc"} and fake_kfp[1][1]["run_name"] == "r1"


# The Dockerfile (docker build cannot run here)
def dockerfile():
    """[(KEYWORD, rest)] of kubeflow/Dockerfile, and [(base image, stage name)] of its stages
    with the global ARG defaults substituted."""
    text = DOCKERFILE.read_text().replace("\\\n", "")  # Docker's line continuation
    instructions = [(line.split(" ", 1)[0].upper(), line.split(" ", 1)[1].strip())
                    for line in map(str.strip, text.splitlines()) if line and not line.startswith("#")]
    args, stages = {}, []
    for keyword, rest in instructions:
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).split()
            stages.append((parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
    return instructions, stages


def _all(keyword):
    return [rest for k, rest in dockerfile()[0] if k == keyword]


# glibc of Debian / Ubuntu releases, by codename; TFX 1.21's wheels need 2.39.
GLIBC = {"trixie": (2, 41), "bookworm": (2, 36), "bullseye": (2, 31), "noble": (2, 39), "jammy": (2, 35)}


def test_docker_bases_have_glibc_2_39_and_match_the_lock():
    stages = dockerfile()[1]
    runtime = [image for image, name in stages if name != "beam"]  # "beam" only lends files
    assert runtime, stages
    for image in runtime:
        codenames = [c for c in GLIBC if c in image]
        assert codenames, f"{image}: cannot tell its distribution (name a codename, e.g. -trixie)"
        assert GLIBC[codenames[0]] >= (2, 39), image
    assert runtime[-1].startswith("python:3.13"), "the lock was resolved for Python 3.13"
    beam = re.search(r"^apache-beam==(\S+)$", (REPO / "requirements" / "lock.txt").read_text(), re.M).group(1)
    assert f"apache/beam_python3.13_sdk:{beam}" in [image for image, _ in stages]


def test_docker_copies_exist_and_are_not_ignored():
    ignored = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    local = [c.split() for c in _all("COPY") if not c.startswith("--from=")]
    assert local
    for *sources, _dest in local:
        for src in sources:
            assert (REPO / src).exists(), src
            assert not any(fnmatch.fnmatch(src.rstrip("/"), pattern) for pattern in ignored), src
    # ImportSchemaGen's schema_file in the compiled pipeline is where the image has it: a link
    # to the installed package's copy (the schema is package data, not a separate COPY).
    schema = pathlib.PurePosixPath(kr.CONTAINER_SCHEMA_FILE)
    links = [r for r in _all("RUN") if "ln -s" in r and "schemas.SCHEMA_FILE" in r]
    assert len(links) == 1 and links[0].rstrip().endswith(str(schema.parent)), links
    assert (REPO / "schemas" / schema.name).is_file()


def test_docker_installs_the_locked_project_and_sets_legacy_keras():
    instructions = dockerfile()[0]
    assert any("pip install -c requirements/lock.txt" in r and '".[kubeflow]"' in r for r in _all("RUN"))
    final_stage = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM"):]
    envs = " ".join(rest for keyword, rest in final_stage if keyword == "ENV")
    assert re.search(r"(^|\s)TF_USE_LEGACY_KERAS=1(\s|$)", envs)


def test_docker_smoke_check_imports_work_here(capsys):
    code = next(re.search(r'python -c "(.*?)"', r).group(1) for r in _all("RUN") if "smoke check ok" in r)
    for module in ("components.image_example_gen", "components.retrieval.tfma_metric",
                   "pipeline.preprocessing", "pipeline.trainer"):
        assert f"import {module}" in code, module
    exec(compile(code, "Dockerfile smoke check", "exec"), {})
    assert "smoke check ok" in capsys.readouterr().out


# Multi-worker training on Vertex AI (--trainer-workers)
VERTEX = ["--vertex-project", "proj", "--vertex-region", "europe-west4"]


def _trainer_custom_config(spec):
    return json.loads(param(spec, "Trainer", "custom_config"))


def test_multi_worker_trainer_is_a_vertex_custom_job_with_worker_pools(tmp_path):
    result, out = _compile_cli(tmp_path, "--trainer-workers", "3", *VERTEX, "--machine-type", "a2-highgpu-1g",
                               "--gpus", "1", "--gpu-type", "NVIDIA_TESLA_A100", name="p.json")
    assert result.exit_code == 0, result.output
    _, spec = read_json_job(out)
    args = list(task_executor(spec, "Trainer").container.args)
    assert args[args.index("--executor_class_path") + 1] == \
        "tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor"
    custom = _trainer_custom_config(spec)
    assert custom["ai_platform_enable_vertex"] is True
    assert custom["ai_platform_vertex_region"] == "europe-west4"
    training_args = custom["ai_platform_training_args"]
    assert training_args["project"] == "proj"
    pools = training_args["job_spec"]["worker_pool_specs"]
    machine = {"machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_A100", "accelerator_count": 1}
    assert [p["replica_count"] for p in pools] == [1, 2]  # the primary (chief), then the workers
    assert all(p["machine_spec"] == machine and p["container_spec"] == {"image_uri": IMAGE} for p in pools)
    assert training_args["job_spec"]["scheduling"] == {"restart_job_on_worker_restart": True}
    # What run_fn reads is still there, and the backup is under the shared pipeline root.
    assert custom["backup_root"] == f"{ROOT}/_trainer_backup" and "config" in custom
    assert param(spec, "Trainer", "run_fn") == "pipeline.trainer.run_fn"
    # The Trainer step only launches the job: it asks for no accelerator itself.
    assert not task_executor(spec, "Trainer").container.resources.HasField("accelerator")


GOLDEN = REPO / "tests" / "kubeflow" / "testdata" / "single_worker_job.json"
UPDATE_GOLDEN = "DOLG_TFX_UPDATE_GOLDEN"
REGENERATE = (f"{UPDATE_GOLDEN}=1 tools/devenv.sh run pytest tests/kubeflow/test_kubeflow_compile.py "
              "-k single_worker_compile")


def _normalised(value, tmp):
    """The compiled PipelineJob as a golden can hold it: what changes per run or per machine
    replaced by placeholders, and JSON-encoded parameters (custom_config, eval_config, ...)
    decoded in place so a diff points at the changed key instead of one long escaped string.

    Replaced: absolute temporary and checkout paths, image digests, ISO timestamps, and TFX's
    own version strings (sdkVersion "tfx-1.21.0", the tfx_version / tfx_py_version labels).
    The versions are pinned by requirements/lock.txt, but a lock bump that leaves our wiring
    alone should not need a new golden: they are checked against the installed TFX and Python
    instead (test below), and everything else TFX emits stays in the golden, so a bump that
    changes what TFX compiles does show up here.
    """
    if isinstance(value, dict):
        return {k: _normalised(v, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalised(v, tmp) for v in value]
    if not isinstance(value, str):
        return value
    if value[:1] in "{[":
        try:
            return {"<json>": _normalised(json.loads(value), tmp)}
        except ValueError:
            pass
    for path, name in ((str(tmp), "<tmp>"), (str(REPO), "<repo>")):
        value = value.replace(path, name)
    value = re.sub(r"@sha256:[0-9a-f]{64}", "@sha256:<digest>", value)
    value = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?", "<timestamp>", value)
    return value


def _normalised_job(path, tmp):
    job = json.loads(pathlib.Path(path).read_text())
    import tfx

    labels = job.get("labels", {})
    assert labels.get("tfx_version") == tfx.__version__.replace(".", "-"), labels
    assert labels.get("tfx_py_version") == f"{sys.version_info[0]}-{sys.version_info[1]}", labels
    assert job["pipelineSpec"].get("sdkVersion") == f"tfx-{tfx.__version__}", job["pipelineSpec"].get("sdkVersion")
    labels["tfx_version"] = labels["tfx_py_version"] = "<version>"
    job["pipelineSpec"]["sdkVersion"] = "tfx-<version>"
    return _normalised(job, tmp)


def test_single_worker_compile_is_unchanged_by_the_multi_worker_option(tmp_path):
    """The single-worker Vertex job, from the CLI with and without ``--trainer-workers 1``, is
    the checked-in golden tests/kubeflow/testdata/single_worker_job.json (normalised, see
    _normalised): every task, its wiring, image, command, arguments, parameters and the
    Trainer's resources.

    When the compiled pipeline changes on purpose, regenerate the golden and review its diff:
      DOLG_TFX_UPDATE_GOLDEN=1 tools/devenv.sh run pytest tests/kubeflow/test_kubeflow_compile.py -k single_worker_compile

    Mutations tried, each failing it with a diff of the one changed key: Transform's
    ``SplitsConfig(analyze=["train"])`` -> ``["train", "eval"]`` in pipeline/pipeline.py (held-out
    labels leaking into the vocabulary), and ``"json": "NVIDIA_TESLA_T4"`` -> ``"NVIDIA_L4"`` in
    DEFAULT_GPU_TYPE (pipeline/kubeflow_runner.py).
    """
    default, out_default = _compile_cli(tmp_path, name="a.json")
    explicit, out_explicit = _compile_cli(tmp_path, "--trainer-workers", "1", *VERTEX, name="b.json")
    assert default.exit_code == 0 and explicit.exit_code == 0, default.output + explicit.output
    got = _normalised_job(out_default, tmp_path)
    assert _normalised_job(out_explicit, tmp_path) == got, "--trainer-workers 1 changed the compiled job"
    text = json.dumps(got, indent=1, sort_keys=True) + "\n"
    for leaked in (str(tmp_path), str(REPO), "/tmp/"):
        assert leaked not in text, f"{leaked!r} in the compiled job"
    if os.environ.get(UPDATE_GOLDEN) == "1":
        GOLDEN.write_text(text)
    assert GOLDEN.is_file(), f"no golden {GOLDEN}: create it with\n  {REGENERATE}"
    want = GOLDEN.read_text()
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                            "golden " + GOLDEN.name, "compiled now", n=2))
        pytest.fail(f"the compiled single-worker job differs from {GOLDEN.relative_to(REPO)}:\n"
                    f"{diff[:6000]}\nIf the change is intended, regenerate the golden and review its diff:\n"
                    f"  {REGENERATE}", pytrace=False)
    # The golden's own claims, so a regenerated golden cannot quietly lose them.
    _, a = read_json_job(out_default)
    args = list(task_executor(a, "Trainer").container.args)
    assert args[args.index("--executor_class_path") + 1] == "tfx.components.trainer.executor.GenericExecutor"
    assert sorted(_trainer_custom_config(a)) == ["backup_root", "config"]
    assert task_executor(a, "Trainer").container.resources.accelerator.count == 1


def test_multi_worker_refuses_yaml_and_missing_vertex_fields(tmp_path):
    result, out = _compile_cli(tmp_path, "--trainer-workers", "2", *VERTEX, name="p.yaml")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ".json" in result.output and "one pod" in result.output and not out.exists()
    result, out = _compile_cli(tmp_path, "--trainer-workers", "2", "--vertex-region", "r", name="p.json")
    assert result.exit_code == 1 and "vertex_project is required" in result.output and not out.exists()
    result, out = _compile_cli(tmp_path, "--trainer-workers", "2", *VERTEX, "--gpu-type", "nvidia.com/gpu",
                               name="p.json")
    assert result.exit_code == 1 and "gpu_type" in result.output and not out.exists()
