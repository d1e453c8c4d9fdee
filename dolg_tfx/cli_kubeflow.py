"""`dolg-tfx kubeflow compile|submit`: the pipeline for Kubeflow Pipelines 2 or Vertex AI Pipelines.

The heavy imports (TFX, kfp) happen inside the commands, so `dolg-tfx --help` stays fast.
"""
import json

import click


@click.group()
def kubeflow():
    """Compile the pipeline for Kubeflow Pipelines / Vertex AI, and submit runs."""


@kubeflow.command("compile")
@click.option("--image", required=True, metavar="IMAGE",
              help="Container image of every step, built from kubeflow/Dockerfile.")
@click.option("--pipeline-root", required=True, metavar="URI",
              help="Where the steps write artifacts: an object-store URI, e.g. gs://BUCKET/dolg-tfx.")
@click.option("--data", required=True, metavar="PATH",
              help="The images (folder tree or GLDv2 CSV): an object-store URI such as "
                   "gs://BUCKET/images, or an absolute path mounted in the pods.")
@click.option("--serving-dir", required=True, metavar="URI",
              help="The Pusher's destination, e.g. gs://BUCKET/serving/dolg.")
@click.option("--gallery", default=None, metavar="PATH",
              help="A gallery to index with every pushed model (folder or CSV; gs://... or a mounted "
                   "absolute path); default: the config's gallery, if any.")
@click.option("--gallery-index-dir", default=None, metavar="URI",
              help="Where the index of each pushed version goes (default: SERVING_DIR-gallery-index).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help=".yaml: PipelineSpec for Kubeflow Pipelines; .json: Vertex AI PipelineJob.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON file with PipelineConfig fields (\"model\" holds DOLGConfig fields).")
@click.option("--preset", default="paper", show_default=True,
              help="paper, cpu-demo or tiny (paper: the GPU recipe a cluster is for).")
@click.option("--pipeline-name", default=None,
              help="Overrides the config's pipeline_name; must match [a-z0-9][a-z0-9-]{0,127}.")
@click.option("--gpus", default=1, show_default=True, type=click.IntRange(min=0),
              help="GPUs requested for the Trainer (0: none).")
@click.option("--gpu-type", default=None,
              help="Accelerator: a Kubernetes resource for .yaml (default nvidia.com/gpu) or a Vertex "
                   "type for .json (default NVIDIA_TESLA_T4).")
@click.option("--cpu", default="8", show_default=True, help="Trainer CPU limit (Kubernetes notation).")
@click.option("--memory", default="30G", show_default=True, help="Trainer memory limit (e.g. 30G, 32Gi).")
@click.option("--beam-arg", "beam_args", multiple=True, metavar="ARG",
              help="A Beam pipeline argument, repeatable, e.g. --beam-arg=--runner=DataflowRunner "
                   "--beam-arg=--project=P --beam-arg=--region=R --beam-arg=--temp_location=gs://B/tmp.")
@click.option("--no-cache", is_flag=True, help="Do not let the orchestrator reuse earlier step outputs.")
@click.option("--trainer-workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Trainer replicas. N > 1 (.json only): a Vertex AI CustomJob of one primary and N-1 "
                   "workers, each a --machine-type with --gpus x --gpu-type, training together "
                   "(MultiWorkerMirroredStrategy).")
@click.option("--vertex-project", default=None, help="With --trainer-workers > 1: the CustomJob's project.")
@click.option("--vertex-region", default=None, help="With --trainer-workers > 1: its region, e.g. europe-west4.")
@click.option("--machine-type", default="n1-standard-8", show_default=True,
              help="With --trainer-workers > 1: the Vertex machine type of every replica.")
def compile_cmd(image, pipeline_root, data, serving_dir, gallery, gallery_index_dir, output, config_file, preset, pipeline_name, gpus,
                gpu_type, cpu, memory, beam_args, no_cache, trainer_workers, vertex_project, vertex_region,
                machine_type):
    """Compile the pipeline into a file for Kubeflow Pipelines (.yaml) or Vertex AI (.json).

    Compiling is offline: nothing is written to the pipeline root.
    """
    from pipeline import kubeflow_runner
    from pipeline.config import load_config

    overrides = {k: v for k, v in (("pipeline_name", pipeline_name), ("gallery", gallery)) if v}
    try:
        config = load_config(preset, config_file, **overrides)
        path = kubeflow_runner.compile_pipeline(
            config, image=image, pipeline_root=pipeline_root, output_file=output, data=data,
            serving_model_dir=serving_dir, gpus=gpus, gpu_type=gpu_type, beam_args=beam_args, cpu=cpu,
            memory=memory, enable_cache=not no_cache, trainer_workers=trainer_workers,
            vertex_project=vertex_project, vertex_region=vertex_region, machine_type=machine_type,
            gallery_index_dir=gallery_index_dir)
    except ValueError as err:  # ConfigError is a ValueError too
        raise click.ClickException(str(err))
    kind = ("Vertex AI PipelineJob" if kubeflow_runner.output_format(path) == "json"
            else "Kubeflow Pipelines PipelineSpec")
    click.echo(f"Wrote {kind} '{config.pipeline_name}' to {path}")


@kubeflow.command()
@click.argument("package", type=click.Path(exists=True, dir_okay=False))
@click.option("--host", required=True, metavar="URL",
              help="The Kubeflow Pipelines API, e.g. http://localhost:8080 after a port-forward.")
@click.option("--run-name", default=None, help="Name of the run (default: file name and time).")
@click.option("--experiment", default=None, help="Experiment to file the run under (default: Default).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A pipeline parameter, repeatable; VALUE is parsed as JSON when it can be.")
def submit(package, host, run_name, experiment, params):
    """Start a run of a compiled PACKAGE (.yaml) on a Kubeflow Pipelines cluster."""
    from pipeline import kubeflow_runner

    values = {}
    for item in params:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--param")
        try:
            values[name] = json.loads(value)
        except json.JSONDecodeError:
            values[name] = value
    try:
        run_id = kubeflow_runner.submit(host, package, run_name=run_name, experiment=experiment,
                                        params=values)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err))
    click.echo(f"Started run {run_id} on {host}")
