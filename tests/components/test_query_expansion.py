"""αQE and DBA (components.retrieval.expansion) against a dense numpy reference of the formulas.

The reference, :func:`dense`, is written from the definition with nothing of the library: a
float64 score matrix, a full stable sort, the K best (own row left out where asked), weights
max(s, 0) ** alpha, the query's own weight 1, normalised. Every comparison is to 1e-6.
"""
import json

import numpy as np
import pytest

from components.retrieval import evaluation, expansion
from components.retrieval.index import GalleryIndex, exact_search
from components.retrieval.protocols import leave_one_out_retrieval
from conftest import load_fixture

TOL = 1e-6


def _unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


dense = load_fixture("vectors").dense_expansion


def _exact(db):
    return (lambda q, n: exact_search(q, db, n)), (lambda rows: db[rows])


@pytest.mark.parametrize("k,alpha", [(1, 3.0), (3, 3.0), (5, 1.0), (10, 0.0), (11, 3.0)])
def test_query_expansion_equals_the_dense_formula(k, alpha):
    """Fails on a wrong weight (exponent, clamp of negative similarities, the query's own weight
    1), a missing normalisation or the wrong neighbours. 12 gallery vectors in 16-d: with K up
    to 11 many merged similarities are negative, so their weight 0 is exercised (alpha 0 too:
    a negative similarity still weighs 0, not 0 ** 0 = 1)."""
    rng = np.random.default_rng(0)
    db, q = _unit(rng, 12), _unit(rng, 7)
    search, fetch = _exact(db)
    got = expansion.expand_queries(q, search, fetch, k, alpha)
    np.testing.assert_allclose(got, dense(q, db, k, alpha), atol=TOL, rtol=0)
    assert np.any(np.sort(q @ db.T, axis=1)[:, ::-1][:, :k] < 0) == (k >= 10)  # negatives were merged


def test_k_zero_is_todays_ranking_bit_for_bit():
    """Fails if K = 0 touches the vectors at all (even a re-normalisation changes last bits)."""
    rng = np.random.default_rng(1)
    db, q = _unit(rng, 500), _unit(rng, 20)
    search, fetch = _exact(db)
    plain = exact_search(q, db, 10)
    for got in (expansion.expanded_search(q, search, fetch, 10, qe=0),
                exact_search(evaluation.expand(q, db, 0, 3.0), db, 10)):
        np.testing.assert_array_equal(got[0], plain[0])
        np.testing.assert_array_equal(got[1], plain[1])
    assert expansion.expand_queries(q, search, fetch, 0) is q and expansion.augment(db, 0) is db
    labels = np.arange(500) % 25
    assert leave_one_out_retrieval(db, labels, queries=db) == leave_one_out_retrieval(db, labels)


def test_expanded_search_is_a_second_search_of_the_expanded_query():
    """Fails if the second search is skipped or uses the raw query."""
    rng = np.random.default_rng(2)
    db, q = _unit(rng, 200), _unit(rng, 5)
    search, fetch = _exact(db)
    got_s, got_i = expansion.expanded_search(q, search, fetch, 8, qe=4, qe_alpha=3.0)
    want = np.asarray(dense(q, db, 4, 3.0), np.float64) @ db.T.astype(np.float64)
    np.testing.assert_array_equal(got_i[:, 0], np.argmax(want, axis=1))
    np.testing.assert_allclose(got_s, -np.sort(-want, axis=1)[:, :8], atol=TOL)


def test_leave_one_out_excludes_the_query_own_entry_with_qe_on():
    """Fails if a vector's own row is merged into its expansion (it would count twice) or if it
    is then retrieved. The reference with the row included differs by far more than TOL."""
    rng = np.random.default_rng(3)
    x = load_fixture("vectors").clustered_unit_vectors(300, 16, clusters=30, spread=1.0, seed=3)
    search, fetch = _exact(x)
    own = np.arange(len(x))
    got = expansion.expand_queries(x, search, fetch, 3, 3.0, exclude=own, block_rows=64)
    np.testing.assert_allclose(got, dense(x, x, 3, 3.0, exclude=own), atol=TOL, rtol=0)
    assert np.abs(dense(x, x, 3, 3.0) - dense(x, x, 3, 3.0, exclude=own)).max() > 0.05
    # The protocol with expanded queries still never retrieves a query's own row: its mAP is
    # the dense one with the own row dropped from every ranking.
    labels = rng.integers(0, 30, len(x))
    res = leave_one_out_retrieval(x, labels, ks=(1,), queries=got, block_size=50)
    scores = dense(x, x, 3, 3.0, exclude=own) @ x.astype(np.float64).T
    aps = []
    for q in range(len(x)):
        order = [j for j in np.argsort(-scores[q], kind="stable") if j != q]
        hits = np.flatnonzero(labels[order] == labels[q])
        if hits.size:
            aps.append(np.mean(np.arange(1, hits.size + 1) / (hits + 1.0)))
    assert res.n_evaluated == len(aps) and abs(res.mAP - np.mean(aps)) < TOL


def test_dba_equals_the_dense_formula_and_k_zero_keeps_the_index(tmp_path):
    """Fails if DBA merges a vector with itself as a neighbour, uses already augmented vectors
    as neighbours (it must read the originals), or if K = 0 changes anything."""
    rng = np.random.default_rng(4)
    x = _unit(rng, 700)
    own = np.arange(len(x))
    np.testing.assert_allclose(expansion.augment(x, 5, 3.0, block_rows=100), dense(x, x, 5, 3.0, own),
                               atol=TOL, rtol=0)
    index = GalleryIndex([str(i) for i in range(len(x))], x, backend="exact")
    assert expansion.augment_index(index, 0) is index
    index.save(str(tmp_path / "plain"))
    assert json.loads((tmp_path / "plain" / "meta.json").read_text())["dba"] is None
    np.testing.assert_array_equal(GalleryIndex.load(str(tmp_path / "plain")).embeddings, x)


@pytest.mark.parametrize("backend", ["exact", "hnsw", "ivfpq"])
def test_dba_index_searches_like_exact_search_on_its_augmented_vectors(tmp_path, backend):
    """Each backend: the neighbours of DBA come from the index itself, the augmented vectors
    match the dense formula (exactly for exact/HNSW; IVF-PQ's neighbours are re-ranked exactly,
    so nearly all rows), the saved index records dba and searching it gives exact search's
    answer on the same augmented vectors. Fails if the faiss index is not rebuilt over the
    augmented vectors (it would still answer for the raw ones) or dba is lost on save/load."""
    vecs = load_fixture("vectors").clustered_unit_vectors(1500 + 50, 32, clusters=50, seed=5)
    gallery, queries = vecs[:1500], vecs[1500:]
    ids = [str(i) for i in range(len(gallery))]
    extra = {"nlist": 16, "pq_m": 8} if backend == "ivfpq" else {}
    index = expansion.augment_index(GalleryIndex(ids, gallery, backend=backend, **extra), 4, 3.0, block_rows=400)
    assert index.backend == backend and index.dba == {"k": 4, "alpha": 3.0}
    want_vectors = dense(gallery, gallery, 4, 3.0, exclude=np.arange(len(gallery)))
    close = np.all(np.abs(index.embeddings - want_vectors) <= TOL, axis=1)
    assert close.mean() >= (1.0 if backend != "ivfpq" else 0.98), close.mean()
    index.save(str(tmp_path / "idx"))
    back = GalleryIndex.load(str(tmp_path / "idx"))
    assert back.dba == {"k": 4, "alpha": 3.0} and back.backend == backend
    got_s, got_i = back.search(queries, 10)
    want_s, want_i = exact_search(queries, index.embeddings, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got_i, want_i)])
    assert recall >= (0.99 if backend != "ivfpq" else 0.9), recall
    # Scores are the exact inner products with the augmented vectors, whatever the backend.
    np.testing.assert_allclose(got_s, np.einsum("qd,qkd->qk", queries, index.embeddings[got_i]), atol=1e-5)
    if backend == "exact":
        np.testing.assert_array_equal(got_i, want_i)


def test_bad_settings_are_refused():
    """Fails if a negative K or alpha slips through (a negative alpha inverts the weights)."""
    x = _unit(np.random.default_rng(6), 5)
    for k, alpha in ((-1, 3.0), (2, -1.0), (2, float("nan")), (1.5, 3.0)):
        with pytest.raises(ValueError):
            expansion.augment(x, k, alpha)
    index = expansion.augment_index(GalleryIndex(list("abcde"), x), 1)
    with pytest.raises(ValueError, match="already augmented"):
        expansion.augment_index(index, 1)
