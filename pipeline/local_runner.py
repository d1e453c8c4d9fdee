"""Runs the pipeline locally (LocalDagRunner, Beam DirectRunner, ML Metadata in SQLite) and
summarises a run from ML Metadata: images ingested and rejected, mAP, blessing, push.

A run holds the output folder's run lock (``pipeline.run_lock``) from start to end, and
first removes version folders a killed push left incomplete in the serving folder, so a
rerun after a SIGKILL anywhere finds only complete versions and a free lock.
Artifacts are read through TFX's fileio, so the summary works whatever filesystem holds them.
"""
import contextlib
import dataclasses
import json
import logging as std_logging
import os
from typing import Optional

from absl import logging

from pipeline import run_lock, run_manifest
from pipeline.config import PREPROCESSING_FN, RUN_FN, PipelineConfig
from schemas import SCHEMA_FILE


@dataclasses.dataclass
class Layout:
    """Where a local run keeps things, all under one output folder."""

    output: str

    @property
    def pipeline_root(self):
        return os.path.join(self.output, "pipeline")

    @property
    def metadata_path(self):
        return os.path.join(self.output, "metadata.sqlite")

    @property
    def serving_model_dir(self):
        return os.path.join(self.output, "serving_model")

    @property
    def gallery_index_dir(self):
        """Beside serving_model: gallery_index/<V> is the index of serving_model/<V>."""
        return os.path.join(self.output, "gallery_index")


def run(config: PipelineConfig, data: str, output: str, enable_cache: bool = True,
        verbose: bool = True, preset: Optional[str] = None,
        watch: Optional[std_logging.Handler] = None) -> dict:
    """Runs the whole pipeline on `data` into `output` and returns summarise()'s dict.

    Args:
      verbose: False keeps TFX's per-component INFO logs (protos and all) out of the log
        stream, unless `watch` needs them.
      preset: the preset the config came from, recorded in the run manifest.
      watch: a logging handler that sees every record of the run (the CLI's console turns
        TFX's component records into progress lines).
    """
    layout = Layout(os.path.abspath(output))
    # The lock first: a refused run stops before the seconds TFX takes to import.
    with run_lock.hold(layout.output) as killed, _watching(watch):
        from tfx.orchestration.local.local_dag_runner import LocalDagRunner

        from pipeline.pipeline import create_pipeline
        from components.image_example_gen import storage
        from components.image_example_gen.inputs import fingerprint
        from components.retrieval.model_versions import remove_incomplete_versions

        gallery_fingerprint = None
        if config.gallery:
            if not storage.is_uri(config.gallery):  # the manifest and the cache key need one name for it
                config = config.replace(gallery=os.path.abspath(config.gallery))
            gallery_fingerprint = fingerprint(config.gallery, max_files=config.fingerprint_max_files)
        run_manifest.write(layout.output, config, data, preset)
        logging.set_verbosity(logging.INFO if verbose or watch is not None else logging.WARNING)
        if killed:
            logging.warning("The previous run on %s (%s) ended without releasing its lock; taking over.",
                            layout.output, run_lock.describe(killed))
        for removed in remove_incomplete_versions(layout.serving_model_dir):
            logging.warning("Removed %s: a model version left incomplete by an interrupted push.", removed)
        LocalDagRunner().run(create_pipeline(
            config, data=os.path.abspath(data), pipeline_root=layout.pipeline_root,
            serving_model_dir=layout.serving_model_dir, schema_file=SCHEMA_FILE,
            preprocessing_fn=PREPROCESSING_FN, run_fn=RUN_FN,
            metadata_path=layout.metadata_path, enable_cache=enable_cache,
            gallery_index_dir=layout.gallery_index_dir, gallery_fingerprint=gallery_fingerprint))
        return summarise(layout)


@contextlib.contextmanager
def _watching(handler):
    if handler is None:
        yield
        return
    root = std_logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _store(layout):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = layout.metadata_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(cfg)


def latest_run_executions(layout):
    """(store, executions of the latest pipeline run, keyed by component id)."""
    store = _store(layout)
    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.create_time_since_epoch)
    if not runs:
        raise RuntimeError(f"no pipeline run recorded in {layout.metadata_path}")
    node_type = store.get_context_type("node").id
    executions = {}
    for execution in store.get_executions_by_context(runs[-1].id):
        # Each execution also belongs to a "node" context named "<pipeline>.<component id>".
        nodes = [c for c in store.get_contexts_by_execution(execution.id) if c.type_id == node_type]
        if nodes:
            executions[nodes[0].name.split(".", 1)[1]] = execution
    return store, runs[-1], executions


def _outputs(store, execution, type_name):
    from ml_metadata.proto import metadata_store_pb2

    events = store.get_events_by_execution_ids([execution.id])
    ids = [e.artifact_id for e in events if e.type in (metadata_store_pb2.Event.OUTPUT,
                                                        metadata_store_pb2.Event.DECLARED_OUTPUT)]
    arts = store.get_artifacts_by_id(ids)
    wanted = {t.id for t in store.get_artifact_types() if t.name == type_name}
    return [a for a in arts if a.type_id in wanted]


class ArtifactUnreadable(RuntimeError):
    """An artifact the summary needs is missing or unreadable (the message names the file)."""


def _uri_join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def read_json_artifact_file(uri: str, name: str):
    """``<uri>/<name>`` parsed as JSON, read through fileio (any filesystem)."""
    import tensorflow as tf
    from tfx.dsl.io import fileio

    path = _uri_join(uri, name)
    try:
        with fileio.open(path, "r") as f:
            return json.loads(f.read())
    except (OSError, ValueError, tf.errors.OpError, fileio.NotFoundError) as err:
        raise ArtifactUnreadable(f"cannot read {path} ({type(err).__name__}: {getattr(err, 'message', err)})") from err


def evaluation_metrics(uri) -> dict:
    """The candidate's overall-slice metrics of a ModelEvaluation artifact: {name: value}.

    Raises:
      ArtifactUnreadable: no metrics file in the artifact, or one without the overall slice.
    """
    import tensorflow as tf
    import tensorflow_model_analysis as tfma

    values = {}
    try:  # TFMA reads through tf.io.gfile, so any filesystem TensorFlow opens
        for metrics in tfma.load_metrics(uri):
            if metrics.slice_key.single_slice_keys:
                continue
            for item in metrics.metric_keys_and_values:
                if item.key.is_diff or item.key.model_name not in ("", "candidate"):
                    continue
                if item.value.HasField("double_value"):
                    values[item.key.name] = item.value.double_value.value
    except (OSError, tf.errors.OpError) as err:
        raise ArtifactUnreadable(f"cannot read the Evaluator's metrics in {uri} "
                                 f"({type(err).__name__}: {getattr(err, 'message', err)})") from err
    if not values:
        raise ArtifactUnreadable(f"the Evaluator's output {uri} holds no overall metrics")
    return values


def summarise(layout) -> dict:
    """What the latest run did, read back from ML Metadata and the artifacts.

    Raises:
      ArtifactUnreadable: a finished component's output file is missing or unreadable.
    """
    from components.image_example_gen.spec import REJECTED_FILE, SUMMARY_FILE

    store, run_context, executions = latest_run_executions(layout)
    summary = {"run": run_context.name, "components": {k: _state(v) for k, v in executions.items()}}
    if "ImageExampleGen" in executions:
        [report] = _outputs(store, executions["ImageExampleGen"], "dolg_tfx.IngestionReport") or [None]
        if report is not None:
            summary["ingestion"] = read_json_artifact_file(report.uri, SUMMARY_FILE)
            summary["ingestion_report"] = _uri_join(report.uri, REJECTED_FILE)
        [examples] = _outputs(store, executions["ImageExampleGen"], "Examples") or [None]
        summary["examples"] = examples.uri if examples is not None else None
    if "Evaluator" in executions:
        [evaluation] = _outputs(store, executions["Evaluator"], "ModelEvaluation") or [None]
        if evaluation is not None:
            summary["metrics"] = evaluation_metrics(evaluation.uri)
        [blessing] = _outputs(store, executions["Evaluator"], "ModelBlessing") or [None]
        if blessing is not None:
            summary["blessed"] = blessing.custom_properties["blessed"].int_value == 1
    if "Trainer" in executions:
        [model] = _outputs(store, executions["Trainer"], "Model") or [None]
        summary["model"] = _uri_join(model.uri, "Format-Serving") if model else None
    if "Pusher" in executions:
        [pushed] = _outputs(store, executions["Pusher"], "PushedModel") or [None]
        if pushed is not None and pushed.custom_properties["pushed"].int_value == 1:
            summary["pushed_to"] = pushed.custom_properties["pushed_destination"].string_value
        else:
            summary["pushed_to"] = None
    if "GalleryIndexer" in executions:
        from components.gallery_index.build import SUMMARY_FILE as INDEX_SUMMARY

        [index] = _outputs(store, executions["GalleryIndexer"], "dolg_tfx.GalleryIndex") or [None]
        if index is not None:
            summary["gallery_index"] = read_json_artifact_file(index.uri, INDEX_SUMMARY)
    return summary


def _state(execution) -> str:
    from ml_metadata.proto import metadata_store_pb2

    return metadata_store_pb2.Execution.State.Name(execution.last_known_state)


def format_summary(summary: dict) -> str:

    ing = summary.get("ingestion", {})
    metrics = summary.get("metrics", {})
    lines = [f"Run {summary['run']}"]
    if ing:
        split = ing["emitted"]
        lines.append(f"  images: {ing['emitted_total']} ingested (train {split['train']}, eval {split['eval']}), "
                     f"{ing['rejected']} rejected (report: {summary.get('ingestion_report')})")
    if metrics:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if not k.endswith("num_queries"))
        lines.append(f"  held-out retrieval: {shown}")
    if "blessed" in summary:
        lines.append(f"  model {'BLESSED' if summary['blessed'] else 'NOT BLESSED'}")
    pushed = summary.get("pushed_to")
    lines.append(f"  pushed to: {pushed if pushed else 'nothing pushed'}")
    if summary.get("gallery_index") is not None:
        from components.gallery_index.build import describe

        lines.append(f"  gallery: {describe(summary['gallery_index'])}")
    cached = [k for k, v in summary["components"].items() if v == "CACHED"]
    if cached:
        lines.append(f"  reused from cache: {', '.join(sorted(cached))}")
    return "\n".join(lines)
