"""What one run did, gathered for people: the report (``run_report``) and the console read it.

Everything comes from the run's own records: ML Metadata (components, their wall times, their
artifacts), the artifacts themselves (the ingestion report, TFMA's metrics, the Trainer's
TensorBoard events, the pushed SavedModel) and the run manifest ``run.json`` that
``local_runner`` writes when a run starts. Artifacts are read through TensorFlow's filesystem
layer, so a run whose artifacts live on an object store is described the same way.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

RUN_MANIFEST = "run.json"
# TFMA's names of the Evaluator's numbers (components/retrieval/tfma_metric.py).
HEADLINE_METRICS = ("retrieval_mAP", "retrieval_mAP@100", "recall@1", "recall@5", "recall@10")


@dataclasses.dataclass
class Curve:
    """A scalar over training steps or epochs, from TensorBoard events."""
    name: str
    steps: list
    values: list


@dataclasses.dataclass
class Evaluation:
    """The Evaluator's verdict: the candidate's numbers, the last blessed model's (when there
    was one), the thresholds, and whether the candidate was blessed."""
    candidate: dict
    baseline: dict
    blessed: Optional[bool]
    min_map: Optional[float]
    max_map_drop: Optional[float]

    def change(self, name: str) -> Optional[float]:
        if name in self.candidate and name in self.baseline:
            return self.candidate[name] - self.baseline[name]
        return None


def component_times(layout) -> dict:
    """{component id: (state, seconds)} for the latest run in the order they started, from ML
    Metadata's timestamps."""
    from pipeline import local_runner

    _, _, executions = local_runner.latest_run_executions(layout)
    out = {}
    for name, execution in sorted(executions.items(), key=lambda item: item[1].create_time_since_epoch):
        seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000.0
        out[name] = (local_runner._state(execution), max(seconds, 0.0))
    return out


def rejected_files(report_uri: Optional[str], limit: int = 20) -> dict:
    """{reason: {"count": n, "paths": the first `limit` paths in path order}} from the
    ingestion report. Its lines come in no fixed order (Beam's shards), so the first paths are
    kept by path while streaming: the same page for the same data, in memory of `limit` paths."""
    import bisect

    import tensorflow as tf

    out: dict = {}
    if not report_uri or not tf.io.gfile.exists(report_uri):
        return out
    with tf.io.gfile.GFile(report_uri) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            entry = out.setdefault(row.get("reason") or "unknown", {"count": 0, "paths": []})
            entry["count"] += 1
            bisect.insort(entry["paths"], row.get("path", ""))
            del entry["paths"][limit:]
    return out


def training_curves(layout) -> list:
    """Loss and learning-rate curves from the Trainer's TensorBoard events (latest run)."""
    import tensorflow as tf

    from pipeline import local_runner

    store, _, executions = local_runner.latest_run_executions(layout)
    if "Trainer" not in executions:
        return []
    runs = local_runner._outputs(store, executions["Trainer"], "ModelRun")
    if not runs:
        return []
    series: dict = {}
    for name in sorted(tf.io.gfile.glob(f"{runs[0].uri.rstrip('/')}/tensorboard/train/events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(name):
            for value in event.summary.value:
                if value.tag not in ("epoch_loss", "epoch_learning_rate", "batch_loss"):
                    continue
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                series.setdefault(value.tag, {})[int(event.step)] = number
    return [Curve(tag, sorted(points), [points[s] for s in sorted(points)]) for tag, points in sorted(series.items())]


def evaluation(layout, summary: dict, config) -> Optional[Evaluation]:
    """The Evaluator's numbers for the candidate and, when there was one, the baseline."""
    import tensorflow_model_analysis as tfma

    from pipeline import local_runner

    store, _, executions = local_runner.latest_run_executions(layout)
    if "Evaluator" not in executions:
        return None
    [result] = local_runner._outputs(store, executions["Evaluator"], "ModelEvaluation") or [None]
    if result is None:
        return None
    candidate, baseline = {}, {}
    for metrics in tfma.load_metrics(result.uri):
        if metrics.slice_key.single_slice_keys:
            continue
        for item in metrics.metric_keys_and_values:
            if item.key.is_diff or not item.value.HasField("double_value"):
                continue
            target = baseline if item.key.model_name == "baseline" else candidate
            target[item.key.name] = item.value.double_value.value
    return Evaluation(candidate=candidate, baseline=baseline, blessed=summary.get("blessed"),
                      min_map=config.min_map, max_map_drop=config.max_map_drop)


def _latest_execution(layout, name):
    from pipeline import local_runner

    store, _, executions = local_runner.latest_run_executions(layout)
    return store, executions.get(name)


def component_result(layout, name: str, config) -> str:
    """One line on what component ``name`` of the latest run produced, for the console."""
    import tensorflow as tf

    from pipeline import local_runner

    store, execution = _latest_execution(layout, name)
    if execution is None:
        return ""
    cached = "reused from cache; " if local_runner._state(execution) == "CACHED" else ""
    outputs = lambda kind: local_runner._outputs(store, execution, kind)  # noqa: E731
    if name == "ImageExampleGen":
        from components.image_example_gen.spec import SUMMARY_FILE

        [report] = outputs("dolg_tfx.IngestionReport") or [None]
        if report is None:
            return cached.rstrip("; ")
        ing = local_runner.read_json_artifact_file(report.uri, SUMMARY_FILE)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(ing.get("reasons", {}).items()))
        return (f"{cached}{ing['files_seen']} files seen, {ing['emitted_total']} emitted (train "
                f"{ing['emitted']['train']}, eval {ing['emitted']['eval']}), {ing['rejected']} rejected"
                + (f" ({reasons})" if reasons else ""))
    if name == "Transform":
        import tensorflow_transform as tft

        from pipeline import features as F

        [graph] = outputs("TransformGraph") or [None]
        if graph is None:
            return cached.rstrip("; ")
        return f"{cached}{tft.TFTransformOutput(graph.uri).vocabulary_size_by_name(F.LABEL_VOCAB)} labels in the vocabulary"
    if name == "Trainer":
        from pipeline.trainer import PROGRESS_FILE

        [run] = outputs("ModelRun") or [None]
        path = f"{run.uri.rstrip('/')}/{PROGRESS_FILE}" if run is not None else None
        if path is None or not tf.io.gfile.exists(path):
            return cached.rstrip("; ")
        with tf.io.gfile.GFile(path) as f:
            progress = json.loads(f.read())
        loss = progress.get("logs", {}).get("loss")
        return f"{cached}{progress['step']} steps" + (f", final loss {loss:.4f}" if loss is not None else "")
    if name == "Evaluator":
        ev = evaluation(layout, {}, config)
        [blessing] = outputs("ModelBlessing") or [None]
        if ev is None:
            return cached.rstrip("; ")
        shown = ", ".join(f"{k} {ev.candidate[k]:.4f}" for k in HEADLINE_METRICS if k in ev.candidate)
        change = ev.change("retrieval_mAP")
        versus = (f"; vs last blessed {change:+.4f}" if change is not None else "; no earlier blessed model")
        verdict = ""
        if blessing is not None:
            verdict = "; BLESSED" if blessing.custom_properties["blessed"].int_value == 1 else "; NOT BLESSED"
        return f"{cached}{shown}{versus}{verdict}"
    if name == "Pusher":
        [pushed] = outputs("PushedModel") or [None]
        if pushed is not None and pushed.custom_properties["pushed"].int_value == 1:
            dest = pushed.custom_properties["pushed_destination"].string_value
            return f"{cached}pushed version {dest.rstrip('/').rsplit('/', 1)[-1]} to {dest}"
        return f"{cached}nothing pushed (the model was not blessed)"
    if name == "GalleryIndexer":
        from components.gallery_index.build import SUMMARY_FILE, describe

        [index] = outputs("dolg_tfx.GalleryIndex") or [None]
        if index is None:
            return cached.rstrip("; ")
        return f"{cached}{describe(local_runner.read_json_artifact_file(index.uri, SUMMARY_FILE))}"
    return cached.rstrip("; ")
