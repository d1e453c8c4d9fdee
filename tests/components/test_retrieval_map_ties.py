"""Exact score ties between items of different labels: leave-one-out mAP must not depend on the
order the examples are stored in, nor on what the labels are called.

The convention (components.retrieval.protocols._hit_ranks) is "pessimistic" ties: a non-relevant
item with exactly the same score as a relevant one is ranked first. Integer embeddings make every
score exact, so the ties below are real ties, not near-ties.
"""
import itertools

import numpy as np
import pytest

from components.retrieval import protocols
from components.retrieval.protocols import leave_one_out_retrieval

# Row 1 duplicates row 0 under another label; row 4 is a singleton (a distractor, never a query).
EMB = np.array([[2, 0], [2, 0], [1, 1], [0, 2], [1, 0]], dtype=np.float32)
LABELS = np.array(["a", "b", "a", "b", "c"])
# Scores: 0-1 4, 0-2 2, 0-3 0, 0-4 2, 1-2 2, 1-3 0, 1-4 2, 2-3 2, 2-4 1, 3-4 0.
# q0 (a): its positive 2 scores 2, tied with 4 (c) and behind 1 (4)  -> rank 3 -> AP 1/3
# q1 (b): its positive 3 scores 0, behind 0 (4), 2 (2), 4 (2)         -> rank 4 -> AP 1/4
# q2 (a): its positive 0 scores 2, tied with 1 (b) and 3 (b)          -> rank 3 -> AP 1/3
# q3 (b): its positive 1 scores 0, tied with 0 (a) and 4 (c), 2 first -> rank 4 -> AP 1/4
MAP = (1 / 3 + 1 / 4 + 1 / 3 + 1 / 4) / 4   # 7/24; q4 has no other "c" and is not evaluated


def _pessimistic_map(emb, labels):
    """Brute force: full sort per query on (-score, relevant), so ties put non-relevant first."""
    emb, labels = np.asarray(emb, np.float64), np.asarray(labels)
    scores = emb @ emb.T
    aps = []
    for q in range(len(labels)):
        others = np.delete(np.arange(len(labels)), q)
        relevant = labels[others] == labels[q]
        if relevant.any():
            order = np.lexsort((relevant, -scores[q, others]))
            ranks = np.flatnonzero(relevant[order]) + 1
            aps.append(np.mean(np.arange(1, ranks.size + 1) / ranks))
    return float(np.mean(aps))


def test_tied_map_by_hand():
    r = leave_one_out_retrieval(EMB, LABELS, ks=(1, 3, 4))
    assert r.n_queries == 5 and r.n_evaluated == 4
    assert r.mAP == pytest.approx(MAP, abs=1e-12)
    assert r.mAP_at_k == pytest.approx(MAP, abs=1e-12)
    assert r.recall_at_k == pytest.approx({1: 0.0, 3: 0.5, 4: 1.0})


def test_map_is_the_same_for_every_row_order():
    """Breaking ties by row index gave 10 different mAPs over these 120 orders (0.31 to 0.52)."""
    got = set()
    for perm in itertools.permutations(range(len(LABELS))):
        perm = list(perm)
        r = leave_one_out_retrieval(EMB[perm], LABELS[perm], ks=(1, 3, 4))
        got.add((round(r.mAP, 12), round(r.mAP_at_k, 12),
                 tuple(round(v, 12) for v in r.recall_at_k.values())))
    assert got == {(round(MAP, 12), round(MAP, 12), (0.0, 0.5, 1.0))}


def test_evaluator_map_does_not_depend_on_label_names_or_arrival_order():
    """The Evaluator's combiner sorts rows by (label, embedding) before scoring, so with an
    index tie-break the label that sorted first won every tie: renaming a <-> b changed the
    Evaluator's mAP (0.521 -> 0.396 here)."""
    import json

    from tensorflow_model_analysis.metrics import metric_specs, metric_types
    from tensorflow_model_analysis.proto import config_pb2

    from components.retrieval import tfma_metric

    metric = config_pb2.MetricConfig(class_name="RetrievalMetrics", module=tfma_metric.METRIC_MODULE,
                                     config=json.dumps({}))
    cfg = config_pb2.EvalConfig(model_specs=[config_pb2.ModelSpec()],
                                metrics_specs=[config_pb2.MetricsSpec(metrics=[metric])])
    (computation,) = metric_specs.to_computations(list(cfg.metrics_specs), eval_config=cfg)

    def evaluator_map(rows, labels):
        combiner = computation.combiner
        acc = combiner.create_accumulator()
        for e, label in zip(rows, labels):
            acc = combiner.add_input(acc, metric_types.StandardMetricInputs(
                labels=None, predictions=np.asarray(e, np.float32),
                features={"label": np.asarray([label.encode()], dtype=object)}))
        out = combiner.extract_output(combiner.merge_accumulators([acc]))
        return next(v for k, v in out.items() if k.name == tfma_metric.MAP_NAME)

    renamed = {"a": "b", "b": "a", "c": "c"}
    assert evaluator_map(EMB, LABELS) == pytest.approx(MAP, abs=1e-12)
    assert evaluator_map(EMB, [renamed[x] for x in LABELS]) == pytest.approx(MAP, abs=1e-12)
    assert evaluator_map(EMB[::-1], LABELS[::-1]) == pytest.approx(MAP, abs=1e-12)


@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_many_ties_match_brute_force_in_any_order(block_size):
    """Few distinct exact scores, small classes (comparison path) and a class of 30 (sort path)."""
    rng = np.random.default_rng(11)
    emb = rng.integers(-1, 2, size=(80, 3)).astype(np.float32)
    labels = np.concatenate([rng.integers(0, 6, size=50), np.full(30, 6)])
    assert 30 - 1 > protocols._COMPARE_MAX
    expected = _pessimistic_map(emb, labels)
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(labels))
        got = leave_one_out_retrieval(emb[perm], labels[perm], block_size=block_size).mAP
        assert got == pytest.approx(expected, abs=1e-12)
