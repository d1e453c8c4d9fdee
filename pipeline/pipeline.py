"""create_pipeline(): wiring only. Every parameter comes from the PipelineConfig, every location
and module path from the runner that calls it (local_runner, kubeflow_runner).

ImageExampleGen -> StatisticsGen + ImportSchemaGen -> ExampleValidator -> AnomalyGate
  -> Transform (analysis only: decoded images are never materialised) -> Trainer
  -> Evaluator (retrieval mAP on unseen labels, against the latest blessed model) -> Pusher
  [-> GalleryIndexer (config.gallery only): the pushed model's gallery index, pushed beside it]
"""
import json
import os
from typing import List, Optional

# TFX's own modules, not the public ``tfx.v1``: importing that one loads every extension too
# (google.cloud.aiplatform's clients among them), about 3 s of every process's start-up.
from tfx.components import Evaluator, ExampleValidator, Pusher, StatisticsGen, Trainer, Transform
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.orchestration import metadata
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import pusher_pb2, trainer_pb2, transform_pb2
from tfx.types import standard_artifacts
from tfx.types.channel import Channel

from components.image_example_gen import ImageExampleGen
from components.retrieval.tfma_metric import eval_config as retrieval_eval_config
from pipeline.anomaly_gate import AnomalyGate
from pipeline.config import PipelineConfig
from pipeline.preprocessing import transform_config


def beam_runner(beam_args) -> Optional[str]:
    """The --runner in `beam_args` (the last one, as Beam's argparse keeps), or None."""
    runner = None
    for i, arg in enumerate(beam_args):
        if arg.startswith("--runner="):
            runner = arg.split("=", 1)[1]
        elif arg == "--runner" and i + 1 < len(beam_args):
            runner = beam_args[i + 1]
    return runner


def beam_pipeline_args(config: PipelineConfig) -> List[str]:
    """The user's Beam arguments, led by the local runner (``components.beam_runner``) and the
    DirectRunner's mode flags when no other runner (Dataflow, Flink, ...) was asked for."""
    from components.beam_runner import RUNNER

    user = list(config.beam_args)
    runner = beam_runner(user)
    if runner is not None and runner.lower() not in ("directrunner", "direct"):
        return user
    # No runner asked for: the DirectRunner's engine without its Prism download (beam_runner).
    args = ([f"--runner={RUNNER}"] if runner is None else []) + [f"--direct_running_mode={config.beam_mode}"]
    if config.beam_mode == "multi_processing":
        args.append(f"--direct_num_workers={config.beam_workers}")
    return args + user


def evaluation_config(config: PipelineConfig):
    eval_config = retrieval_eval_config(min_map=config.min_map, max_map_drop=config.max_map_drop,
                                        qe=config.eval_qe, qe_alpha=config.eval_qe_alpha,
                                        bless_on_qe=config.bless_on_qe)
    # A generic SavedModel: TFMA then calls the signature and never tries a Keras load.
    for spec in eval_config.model_specs:
        spec.model_type = "tf_generic"
    return eval_config


def create_pipeline(config: PipelineConfig, *, data: str, pipeline_root: str, serving_model_dir: str,
                    schema_file: str, preprocessing_fn: str, run_fn: str,
                    metadata_path: Optional[str] = None, enable_cache: bool = True,
                    trainer_resources=None, trainer_class=None,
                    trainer_custom_config: Optional[dict] = None,
                    gallery_index_dir: Optional[str] = None,
                    gallery_fingerprint: Optional[str] = None) -> Pipeline:
    """The DOLG-TFX pipeline.

    Args:
      config: the run's parameters.
      data: a folder tree root/<label>/<image> or a GLDv2-style CSV manifest.
      pipeline_root: where components write their artifacts (the Trainer's backups too, under
        ``_trainer_backup``: every worker of a run sees it).
      serving_model_dir: the Pusher's destination (TF Serving layout <dir>/<version>/).
      schema_file: the curated schema as the ImportSchemaGen step sees it (local runs:
        ``schemas.SCHEMA_FILE``; containers: the image's path).
      preprocessing_fn, run_fn: import paths of the Transform and Trainer functions
        (``pipeline.config.PREPROCESSING_FN`` and ``RUN_FN``).
      metadata_path: ML Metadata SQLite file (local runs); None when the orchestrator owns MLMD.
      enable_cache: reuse a component's outputs when its inputs and parameters are unchanged.
      trainer_resources: optional callback(trainer) that sets platform resources (e.g. a GPU
        request on Kubeflow); local runs leave it None.
      trainer_class, trainer_custom_config: another Trainer component class taking the same
        arguments (e.g. tfx.extensions.google_cloud_ai_platform.Trainer, which trains in a
        Vertex AI CustomJob) and the custom_config keys it reads; None: the standard Trainer.
      gallery_index_dir: with ``config.gallery``: where each pushed model's index goes
        (``<gallery_index_dir>/<version>``, beside ``<serving_model_dir>/<version>``).
      gallery_fingerprint: a digest of the gallery's files (local runs), so that a changed
        gallery re-runs GalleryIndexer; None where the runner cannot list it.
    """
    if config.gallery and not gallery_index_dir:
        raise ValueError("a gallery needs gallery_index_dir: where the pushed indexes go")
    example_gen = ImageExampleGen(input_base=data, eval_fraction=config.eval_fraction,
                                  max_bytes=config.max_bytes, max_pixels=config.max_pixels,
                                  decode_size=config.model.image_size,
                                  fingerprint_max_files=config.fingerprint_max_files)
    statistics = StatisticsGen(examples=example_gen.outputs["examples"])
    schema = ImportSchemaGen(schema_file=schema_file)
    validator = ExampleValidator(statistics=statistics.outputs["statistics"], schema=schema.outputs["schema"])
    gate = AnomalyGate(anomalies=validator.outputs["anomalies"])

    transform = Transform(
        examples=example_gen.outputs["examples"], schema=schema.outputs["schema"],
        preprocessing_fn=preprocessing_fn, materialize=False,
        splits_config=transform_pb2.SplitsConfig(analyze=["train"]),
        custom_config=transform_config(config))
    transform.add_upstream_node(gate)

    trainer = (trainer_class or Trainer)(
        run_fn=run_fn, examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"], schema=schema.outputs["schema"],
        train_args=trainer_pb2.TrainArgs(splits=["train"], num_steps=config.train_steps),
        eval_args=trainer_pb2.EvalArgs(splits=["eval"], num_steps=0),
        custom_config={"config": config.trainer_json(), "backup_root": os.path.join(pipeline_root, "_trainer_backup"),
                       **(trainer_custom_config or {})})
    if trainer_resources is not None:
        trainer_resources(trainer)

    baseline = Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")

    evaluator = Evaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"], schema=schema.outputs["schema"],
        eval_config=evaluation_config(config), example_splits=["eval"])

    pusher = Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_model_dir)))

    components = [example_gen, statistics, schema, validator, gate, transform, trainer, baseline,
                  evaluator, pusher]
    if config.gallery:
        from components.gallery_index.component import GalleryIndexer

        # After the Pusher: the index is named by the version the Pusher chose.
        components.append(GalleryIndexer(
            model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
            pushed_model=pusher.outputs["pushed_model"], gallery=config.gallery,
            index_dir=gallery_index_dir, beam_args=json.dumps(beam_pipeline_args(config)),
            gallery_fingerprint=gallery_fingerprint or "",
            # only when set: a run without DBA keeps the component's parameters (and cache key)
            **({"dba": config.gallery_dba, "dba_alpha": float(config.gallery_dba_alpha)} if config.gallery_dba else {})))

    return Pipeline(
        pipeline_name=config.pipeline_name, pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=(metadata.sqlite_metadata_connection_config(metadata_path)
                                    if metadata_path else None),
        beam_pipeline_args=beam_pipeline_args(config))
