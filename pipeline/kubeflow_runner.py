"""Compile the DOLG-TFX pipeline for Kubeflow Pipelines 2 / Vertex AI Pipelines, and submit it.

``compile_pipeline`` builds the same ``create_pipeline()`` as local runs (without an MLMD path:
the orchestrator owns ML Metadata) and compiles it with TFX's KubeflowV2DagRunner:

* ``*.yaml`` / ``*.yml``: the bare PipelineSpec, what ``kfp.Client`` uploads to a Kubeflow
  Pipelines 2 cluster. Compiled with pipeline-spec schema 2.1 because the KFP 2 backend's
  driver only resolves 2.1 constants (``runtimeValue.constant``); the 2.0 form
  (``constantValue``) fails there with "param runtime value spec ... not implemented".
* ``*.json``: a Vertex AI PipelineJob (``pipelineSpec`` + ``runtimeConfig.gcsOutputDirectory``),
  schema 2.0, TFX's default for Vertex.

Both get ``pipelineSpec.defaultPipelineRoot = pipeline_root``: the bare YAML carries no
runtimeConfig, and without it a KFP run would put artifacts under the cluster's default root.

Every step runs ``python -m tfx...kubeflow_v2_run_executor`` in ``image`` (kubeflow/Dockerfile),
so the project's modules are imported from the image: Transform and Trainer are referenced by
import path (``pipeline.preprocessing.preprocessing_fn``, ``pipeline.trainer.run_fn``), never by
``module_file``. That matters: TFX packs a ``module_file`` into a wheel under
``<pipeline_root>/_wheels`` AT COMPILE TIME (``UserModuleFilePipDependency.resolve``), i.e. a
compile for ``gs://`` would need GCS credentials. With import paths nothing is packed and
compiling is offline; ``compile_pipeline`` refuses a component with a ``module_file`` to keep it so.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Dict, Optional, Sequence

from components.image_example_gen.storage import has_scheme

# Where kubeflow/Dockerfile puts schemas/ (tests check the two agree). The compiling machine's
# checkout path, which create_pipeline() bakes into ImportSchemaGen, does not exist in the pod.
CONTAINER_SCHEMA_FILE = "/opt/dolg-tfx/schemas/schema.pbtxt"
# A Kubernetes extended resource name (KFP) vs a Vertex accelerator enum name.
_K8S_RESOURCE = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?")
_VERTEX_ACCELERATOR = re.compile(r"[A-Z][A-Z0-9_]*")
DEFAULT_GPU_TYPE = {"yaml": "nvidia.com/gpu", "json": "NVIDIA_TESLA_T4"}
# A Vertex AI machine type for each Trainer replica of a multi-worker run.
DEFAULT_MACHINE_TYPE = "n1-standard-8"
_CPU = re.compile(r"(\d+(\.\d+)?)(m?)")
_MEMORY = re.compile(r"(\d+(\.\d+)?)([KMGTPE]i?)?")
_MEMORY_UNIT = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}

log = logging.getLogger(__name__)


def output_format(output_file: str) -> str:
    """'yaml' or 'json' from the file name, as KubeflowV2DagRunner decides (anything that is not
    .yaml/.yml becomes JSON there; here an unknown extension is an error, not a silent JSON)."""
    lower = output_file.lower()
    if lower.endswith((".yaml", ".yml")):
        return "yaml"
    if lower.endswith(".json"):
        return "json"
    raise ValueError(f"output file {output_file!r}: use .yaml (Kubeflow Pipelines PipelineSpec) "
                     "or .json (Vertex AI PipelineJob)")


def default_gallery_index_dir(serving_model_dir: str) -> str:
    """Beside the serving folder: gs://B/serving/dolg -> gs://B/serving/dolg-gallery-index, whose
    <version> folders pair with the serving folder's (a sibling of the model's own name, so two
    models served from one parent folder never share one)."""
    return f"{serving_model_dir.rstrip('/')}-gallery-index"


def validate_locations(pipeline_root: str, data: str, serving_model_dir: str) -> None:
    """Rejects locations that cannot work when every step runs in its own pod.

    pipeline_root: an object-store URI (gs://...): TFX writes artifacts with tf.io.gfile and
      Vertex requires gs://. data: a URI (ImageExampleGen lists and reads it through TFX's
      fileio, so gs:// and any other TensorFlow file system work) or an absolute path mounted
      in the pod (e.g. /gcs/<bucket>/... on Vertex). serving_model_dir: a URI or an absolute
      (mounted) path; the Pusher writes with tf.io.gfile.
    """
    if not has_scheme(pipeline_root):
        raise ValueError(f"pipeline_root {pipeline_root!r} must be an object-store URI such as "
                         "gs://BUCKET/dolg-tfx: each step runs in its own pod, and a local path is "
                         "not shared between them")
    if not (has_scheme(data) or os.path.isabs(data)):
        raise ValueError(f"data {data!r} must be a URI (gs://...) or an absolute path as seen "
                         "inside the container")
    if not (has_scheme(serving_model_dir) or os.path.isabs(serving_model_dir)):
        raise ValueError(f"serving_model_dir {serving_model_dir!r} must be a URI (gs://...) or "
                         "an absolute path mounted in the Pusher's pod")


def _cpu_float(cpu: str) -> float:
    match = _CPU.fullmatch(str(cpu))
    if not match:
        raise ValueError(f"cpu {cpu!r}: use Kubernetes notation, e.g. '8' or '500m'")
    value = float(match.group(1))
    return value / 1000 if match.group(3) else value


def _memory_gb(memory: str) -> float:
    match = _MEMORY.fullmatch(str(memory))
    if not match:
        raise ValueError(f"memory {memory!r}: use Kubernetes notation, e.g. '30G' or '32Gi'")
    return float(match.group(1)) * _MEMORY_UNIT[match.group(3) or ""] / 1e9


def trainer_resource_spec(fmt: str, gpus: int = 1, gpu_type: Optional[str] = None,
                          cpu: Optional[str] = "8", memory: Optional[str] = "30G"):
    """The Trainer's ResourceSpec (PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec).

    Both field generations are set, as kfp's own compiler does: the string ``resource_*``
    fields (read first by current KFP drivers and Vertex) and the deprecated numeric ones
    (cpu_limit, memory_limit in GB, accelerator type/count) for older backends.

    Args:
      fmt: 'yaml' (KFP: gpu_type is a Kubernetes resource such as nvidia.com/gpu) or 'json'
        (Vertex: an accelerator such as NVIDIA_TESLA_T4, NVIDIA_L4).
      gpus: accelerators to request; 0 requests none.
      gpu_type: None picks DEFAULT_GPU_TYPE[fmt].
      cpu, memory: limits in Kubernetes notation, or None to leave unset.
    """
    from kfp.pipeline_spec import pipeline_spec_pb2

    resource_spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
    spec = resource_spec()
    if cpu is not None:
        spec.cpu_limit = _cpu_float(cpu)
        spec.resource_cpu_limit = str(cpu)
    if memory is not None:
        spec.memory_limit = _memory_gb(memory)
        spec.resource_memory_limit = str(memory)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ValueError(f"gpus must be an integer >= 0, got {gpus!r}")
    if gpus:
        gpu_type = gpu_type or DEFAULT_GPU_TYPE[fmt]
        # A mismatch would compile fine and fail only when the cluster schedules the Trainer.
        if fmt == "json" and not _VERTEX_ACCELERATOR.fullmatch(gpu_type):
            raise ValueError(f"gpu_type {gpu_type!r}: a Vertex AI PipelineJob (.json) needs a Vertex "
                             "accelerator type such as NVIDIA_TESLA_T4 or NVIDIA_L4")
        if fmt == "yaml" and not _K8S_RESOURCE.fullmatch(gpu_type):
            raise ValueError(f"gpu_type {gpu_type!r}: Kubeflow Pipelines (.yaml) needs a Kubernetes "
                             "resource name such as nvidia.com/gpu")
        spec.accelerator.type = spec.accelerator.resource_type = gpu_type
        spec.accelerator.count = gpus
        spec.accelerator.resource_count = str(gpus)
    return spec


def vertex_training_config(image: str, workers: int, project: str, region: str,
                           machine_type: str = DEFAULT_MACHINE_TYPE, gpus: int = 1,
                           gpu_type: Optional[str] = None) -> dict:
    """The custom_config keys of ``tfx.extensions.google_cloud_ai_platform.Trainer`` for a
    Vertex AI CustomJob of ``workers`` replicas: worker pool 0 is the primary (the chief in
    TF_CONFIG, which Vertex sets), pool 1 the other ``workers - 1``, all on ``machine_type``
    with ``gpus`` accelerators of ``gpu_type`` each, all running ``image`` (whose run_fn then
    trains under MultiWorkerMirroredStrategy). Every step is a collective of all replicas, so
    the job restarts as a whole when one replica restarts, and resumes from the backup.
    """
    from tfx import v1 as tfx

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 2:
        raise ValueError(f"trainer_workers must be an integer >= 2 for a multi-worker job, got {workers!r}")
    for name, value in (("vertex_project", project), ("vertex_region", region), ("machine_type", machine_type)):
        if not value or not isinstance(value, str):
            raise ValueError(f"{name} is required for a multi-worker Trainer on Vertex AI, got {value!r}")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ValueError(f"gpus must be an integer >= 0, got {gpus!r}")
    machine = {"machine_type": machine_type}
    if gpus:
        gpu_type = gpu_type or DEFAULT_GPU_TYPE["json"]
        if not _VERTEX_ACCELERATOR.fullmatch(gpu_type):
            raise ValueError(f"gpu_type {gpu_type!r}: Vertex AI needs an accelerator type such as "
                             "NVIDIA_TESLA_T4 or NVIDIA_L4")
        machine.update(accelerator_type=gpu_type, accelerator_count=gpus)

    def pool(replicas):
        return {"machine_spec": dict(machine), "replica_count": replicas,
                "container_spec": {"image_uri": image}}

    ext = tfx.extensions.google_cloud_ai_platform
    return {
        ext.TRAINING_ARGS_KEY: {
            "project": project,
            "job_spec": {"worker_pool_specs": [pool(1), pool(workers - 1)],
                         "scheduling": {"restart_job_on_worker_restart": True}},
        },
        ext.ENABLE_VERTEX_KEY: True,
        ext.VERTEX_REGION_KEY: region,
    }


def _with_worker_image(beam_args: Sequence[str], image: str) -> tuple:
    """On Dataflow the workers must import our preprocessing and metric modules: unless the
    user named one, the pipeline image (which carries the Beam SDK harness) is the worker image."""
    from pipeline.pipeline import beam_runner

    runner = (beam_runner(beam_args) or "").lower()
    named = any(a.split("=", 1)[0] in ("--sdk_container_image", "--worker_harness_container_image")
                for a in beam_args)
    if runner in ("dataflowrunner", "dataflow") and not named:
        log.info("Dataflow workers will run %s (--sdk_container_image)", image)
        return tuple(beam_args) + (f"--sdk_container_image={image}",)
    return tuple(beam_args)


def _refuse_module_files(tfx_pipeline) -> None:
    for component in tfx_pipeline.components:
        if getattr(component, "exec_properties", {}).get("module_file"):
            raise ValueError(
                f"{component.id} uses module_file: TFX would package it into a wheel under "
                "<pipeline_root>/_wheels at compile time. Reference the function by import path "
                "(e.g. run_fn='pipeline.trainer.run_fn') and ship the module in the image.")


def _set_default_pipeline_root(output_file: str, fmt: str, pipeline_root: str) -> None:
    """Adds pipelineSpec.defaultPipelineRoot to the runner's file, keeping its format."""
    import json

    import yaml
    from tfx.dsl.io import fileio

    with fileio.open(output_file) as f:
        text = f.read()
    if fmt == "json":
        job = json.loads(text)
        job["pipelineSpec"]["defaultPipelineRoot"] = pipeline_root
        text = json.dumps(job, sort_keys=True)
    else:
        # Keep the runner's '# PIPELINE DEFINITION' comment header (KFP's UI shows it).
        lines = text.splitlines(keepends=True)
        n_header = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
        header = "".join(lines[:n_header])
        docs = list(yaml.safe_load_all(text))
        docs[0]["defaultPipelineRoot"] = pipeline_root
        text = header + yaml.safe_dump_all(docs, sort_keys=True)
    with fileio.open(output_file, "w") as f:
        f.write(text)


def build_pipeline(config, image: str, pipeline_root: str, data: str, serving_model_dir: str,
                   fmt: str, gpus: int = 1, gpu_type: Optional[str] = None, cpu: Optional[str] = "8",
                   memory: Optional[str] = "30G", beam_args: Sequence[str] = (),
                   schema_file: str = CONTAINER_SCHEMA_FILE, enable_cache: bool = True,
                   trainer_workers: int = 1, vertex_project: Optional[str] = None,
                   vertex_region: Optional[str] = None, machine_type: str = DEFAULT_MACHINE_TYPE,
                   gallery_index_dir: Optional[str] = None):
    """The tfx.dsl.Pipeline as it will run on the cluster (see compile_pipeline for the args)."""
    from tfx import v1 as tfx

    from pipeline.config import PREPROCESSING_FN, RUN_FN
    from pipeline.pipeline import create_pipeline

    config.validate()  # again: a config may have been changed after it was built
    validate_locations(pipeline_root, data, serving_model_dir)
    if config.gallery:
        gallery_index_dir = gallery_index_dir or default_gallery_index_dir(serving_model_dir)
        for name, where in (("gallery", config.gallery), ("gallery_index_dir", gallery_index_dir)):
            if not (has_scheme(where) or os.path.isabs(where)):
                raise ValueError(f"{name} {where!r} must be a URI (gs://...) or an absolute path "
                                 "mounted in the GalleryIndexer's pod")
    if not image:
        raise ValueError("image is required: the container image every step runs in")
    config = config.replace(beam_args=_with_worker_image(tuple(config.beam_args) + tuple(beam_args), image))
    trainer = {}
    if trainer_workers != 1:
        if fmt != "json":
            raise ValueError(
                f"trainer_workers={trainer_workers} needs a .json output (a Vertex AI PipelineJob): on "
                "Kubeflow Pipelines (.yaml) the Trainer is one pod with its GPUs (see the README, "
                "'Scaling out')")
        # The Trainer step only launches the CustomJob and waits: the replicas get the machines.
        trainer = {"trainer_class": tfx.extensions.google_cloud_ai_platform.Trainer,
                   "trainer_custom_config": vertex_training_config(
                       image, trainer_workers, vertex_project, vertex_region, machine_type, gpus, gpu_type)}
    else:
        resources = trainer_resource_spec(fmt, gpus, gpu_type, cpu, memory)
        trainer = {"trainer_resources": lambda component: component.with_platform_config(resources)}
    tfx_pipeline = create_pipeline(
        config, data=data, pipeline_root=pipeline_root, serving_model_dir=serving_model_dir,
        schema_file=schema_file, preprocessing_fn=PREPROCESSING_FN, run_fn=RUN_FN,
        metadata_path=None, enable_cache=enable_cache, gallery_index_dir=gallery_index_dir,
        # No gallery fingerprint: listing the gallery at compile time would need its storage.
        # The indexer re-runs with every push (its inputs change); see the README.
        **trainer)
    _refuse_module_files(tfx_pipeline)
    return tfx_pipeline


def compile_pipeline(config, image: str, pipeline_root: str, output_file: str, data: str,
                     serving_model_dir: str, gpus: int = 1, gpu_type: Optional[str] = None,
                     beam_args: Sequence[str] = (), cpu: Optional[str] = "8",
                     memory: Optional[str] = "30G", schema_file: str = CONTAINER_SCHEMA_FILE,
                     enable_cache: bool = True, trainer_workers: int = 1,
                     vertex_project: Optional[str] = None, vertex_region: Optional[str] = None,
                     machine_type: str = DEFAULT_MACHINE_TYPE, gallery_index_dir: Optional[str] = None) -> str:
    """Compiles the pipeline into ``output_file`` and returns its path.

    Args:
      config: a PipelineConfig; its pipeline_name must match [a-z0-9][a-z0-9-]{0,127}.
      image: the container image of every step (built from kubeflow/Dockerfile).
      pipeline_root: object-store URI for the artifacts, e.g. gs://BUCKET/dolg-tfx.
      output_file: ``.yaml`` (KFP PipelineSpec) or ``.json`` (Vertex PipelineJob).
      data: the images as mounted in the pod (folder tree or CSV manifest).
      serving_model_dir: the Pusher's destination (gs://... or a mounted path).
      gpus: GPUs for the Trainer (0: none). Only the Trainer gets resources.
      gpu_type: None: nvidia.com/gpu for .yaml, NVIDIA_TESLA_T4 for .json.
      beam_args: added to config.beam_args, e.g. ("--runner=DataflowRunner", "--project=P",
        "--region=R", "--temp_location=gs://B/tmp").
      cpu, memory: the Trainer's limits (Kubernetes notation); None leaves them unset.
      schema_file: the curated schema as the ImportSchemaGen pod sees it.
      enable_cache: let the orchestrator reuse a step whose inputs are unchanged.
      trainer_workers: 1: the Trainer is one pod (gpus, gpu_type, cpu, memory). N > 1 (.json
        only): it runs as a Vertex AI CustomJob of N replicas of machine_type, each with gpus x
        gpu_type, in vertex_project / vertex_region (see vertex_training_config).
      gallery_index_dir: with ``config.gallery`` (a URI or mounted path): where each pushed
        model's index goes; default ``default_gallery_index_dir(serving_model_dir)``.
    """
    from tfx import v1 as tfx

    fmt = output_format(output_file)
    tfx_pipeline = build_pipeline(config, image, pipeline_root, data, serving_model_dir, fmt, gpus=gpus,
                                  gpu_type=gpu_type, cpu=cpu, memory=memory, beam_args=beam_args,
                                  schema_file=schema_file, enable_cache=enable_cache,
                                  trainer_workers=trainer_workers, vertex_project=vertex_project,
                                  vertex_region=vertex_region, machine_type=machine_type,
                                  gallery_index_dir=gallery_index_dir)
    runner_config = tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
        default_image=image, use_pipeline_spec_2_1=(fmt == "yaml"))
    output_dir = os.path.dirname(output_file) or "."
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=runner_config, output_dir=output_dir, output_filename=os.path.basename(output_file))
    runner.run(tfx_pipeline)
    _set_default_pipeline_root(output_file, fmt, pipeline_root)
    return output_file


def submit(host: str, package_file: str, run_name: Optional[str] = None, experiment: Optional[str] = None,
           params: Optional[Dict[str, object]] = None) -> str:
    """Starts a run of a compiled ``.yaml`` on a Kubeflow Pipelines 2 cluster; returns its run id.

    A ``.json`` is a Vertex AI PipelineJob, which KFP cannot read: submit it with
    google-cloud-aiplatform (see kubeflow/README.md).
    """
    import kfp

    if not package_file.lower().endswith((".yaml", ".yml")):
        raise ValueError(f"{package_file!r}: Kubeflow Pipelines takes the .yaml PipelineSpec; a .json "
                         "is a Vertex AI PipelineJob (submit it with google-cloud-aiplatform)")
    if not os.path.isfile(package_file):
        raise FileNotFoundError(f"no pipeline package at {package_file!r}")
    client = kfp.Client(host=host)
    result = client.create_run_from_pipeline_package(
        package_file, arguments=dict(params or {}), run_name=run_name, experiment_name=experiment)
    return result.run_id
