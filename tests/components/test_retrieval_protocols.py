"""Tests of components.retrieval.protocols: golden numbers, hand-computed cases, brute force."""
import json
import math
import os
import pathlib
import tracemalloc

import numpy as np
import pytest

from components.retrieval import protocols
from components.retrieval.protocols import (PROTOCOLS, gldv2_map_at_k, leave_one_out_retrieval,
                                            revisited_ap, revisited_map, ukbench_ns_score)


# A copy of ../shared/testdata/retrieval_protocol_golden.json, kept in the repo so the tests
# see it inside the root filesystem too; test_golden_copy_matches_shared guards the copy.
GOLDEN_PATH = pathlib.Path(__file__).resolve().parents[1] / "testdata" / "retrieval_protocol_golden.json"
GOLDEN = json.loads(GOLDEN_PATH.read_text())
SHARED_GOLDEN = pathlib.Path(__file__).resolve().parents[3] / "shared" / "testdata" / GOLDEN_PATH.name
TOL = 1e-9


# ------------------------------------------------------------------ golden numbers -----------
def test_golden_copy_matches_shared():
    """Where the shared folder is visible (native runs, CI's clone beside it), the copy is exact."""
    if SHARED_GOLDEN.exists():
        assert json.loads(SHARED_GOLDEN.read_text()) == GOLDEN
    assert len(GOLDEN["revisited"]) == 3 and len(GOLDEN["gldv2"]) == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", range(3))
def test_revisited_golden(case, protocol):
    data = GOLDEN["revisited"][case]
    expected = data["expected"][protocol]
    result = revisited_map(data["ranks_query_by_db"], data["gnd"], protocol, data["kappas"])
    assert abs(result.mAP - expected["mAP"]) < TOL
    assert len(result.mP_at_kappas) == len(data["kappas"]) == len(expected["mP_at_kappas"])
    for got, want in zip(result.mP_at_kappas, expected["mP_at_kappas"]):
        assert abs(got - want) < TOL
    assert len(result.AP_per_query) == len(expected["AP_per_query"])
    for q, (got, want) in enumerate(zip(result.AP_per_query, expected["AP_per_query"])):
        if want is None:
            assert got is None, q
        else:
            assert got is not None and abs(got - want) < TOL, q
            ok, junk = protocols._ok_and_junk(data["gnd"][q], protocol)
            assert abs(revisited_ap(data["ranks_query_by_db"][q], ok, junk) - want) < TOL
    assert result.n_evaluated == sum(v is not None for v in expected["AP_per_query"])


@pytest.mark.parametrize("case", range(3))
def test_gldv2_golden(case):
    data = GOLDEN["gldv2"][case]
    got = gldv2_map_at_k(data["solution"], data["predictions"], data["max_predictions"])
    assert abs(got - data["expected_mAP_at_100"]) < TOL


# ------------------------------------------------------------------ revisited, by hand --------
def test_revisited_ap_junk_before_positives():
    # ranking 10..15; positives 11 (pos 1) and 14 (pos 4); junk 10 (pos 0) and 13 (pos 3).
    # Adjusted: 11 -> 1-1 = 0, 14 -> 4-2 = 2.
    # j=0, r=0: p0=1, p1=1 -> 1/2 ; j=1, r=2: p0=1/2, p1=2/3 -> (7/6)/2/2 = 7/24. AP = 19/24.
    assert revisited_ap([10, 11, 12, 13, 14, 15], [11, 14], [10, 13]) == pytest.approx(19 / 24)
    # Without junk removal it would be: j=0,r=1: (0+1/2)/4 = 1/8; j=1,r=4: (1/4+2/5)/4 = 13/80.
    assert revisited_ap([10, 11, 12, 13, 14, 15], [11, 14], []) == pytest.approx(1 / 8 + 13 / 80)


def test_revisited_ap_junk_after_positives_is_ignored():
    # Positives at 0 and 2, junk only after them: AP = (1+1)/2/2 + (1/2+2/3)/2/2 = 19/24.
    assert revisited_ap([11, 12, 14, 10, 13], [11, 14], [10, 13]) == pytest.approx(19 / 24)
    assert revisited_ap([11, 12, 14, 10, 13], [11, 14], []) == pytest.approx(19 / 24)


def test_revisited_map_hand_case_with_excluded_query():
    # database of 6 images, 3 queries
    ranks = np.array([[0, 1, 2, 3, 4, 5],      # q0
                      [5, 4, 3, 2, 1, 0],      # q1
                      [2, 0, 1, 3, 4, 5]])     # q2
    gnd = [{"easy": [1], "hard": [3], "junk": [0]},
           {"easy": [5], "hard": [], "junk": [4]},
           {"easy": [], "hard": [], "junk": [2]}]
    r = revisited_map(ranks, gnd, "medium", kappas=(1, 5))
    # q0: ok {1,3}, junk {0}: positions 1,3 -> 0,2 -> AP 19/24; 1-based [1,3]:
    #     P@1 = 1/1, P@5: kq=min(3,5)=3 -> 2/3.
    # q1: ok {5} at position 0 -> AP 1; P@1 = 1, P@5: kq=min(1,5)=1 -> 1.
    # q2: no positives -> None, excluded from both means.
    assert r.AP_per_query[0] == pytest.approx(19 / 24)
    assert r.AP_per_query[1] == pytest.approx(1.0)
    assert r.AP_per_query[2] is None
    assert r.n_evaluated == 2
    assert r.mAP == pytest.approx((19 / 24 + 1) / 2)
    assert r.mP_at_kappas == pytest.approx([1.0, (2 / 3 + 1) / 2])
    # hard: ok q0 = {3}, junk {0,1}: position 3 -> 1 -> AP = (1/1... j=0,r=1: p0=0, p1=1/2)/2
    #       = 1/4 ; q1 and q2 have no hard positives -> only q0 counts.
    h = revisited_map(ranks, gnd, "hard")
    assert h.AP_per_query[0] == pytest.approx(0.25)
    assert h.AP_per_query[1:] == [None, None]
    assert h.mAP == pytest.approx(0.25)
    # P@1: kq = min(2, 1) = 1 -> 0 ; P@5, P@10: kq = 2 -> 1/2
    assert h.mP_at_kappas == pytest.approx([0.0, 0.5, 0.5])
    # easy: q0 ok {1}, junk {0,3}: 1 -> 0 -> AP 1; q1 ok {5} AP 1
    assert revisited_map(ranks, gnd, "easy").mAP == pytest.approx(1.0)


def test_revisited_map_rejects_db_by_query_layout_and_bad_protocol():
    ranks = np.arange(12).reshape(4, 3) % 3        # 4 rows for 3 queries
    gnd = [{"easy": [0], "hard": [], "junk": []}] * 3
    with pytest.raises(ValueError, match="transpose"):
        revisited_map(ranks, gnd, "medium")
    with pytest.raises(ValueError):
        revisited_map(ranks[:3], gnd, "difficult")


# ------------------------------------------------------------------ GLDv2, by hand ------------
def test_gldv2_duplicates_missing_query_and_mean():
    solution = {"a": ["x", "y"], "b": ["z"], "c": ["w"]}
    predictions = {"a": ["x", "x", "q", "y"], "b": ["q", "z"]}       # "c" missing
    # a: x at position 1 -> 1/1; the second x is skipped but keeps its slot; y at position 4
    #    -> 2/4. AP = (1 + 1/2) / min(2, 100) = 3/4.   (compacting duplicates would give 5/6)
    # b: z at position 2 -> 1/2, AP = 1/2.   c: 0.   mean over 3 queries = 1.25 / 3.
    assert gldv2_map_at_k(solution, predictions) == pytest.approx(1.25 / 3)


def test_gldv2_duplicate_of_relevant_item_counts_once():
    # x at 1 -> 1/1, the repeated x is not a second hit: AP = 1 / min(2, 100) = 1/2
    assert gldv2_map_at_k({"a": ["x", "y"]}, {"a": ["x", "x"]}) == pytest.approx(0.5)


def test_gldv2_duplicates_consume_slots_within_k():
    # k=3 reads q, x, x: x at position 2 -> 1/2 ; y (position 4) is past the cut-off.
    # AP = (1/2) / min(2, 3) = 1/4
    got = gldv2_map_at_k({"a": ["x", "y"]}, {"a": ["q", "x", "x", "y"]}, k=3)
    assert got == pytest.approx(0.25)


def test_gldv2_normalises_by_min_m_and_k():
    # 3 relevant, k=2, both slots hit: (1/1 + 2/2) / min(3, 2) = 1
    assert gldv2_map_at_k({"a": ["r1", "r2", "r3"]}, {"a": ["r1", "r2", "r3"]}, k=2) == 1.0
    # k=100: (1 + 1 + 1) / 3 = 1 ; only r2 at position 2: (1/2)/3
    assert gldv2_map_at_k({"a": ["r1", "r2", "r3"]}, {"a": ["n", "r2"]}) == pytest.approx(1 / 6)


def test_gldv2_rejects_unknown_queries():
    with pytest.raises(ValueError):
        gldv2_map_at_k({"a": ["x"]}, {"b": ["x"]})


# ------------------------------------------------------------------ UKBench -------------------
def test_ukbench_perfect_and_hand_case():
    groups = np.arange(8) // 4                          # two objects of 4 images
    perfect = np.array([[q] + [j for j in range(8) if j // 4 == q // 4 and j != q]
                        + [j for j in range(8) if j // 4 != q // 4] for q in range(8)])
    assert ukbench_ns_score(perfect, groups) == 4.0
    # group hits in the top 4 per query: 4, 3, 2, 1, 4, 3, 2, 1 -> 20 / 8 = 2.5
    ranks = np.array([[0, 1, 2, 3, 4, 5, 6, 7],   # 4
                      [1, 0, 2, 4, 3, 5, 6, 7],   # 3
                      [2, 0, 4, 5, 1, 3, 6, 7],   # 2
                      [3, 4, 5, 6, 0, 1, 2, 7],   # 1
                      [4, 5, 6, 7, 0, 1, 2, 3],   # 4
                      [5, 4, 6, 0, 7, 1, 2, 3],   # 3
                      [6, 7, 0, 1, 4, 5, 2, 3],   # 2
                      [0, 1, 7, 2, 3, 4, 5, 6]])  # 1 (query 7 not even first)
    assert ukbench_ns_score(ranks, groups) == pytest.approx(2.5)
    # explicit query groups (queries distinct from the database): [4, 3] -> 3.5
    assert ukbench_ns_score(ranks[:2], groups, query_groups=[0, 0]) == pytest.approx(3.5)


# ------------------------------------------------------------------ leave-one-out -------------
def _brute_force(emb, labels, ks, map_at):
    """Naive reference: full N x N scores, explicit stable sort on -score, textbook formulas."""
    emb = np.asarray(emb, dtype=np.float64)
    labels = np.asarray(labels)
    scores = emb @ emb.T
    n = len(labels)
    aps, aps_k, recalls = [], [], {k: [] for k in ks}
    for q in range(n):
        others = [j for j in range(n) if j != q]
        # pessimistic ties: an other-label item with an equal score ranks first
        order = sorted(others, key=lambda j: (-scores[q, j], labels[j] == labels[q]))
        rel = [labels[j] == labels[q] for j in order]
        m = sum(rel)
        if m == 0:
            continue
        hits, precisions = 0, []
        for i, is_rel in enumerate(rel):
            if is_rel:
                hits += 1
                precisions.append(hits / (i + 1))
        aps.append(sum(precisions) / m)
        hits, total = 0, 0.0
        for i, is_rel in enumerate(rel[:map_at]):
            if is_rel:
                hits += 1
                total += hits / (i + 1)
        aps_k.append(total / min(m, map_at))
        for k in ks:
            recalls[k].append(any(rel[:k]))
    return (float(np.mean(aps)), float(np.mean(aps_k)),
            {k: float(np.mean(v)) for k, v in recalls.items()}, len(aps))


def _assert_matches(result, reference):
    m_ap, m_ap_k, recalls, n_eval = reference
    assert result.n_evaluated == n_eval
    assert abs(result.mAP - m_ap) < 1e-12
    assert abs(result.mAP_at_k - m_ap_k) < 1e-12
    assert result.recall_at_k.keys() == recalls.keys()
    for k in recalls:
        assert abs(result.recall_at_k[k] - recalls[k]) < 1e-12


def test_leave_one_out_ties_by_hand():
    # integer embeddings: every score exact. labels 0,1,0,1 plus a singleton (label 2).
    emb = [[1, 0], [1, 0], [1, 0], [0, 1], [0, 0]]
    labels = [0, 1, 0, 1, 2]
    # Pessimistic ties: an other-label item with the same score is ranked before a same-label one.
    # q0: scores 1:1, 2:1, 3:0, 4:0 -> relevant 2 tied with 1: after it, rank 2 -> AP 1/2
    # q1: 0:1, 2:1, 3:0, 4:0 -> relevant 3 tied with 4: after 0, 2 and 4, rank 4 -> AP 1/4
    # q2: 0:1, 1:1 -> relevant 0 tied with 1: rank 2 -> AP 1/2
    # q3: all scores 0 -> relevant 1 after 0, 2 and 4: rank 4 -> AP 1/4
    # q4: singleton -> excluded.       mAP = (1/2 + 1/4 + 1/2 + 1/4) / 4 = 3/8
    r = leave_one_out_retrieval(emb, labels, ks=(1, 2, 3), map_at=100, block_size=2)
    assert r.n_queries == 5 and r.n_evaluated == 4
    assert r.mAP == pytest.approx(3 / 8)
    assert r.mAP_at_k == pytest.approx(3 / 8)            # m_q = 1 <= 100: same as full AP
    # no hit at rank 1; top-2 for q0 and q2; top-3 the same
    assert r.recall_at_k == pytest.approx({1: 0.0, 2: 0.5, 3: 0.5})
    # AP@1: no query has its hit at rank 1
    assert leave_one_out_retrieval(emb, labels, map_at=1).mAP_at_k == pytest.approx(0.0)


@pytest.mark.parametrize("block_size", [1, 7, 32, 50, 1000])
def test_leave_one_out_matches_brute_force_random(block_size):
    rng = np.random.default_rng(1234)
    n = 150
    emb = rng.standard_normal((n, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    # many small classes (comparison path), one class of 40 (> _COMPARE_MAX: sort path),
    # and a few singletons (excluded)
    labels = np.concatenate([np.repeat(np.arange(25), 4), np.full(40, 99), np.arange(200, 210)])
    labels = rng.permutation(labels)
    assert 40 - 1 > protocols._COMPARE_MAX
    ref = _brute_force(emb, labels, (1, 5, 10), 30)
    _assert_matches(leave_one_out_retrieval(emb, labels, ks=(1, 5, 10), map_at=30,
                                            block_size=block_size), ref)


@pytest.mark.parametrize("block_size", [3, 16, 64])
def test_leave_one_out_matches_brute_force_with_many_ties(block_size):
    rng = np.random.default_rng(7)
    n = 90
    emb = rng.integers(-1, 2, size=(n, 3)).astype(np.float32)   # few distinct, exact scores
    labels = np.concatenate([rng.integers(0, 6, size=60), np.full(30, 6)])
    ref = _brute_force(emb, labels, (1, 3, 10), 20)
    _assert_matches(leave_one_out_retrieval(emb, labels, ks=(1, 3, 10), map_at=20,
                                            block_size=block_size), ref)


def test_leave_one_out_memory_is_blocked():
    rng = np.random.default_rng(0)
    n = 2000
    emb = rng.standard_normal((n, 4))
    labels = np.arange(n) // 5
    tracemalloc.start()
    try:
        leave_one_out_retrieval(emb, labels, block_size=64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * n * 8 / 8          # an N x N float64 matrix would be 32 MB


def test_leave_one_out_all_singletons_and_bad_input():
    r = leave_one_out_retrieval(np.eye(3), [0, 1, 2])
    assert r.n_evaluated == 0 and math.isnan(r.mAP)
    with pytest.raises(ValueError):
        leave_one_out_retrieval(np.eye(3), [0, 1])
    with pytest.raises(ValueError):
        leave_one_out_retrieval(np.array([[np.nan, 0.0], [1.0, 0.0]]), [0, 0])
