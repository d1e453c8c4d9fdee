"""The Evaluator's αQE option: RetrievalMetrics with ``qe`` reports ``*_qe`` scores beside the
plain ones, the blessing stays on the plain mAP unless configured, and the defaults (metric,
EvalConfig, PipelineConfig, GalleryIndexer wiring) are exactly what they were before the option.
The combiner is driven by hand (no Beam, no TFMA run), so this file takes seconds.
"""
import json

import numpy as np
import pytest
from tensorflow_model_analysis.metrics import metric_specs, metric_types
from tensorflow_model_analysis.proto import config_pb2

from components.retrieval import tfma_metric
from components.retrieval.protocols import leave_one_out_retrieval
from components.retrieval.tfma_metric import eval_config
from conftest import load_fixture
from pipeline.config import PRESETS, ConfigError, PipelineConfig

TOL = 1e-6
# The metric config every run used before the option existed (pipeline default: min_map 0.0).
PREVIOUS_CONFIG = ('{"block_size": 1024, "embedding_key": "embedding", "ks": [1, 5, 10], '
                   '"label_feature": "label", "map_at": 100, "name": "retrieval_mAP"}')
PREVIOUS_KEYS = {"retrieval_mAP", "retrieval_mAP@100", "recall@1", "recall@5", "recall@10",
                 "retrieval_num_queries", "retrieval_num_evaluated"}


def _computation(config_json):
    metric = config_pb2.MetricConfig(class_name="RetrievalMetrics", module=tfma_metric.METRIC_MODULE,
                                     config=config_json)
    cfg = config_pb2.EvalConfig(model_specs=[config_pb2.ModelSpec()],
                                metrics_specs=[config_pb2.MetricsSpec(metrics=[metric])])
    (computation,) = metric_specs.to_computations(list(cfg.metrics_specs), eval_config=cfg)
    return computation


def _run(computation, emb, labels):
    combiner = computation.combiner
    acc = combiner.create_accumulator()
    for e, l in zip(emb, labels):
        acc = combiner.add_input(acc, metric_types.StandardMetricInputs(
            labels=None, predictions=np.asarray(e, np.float32),
            features={"label": np.asarray([l.encode()], dtype=object)}))
    return {k.name: v for k, v in combiner.extract_output(combiner.merge_accumulators([acc])).items()}


def _dense_qe(x, k, alpha):
    """Leave-one-out αQE from the definition: own row excluded, N x N float64 scores."""
    x64 = x.astype(np.float64)
    s = x64 @ x64.T
    np.fill_diagonal(s, -np.inf)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(s, top, axis=1)
    w = np.where(w > 0, np.abs(w) ** alpha, 0.0)
    out = x64 + np.einsum("nk,nkd->nd", w, x64[top])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_default_metric_and_eval_config_are_unchanged():
    """Fails if the option leaks into the default config or keys: a changed MetricConfig JSON
    changes the Evaluator's cache key and the compiled pipeline of every existing run."""
    cfg = eval_config(min_map=0.0, max_map_drop=0.01)
    (metric,) = cfg.metrics_specs[0].metrics
    assert metric.config == PREVIOUS_CONFIG
    assert {k.name for k in _computation(metric.config).keys} == PREVIOUS_KEYS
    from pipeline.pipeline import evaluation_config  # the pipeline's own wiring, default config
    assert evaluation_config(PipelineConfig()).metrics_specs[0].metrics[0].config == PREVIOUS_CONFIG
    for preset in PRESETS.values():
        assert "qe" not in json.loads(evaluation_config(preset).metrics_specs[0].metrics[0].config)


def test_qe_scores_beside_the_plain_ones_equal_the_dense_reference():
    """Fails if the _qe scores are not leave-one-out αQE (own row merged, wrong weights) or if
    turning the option on changes the plain scores."""
    rng = np.random.default_rng(0)
    x = load_fixture("vectors").clustered_unit_vectors(240, 16, clusters=24, spread=1.2, seed=1)
    labels = [f"l{c}" for c in rng.integers(0, 24, 240)]
    plain = _run(_computation(PREVIOUS_CONFIG), x, labels)
    cfg = eval_config(min_map=0.1, qe=3, qe_alpha=2.0)
    (metric,) = cfg.metrics_specs[0].metrics
    out = _run(_computation(metric.config), x, labels)
    assert set(out) == PREVIOUS_KEYS | {n + "_qe" for n in PREVIOUS_KEYS if "num" not in n}
    assert {k: out[k] for k in PREVIOUS_KEYS} == plain
    # The reference ranks the metric's canonical row order; the protocol is order-free for
    # distinct scores, so any order gives the same numbers.
    ref = leave_one_out_retrieval(x, np.asarray(labels), queries=_dense_qe(x, 3, 2.0))
    assert abs(out["retrieval_mAP_qe"] - ref.mAP) < TOL
    assert abs(out["retrieval_mAP@100_qe"] - ref.mAP_at_k) < TOL
    assert abs(out["recall@1_qe"] - ref.recall_at_k[1]) < TOL
    assert out["retrieval_mAP_qe"] != out["retrieval_mAP"]  # the option does something here
    assert json.loads(metric.config)["name"] == "retrieval_mAP"  # blessing on the plain mAP


def test_bless_on_qe_moves_the_threshold_only_when_configured():
    """Fails if bless_on_qe is ignored, or accepted without an expanded mAP to bless on."""
    cfg = eval_config(min_map=0.2, max_map_drop=0.01, qe=2, bless_on_qe=True)
    (metric,) = cfg.metrics_specs[0].metrics
    assert json.loads(metric.config)["name"] == "retrieval_mAP_qe"
    thresholds = metric_specs.metric_thresholds_from_metrics_specs(cfg.metrics_specs, cfg)
    assert {k.name for k in thresholds} == {"retrieval_mAP_qe"}
    assert {k._replace(is_diff=False) for k in thresholds} <= set(_computation(metric.config).keys)
    with pytest.raises(ValueError, match="needs qe"):
        eval_config(min_map=0.2, bless_on_qe=True)
    with pytest.raises(ValueError, match="name must be one of"):
        tfma_metric.RetrievalMetrics(name="retrieval_mAP_qe")  # qe off: no such key
    from pipeline.pipeline import evaluation_config
    piped = evaluation_config(PipelineConfig(eval_qe=2, bless_on_qe=True)).metrics_specs[0].metrics[0]
    assert json.loads(piped.config)["name"] == "retrieval_mAP_qe" and json.loads(piped.config)["qe"] == 2


def test_pipeline_config_fields_validate_and_stay_out_of_the_trainer():
    """Fails if a bad value is accepted or if the new fields reach the Trainer's config (they
    would make a threshold or index change retrain the model)."""
    base = PipelineConfig()
    assert base.trainer_json() == base.replace(eval_qe=3, eval_qe_alpha=1.0, bless_on_qe=True,
                                               gallery_dba=5, gallery_dba_alpha=2.0).trainer_json()
    for field, value in (("eval_qe", -1), ("gallery_dba", 1.5), ("eval_qe_alpha", -1.0),
                         ("gallery_dba_alpha", float("inf")), ("bless_on_qe", True)):
        with pytest.raises(ConfigError, match=field):
            base.replace(**{field: value})


def test_gallery_indexer_gets_dba_only_when_configured(tmp_path):
    """Fails if the DBA settings do not reach the GalleryIndexer, or if a run without DBA gets
    new component parameters (which would change its cache key and compiled spec)."""
    from pipeline.config import PREPROCESSING_FN, RUN_FN
    from pipeline.pipeline import create_pipeline
    from schemas import SCHEMA_FILE

    (tmp_path / "data" / "a").mkdir(parents=True)

    def indexer(config):
        pipe = create_pipeline(config, data=str(tmp_path / "data"), pipeline_root=str(tmp_path / "root"),
                               serving_model_dir=str(tmp_path / "serving"), schema_file=SCHEMA_FILE,
                               preprocessing_fn=PREPROCESSING_FN, run_fn=RUN_FN,
                               gallery_index_dir=str(tmp_path / "idx"))
        [component] = [c for c in pipe.components if c.id == "GalleryIndexer"]
        return component.exec_properties

    plain = indexer(PRESETS["tiny"].replace(gallery=str(tmp_path / "data")))
    assert "dba" not in plain and "dba_alpha" not in plain
    props = indexer(PRESETS["tiny"].replace(gallery=str(tmp_path / "data"), gallery_dba=3, gallery_dba_alpha=2.0))
    assert (props["dba"], props["dba_alpha"]) == (3, 2.0)
