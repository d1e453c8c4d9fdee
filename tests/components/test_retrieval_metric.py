"""Tests of components.retrieval.tfma_metric: the RetrievalMetrics TFMA metric and eval_config.

End to end: a tiny SavedModel with a ``serving_examples`` signature (serialized tf.Examples in,
``{"embedding": [N, D]}`` out) is evaluated by TFMA 0.52 on 40 tf.Examples read the way the TFX
Evaluator reads them (TFXIO with a schema); the metrics must equal
``leave_one_out_retrieval`` run here on embeddings taken from the same signature directly.
The combiner is also driven by hand (no Beam) for merge order, options and edge cases.
"""
import json
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_model_analysis.metrics import metric_specs, metric_types
from tensorflow_model_analysis.proto import config_pb2
from tensorflow_model_analysis.utils import config_util

from components.retrieval import tfma_metric
from components.retrieval.protocols import leave_one_out_retrieval
from components.retrieval.tfma_metric import MAP_NAME, RetrievalMetrics, eval_config

N_LABELS, PER_LABEL = 8, 5
TOL = 1e-6


# ------------------------------------------------------------------ fixtures ----------------
class _Embedder(tf.Module):
    """Serves tf.Examples: decodes ``image`` (PNG) and embeds its colour statistics.

    ``full``: L2-normalised [mean RGB, std RGB] -- a fair retrieval model on the data below.
    ``std_only``: only the std part -- a clearly worse model, the "regressed candidate".
    """

    def __init__(self, variant: str):
        super().__init__()
        self.variant = variant

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        parsed = tf.io.parse_example(examples, {"image": tf.io.FixedLenFeature([], tf.string)})
        images = tf.map_fn(
            lambda png: tf.cast(tf.io.decode_png(png, channels=3), tf.float32) / 255.0,
            parsed["image"], fn_output_signature=tf.TensorSpec([None, None, 3], tf.float32))
        mean = tf.reduce_mean(images, axis=[1, 2])
        std = tf.math.reduce_std(images, axis=[1, 2])
        features = tf.concat([mean, std], axis=1) if self.variant == "full" else std
        return {"embedding": tf.math.l2_normalize(features, axis=1)}


def _save_model(path, variant):
    module = _Embedder(variant)
    tf.saved_model.save(module, str(path), signatures={"serving_examples": module.serve})
    return str(path)


def _example(image: np.ndarray, label: str, image_id: str) -> bytes:
    def _bytes(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
    return tf.train.Example(features=tf.train.Features(feature={
        "image": _bytes(tf.io.encode_png(image).numpy()),
        "label": _bytes(label.encode()),
        "image_id": _bytes(image_id.encode())})).SerializeToString()


def _schema() -> schema_pb2.Schema:
    """What SchemaGen(infer_feature_shape=True) gives: required BYTES features of shape [1]."""
    schema = schema_pb2.Schema()
    for name in ("image", "label", "image_id"):
        feature = schema.feature.add(name=name, type=schema_pb2.BYTES)
        feature.shape.dim.add(size=1)
        feature.presence.min_fraction = 1.0
    return schema


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """40 examples of 8 landmarks whose colours overlap (so 0 < mAP < 1), and two models."""
    root = tmp_path_factory.mktemp("retrieval_metric")
    rng = np.random.default_rng(7)
    records, labels = [], []
    for i in range(N_LABELS * PER_LABEL):
        label = f"landmark_{i % N_LABELS:02d}"  # unseen-in-training style string labels
        image = np.clip(rng.normal(20 + 30 * (i % N_LABELS), 60, size=(8, 8, 3)), 0, 255)
        records.append(_example(image.astype(np.uint8), label, f"img_{i:03d}"))
        labels.append(label)
    data = root / "eval.tfrecord"
    with tf.io.TFRecordWriter(str(data)) as writer:
        for record in records:
            writer.write(record)
    models = {v: _save_model(root / v, v) for v in ("full", "std_only")}
    # The independent reference: the same signature called directly, no TFMA involved.
    expected = {}
    for variant, path in models.items():
        serve = tf.saved_model.load(path).signatures["serving_examples"]
        emb = serve(examples=tf.constant(records))["embedding"].numpy()
        expected[variant] = leave_one_out_retrieval(emb, np.asarray(labels), ks=(1, 5, 10),
                                                    map_at=100)
    return {"root": root, "data": str(data), "models": models, "expected": expected,
            "records": records, "labels": labels}


def _run_tfma(setup, cfg, out_name, candidate="full", baseline=None):
    """Runs TFMA the way the TFX Evaluator does (rubber stamp, TFXIO + schema, DirectRunner)."""
    cfg = config_util.update_eval_config_with_defaults(
        cfg, has_baseline=baseline is not None, rubber_stamp=True)
    variants = {spec.name: (baseline if spec.is_baseline else candidate)
                for spec in cfg.model_specs}
    models = [tfma.default_eval_shared_model(eval_saved_model_path=setup["models"][v],
                                             model_name=name, eval_config=cfg)
              for name, v in variants.items()]
    out = str(setup["root"] / out_name)
    tfma.run_model_analysis(eval_shared_model=models[0] if len(models) == 1 else models,
                            eval_config=cfg, data_location=setup["data"], output_path=out,
                            schema=_schema())
    metrics = {}
    for per_slice in tfma.load_metrics(out):
        assert not per_slice.slice_key.single_slice_keys  # only the overall slice
        for kv in per_slice.metric_keys_and_values:
            metrics[(kv.key.name, kv.key.model_name, kv.key.is_diff)] = kv.value.double_value.value
    return metrics, tfma.load_validation_result(out)


# ------------------------------------------------------------------ TFMA end to end ---------
def test_tfma_metrics_equal_protocol_and_min_map_passes(setup):
    ref = setup["expected"]["full"]
    assert 0.2 < ref.mAP < 0.98 and ref.recall_at_k[1] < 1.0  # a non-trivial case
    metrics, validation = _run_tfma(setup, eval_config(min_map=ref.mAP - 0.05), "pass")
    want = {"retrieval_mAP": ref.mAP, "retrieval_mAP@100": ref.mAP_at_k,
            "recall@1": ref.recall_at_k[1], "recall@5": ref.recall_at_k[5],
            "recall@10": ref.recall_at_k[10], "retrieval_num_queries": ref.n_queries,
            "retrieval_num_evaluated": ref.n_evaluated}
    got = {name: value for (name, model, diff), value in metrics.items()}
    assert set(got) == set(want)
    for name, value in want.items():
        assert abs(got[name] - value) < TOL, name
    assert got["retrieval_num_queries"] == N_LABELS * PER_LABEL
    assert validation.validation_ok, validation


def test_impossible_min_map_fails(setup):
    metrics, validation = _run_tfma(setup, eval_config(min_map=1.01), "fail")
    assert not validation.validation_ok
    failures = [f for s in validation.metric_validations_per_slice for f in s.failures]
    assert [f.metric_key.name for f in failures] == [MAP_NAME]
    assert abs(failures[0].metric_value.double_value.value
               - setup["expected"]["full"].mAP) < TOL
    assert failures[0].message != "Metric not found."


def test_change_threshold_is_dropped_without_baseline(setup):
    """First run: no baseline model, the change threshold is rubber-stamped away."""
    cfg = eval_config(min_map=0.1, max_map_drop=0.0)
    assert cfg.metrics_specs[0].metrics[0].threshold.HasField("change_threshold")
    _, validation = _run_tfma(setup, cfg, "first_run")
    assert validation.validation_ok, validation


@pytest.mark.parametrize("candidate, ok", [("full", True), ("std_only", False)])
def test_change_threshold_against_baseline(setup, candidate, ok):
    """Baseline = the fair model. Same model: change 0 passes; the worse model is refused."""
    drop = 0.02
    ref, cand = setup["expected"]["full"], setup["expected"][candidate]
    assert (cand.mAP - ref.mAP >= -drop) == ok  # the data really separates the two cases
    metrics, validation = _run_tfma(setup, eval_config(min_map=0.0, max_map_drop=drop),
                                    f"baseline_{candidate}", candidate=candidate,
                                    baseline="full")
    assert abs(metrics[(MAP_NAME, "baseline", False)] - ref.mAP) < TOL
    assert abs(metrics[(MAP_NAME, "candidate", False)] - cand.mAP) < TOL
    assert abs(metrics[(MAP_NAME, "candidate", True)] - (cand.mAP - ref.mAP)) < TOL
    assert validation.validation_ok == ok, validation
    if not ok:
        failure = validation.metric_validations_per_slice[0].failures[0]
        assert failure.metric_key.is_diff and failure.metric_key.name == MAP_NAME


# ------------------------------------------------------------------ combiner by hand ---------
def _computation(**options):
    """The MetricComputation TFMA builds from an EvalConfig carrying these metric options."""
    metric = config_pb2.MetricConfig(class_name="RetrievalMetrics",
                                     module=tfma_metric.METRIC_MODULE,
                                     config=json.dumps(options))
    cfg = config_pb2.EvalConfig(model_specs=[config_pb2.ModelSpec()],
                                metrics_specs=[config_pb2.MetricsSpec(metrics=[metric])])
    (computation,) = metric_specs.to_computations(list(cfg.metrics_specs), eval_config=cfg)
    return computation


def _inputs(emb, labels):
    return [metric_types.StandardMetricInputs(
        labels=None, predictions=np.asarray(e, np.float32),
        features={"label": np.asarray([l.encode()], dtype=object)})
        for e, l in zip(emb, labels)]


def _combine(combiner, parts):
    """Accumulates each part separately, then merges them (as Beam does across bundles)."""
    accs = []
    for part in parts:
        acc = combiner.create_accumulator()
        for element in part:
            acc = combiner.add_input(acc, element)
        accs.append(combiner.compact(acc))
    out = combiner.extract_output(combiner.merge_accumulators(accs))
    return {key.name: value for key, value in out.items()}


def _unit_vectors(rng, n, dim, n_labels):
    emb = rng.normal(size=(n, dim)) + 0.8 * np.eye(dim)[[i % n_labels for i in range(n)]]
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


def test_combiner_options_keys_and_values():
    """Options from the MetricConfig JSON reach the protocol; > _COMPACT_ROWS rows, merged."""
    rng = np.random.default_rng(3)
    labels = [f"l{i % 6}" for i in range(700)]
    emb = _unit_vectors(rng, 700, 16, 6)
    computation = _computation(ks=[1, 3], map_at=7, block_size=50)
    assert {k.name for k in computation.keys} == {
        "retrieval_mAP", "retrieval_mAP@7", "recall@1", "recall@3",
        "retrieval_num_queries", "retrieval_num_evaluated"}
    ref = leave_one_out_retrieval(emb, np.asarray(labels), ks=(1, 3), map_at=7)
    inputs = _inputs(emb, labels)
    out = _combine(computation.combiner, [inputs[:123], [], inputs[123:650], inputs[650:]])
    assert abs(out["retrieval_mAP"] - ref.mAP) < TOL
    assert abs(out["retrieval_mAP@7"] - ref.mAP_at_k) < TOL
    assert abs(out["recall@1"] - ref.recall_at_k[1]) < TOL
    assert abs(out["recall@3"] - ref.recall_at_k[3]) < TOL
    assert out["retrieval_num_queries"] == 700 and out["retrieval_num_evaluated"] == 700


def test_combiner_result_independent_of_arrival_order():
    """Exact score ties across labels: the protocol breaks them by row index, so without the
    canonical row order the result would depend on how Beam ordered and bundled examples."""
    rng = np.random.default_rng(5)
    labels = [f"l{i % 6}" for i in range(200)]
    emb = _unit_vectors(rng, 200, 8, 6)
    emb[100:160] = emb[0:60]  # duplicates with a different label ((100 + j) % 6 != j % 6)
    inputs = _inputs(emb, labels)
    combiner = _computation().combiner
    results = [_combine(combiner, [inputs])]
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(inputs))
        shuffled = [inputs[i] for i in perm]
        results.append(_combine(combiner, [shuffled[:37], shuffled[37:150], shuffled[150:]]))
    assert all(r == results[0] for r in results[1:])


def test_combiner_batched_rows_singletons_and_empty():
    combiner = _computation().combiner
    batch = metric_types.StandardMetricInputs(
        predictions={"embedding": np.eye(3, dtype=np.float32)[[0, 0, 1]]},
        features={"label": np.asarray([b"a", b"a", b"b"], dtype=object)})
    out = _combine(combiner, [[batch]])
    # "b" has no other item: it is a query but not evaluated; "a" retrieves "a" at rank 0.
    assert out["retrieval_num_queries"] == 3 and out["retrieval_num_evaluated"] == 2
    assert out["retrieval_mAP"] == 1.0
    empty = _combine(combiner, [[]])
    assert math.isnan(empty["retrieval_mAP"]) and empty["retrieval_num_queries"] == 0


def test_combiner_rejects_bad_inputs():
    combiner = _computation().combiner
    acc = combiner.create_accumulator()
    two_labels = metric_types.StandardMetricInputs(
        predictions=np.ones(4, np.float32), features={"label": np.asarray([b"a", b"b"])})
    with pytest.raises(ValueError, match="each example needs one label"):
        combiner.add_input(acc, two_labels)
    no_label = metric_types.StandardMetricInputs(predictions=np.ones(4, np.float32),
                                                 features={"other": np.asarray([b"a"])})
    with pytest.raises(ValueError, match="raw feature 'label'"):
        combiner.add_input(acc, no_label)
    with pytest.raises(ValueError, match="name must be one of"):
        RetrievalMetrics(name="mAP")


# ------------------------------------------------------------------ eval_config --------------
def test_eval_config_structure():
    cfg = eval_config(min_map=0.3, max_map_drop=0.05)
    (spec,) = cfg.model_specs
    assert spec.signature_name == "serving_examples" and not spec.name and not spec.label_key
    assert list(spec.preprocessing_function_names) == []
    (metric,) = cfg.metrics_specs[0].metrics
    assert (metric.class_name, metric.module) == ("RetrievalMetrics",
                                                  "components.retrieval.tfma_metric")
    assert json.loads(metric.config)["name"] == MAP_NAME
    assert metric.threshold.value_threshold.lower_bound.value == pytest.approx(0.3)
    change = metric.threshold.change_threshold
    assert change.direction == config_pb2.MetricDirection.HIGHER_IS_BETTER
    assert change.absolute.value == pytest.approx(-0.05)
    assert list(cfg.slicing_specs) == [config_pb2.SlicingSpec()]
    # The threshold is attached to a key the metric really produces (else "Metric not found").
    thresholds = metric_specs.metric_thresholds_from_metrics_specs(cfg.metrics_specs, cfg)
    produced = set(_computation(**json.loads(metric.config)).keys)
    assert {k._replace(is_diff=False) for k in thresholds} <= produced
    # No baseline and no rubber stamp: TFMA refuses change thresholds; without one it is fine.
    with pytest.raises(RuntimeError, match="baseline is missing"):
        config_util.update_eval_config_with_defaults(cfg, has_baseline=False)
    plain = eval_config(min_map=0.3)
    assert not plain.metrics_specs[0].metrics[0].threshold.HasField("change_threshold")
    config_util.update_eval_config_with_defaults(plain, has_baseline=False)
    with pytest.raises(ValueError):
        eval_config(min_map=0.3, max_map_drop=-0.1)
