"""α-weighted query expansion (αQE) and database-side augmentation (DBA): the one definition.

Both replace a vector by the L2-normalised, α-weighted sum of itself and its top-K neighbours
(Radenović, Tolias and Chum, "Fine-tuning CNN image retrieval with no human annotation",
TPAMI 2018; DBA after Arandjelović and Zisserman, CVPR 2012, in that paper's α-weighted form)::

    v' = normalise( v + sum_{j=1..K} w_j x_j ),   w_j = max(s_j, 0) ** alpha,   s_j = v . x_j

with x_1..x_K the K database vectors with the highest inner product s_j with v (best first,
ties to the lower row, as the index's search orders them) and the vector's own weight 1 (its
similarity to itself). A neighbour with a negative similarity counts 0, whatever alpha.

* αQE (:func:`expand_queries`): v is a query and the x_j are gallery vectors; the expanded
  query is then searched again (:func:`expanded_search`). The query's own gallery entry, when
  the caller knows it (leave-one-out, or a query image that is itself in the gallery), is not a
  neighbour: it would only count the query twice.
* DBA (:func:`augment`, :func:`augment_index`): every gallery vector is replaced by the same
  sum over its top-K OTHER gallery vectors, all computed from the original vectors; queries are
  then searched against the augmented vectors.

K = 0 returns the input unchanged, bit for bit (it is not even re-normalised). Neighbours come
from a ``search(vectors, n) -> (scores, rows)`` callable (exact blocked search, or a faiss
index's), so nothing here forms an N x N matrix; work is done in blocks of rows.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

DEFAULT_ALPHA = 3.0
BLOCK_ROWS = 4096  # vectors augmented at a time: block x (K+1) x D floats of neighbour vectors

Search = Callable[[np.ndarray, int], Tuple[np.ndarray, np.ndarray]]
Fetch = Callable[[np.ndarray], np.ndarray]


def check_settings(k: int, alpha: float) -> Tuple[int, float]:
    """(k, alpha) as int and float; raises ValueError for k < 0 or a negative/non-finite alpha."""
    if isinstance(k, bool) or int(k) != k or int(k) < 0:
        raise ValueError(f"the number of neighbours K must be an integer >= 0, got {k!r}")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    return int(k), float(alpha)


def weights(scores: np.ndarray, alpha: float) -> np.ndarray:
    """max(s, 0) ** alpha elementwise (float64); a non-positive similarity weighs 0."""
    s = np.asarray(scores, np.float64)
    return np.where(s > 0, np.power(np.maximum(s, 0.0), alpha), 0.0)


def weighted_sum(vectors: np.ndarray, neighbour_vectors: np.ndarray, neighbour_scores: np.ndarray,
                 alpha: float) -> np.ndarray:
    """normalise(v + sum_j max(s_j, 0)^alpha x_j) per row.

    Args:
      vectors: ``[n, D]`` the vectors v to expand.
      neighbour_vectors: ``[n, K, D]`` their neighbours x_j.
      neighbour_scores: ``[n, K]`` the similarities s_j = v . x_j (NaN or -inf: no neighbour).
    Returns:
      ``[n, D]`` float32, unit rows (a zero sum stays zero).
    """
    s = np.nan_to_num(np.asarray(neighbour_scores, np.float64), nan=-np.inf)
    total = np.asarray(vectors, np.float64) + np.einsum(
        "nk,nkd->nd", weights(s, alpha), np.asarray(neighbour_vectors, np.float64))
    norm = np.linalg.norm(total, axis=1, keepdims=True)
    return (total / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def neighbours(search: Search, vectors: np.ndarray, k: int, exclude: Optional[np.ndarray] = None):
    """Top-k (scores, rows) of each vector, without its own row ``exclude[i]`` (-1: none).

    With ``exclude`` it asks ``search`` for k + 1 and drops that row, or the last one when the
    search did not return it. Missing results (fewer than k database rows) have row -1 and
    score -inf.
    Returns:
      (scores ``[n, k]`` float32, rows ``[n, k]`` int64), best first.
    """
    n = vectors.shape[0]
    extra = 0 if exclude is None else 1
    scores, rows = search(vectors, k + extra)
    scores, rows = np.asarray(scores, np.float32), np.asarray(rows, np.int64)
    # The first k entries that are not the vector's own row, moved left; the rest absent.
    own = np.zeros(rows.shape, bool) if exclude is None else rows == np.asarray(exclude, np.int64).reshape(n, 1)
    keep = ~own & (rows >= 0) & (np.cumsum(~own, axis=1) <= k)
    r, c = np.nonzero(keep)
    out_s, out_r = np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
    to = (np.cumsum(keep, axis=1) - 1)[r, c]
    out_s[r, to], out_r[r, to] = scores[r, c], rows[r, c]
    return out_s, out_r


def expand_queries(queries: np.ndarray, search: Search, fetch: Fetch, k: int,
                   alpha: float = DEFAULT_ALPHA, exclude: Optional[np.ndarray] = None,
                   block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """αQE: each query becomes normalise(q + sum over its top-k database vectors of
    max(s, 0)^alpha x).

    Args:
      queries: ``[n, D]`` (float32 for the search).
      search: ``search(q [m, D], n) -> (scores [m, n], rows [m, n])``, best first (rows -1 when
        absent), e.g. ``GalleryIndex.search`` or ``index.exact_search`` over an array.
      fetch: ``fetch(rows [m, k]) -> [m, k, D]`` the database vectors of those rows.
      k: neighbours merged; 0 returns ``queries`` unchanged (the same array).
      alpha: the weight exponent.
      exclude: ``[n]`` the query's own database row to leave out (-1 for none), or None.
    Returns:
      ``[n, D]`` float32 unit vectors (``queries`` itself when k == 0).
    """
    k, alpha = check_settings(k, alpha)
    if k == 0:
        return queries
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    out = np.empty_like(q)
    for b0 in range(0, q.shape[0], block_rows):
        block = q[b0:b0 + block_rows]
        ex = None if exclude is None else np.asarray(exclude)[b0:b0 + block_rows]
        scores, rows = neighbours(search, block, k, ex)
        out[b0:b0 + len(block)] = weighted_sum(block, fetch(np.maximum(rows, 0)), scores, alpha)
    return out


def expanded_search(queries: np.ndarray, search: Search, fetch: Fetch, k: int, qe: int = 0,
                    qe_alpha: float = DEFAULT_ALPHA, exclude: Optional[np.ndarray] = None):
    """Top-k search with αQE: :func:`expand_queries` then ``search(expanded, k)`` again.

    ``qe = 0`` is one plain ``search(queries, k)``. Returns what ``search`` returns.
    """
    return search(expand_queries(queries, search, fetch, qe, qe_alpha, exclude), k)


def augment(database: np.ndarray, k: int, alpha: float = DEFAULT_ALPHA,
            search: Optional[Search] = None, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """DBA of an in-memory database: row i becomes normalise(x_i + sum over its top-k OTHER rows
    of max(s, 0)^alpha x_j), neighbours and sums from the original rows.

    Args:
      database: ``[N, D]``.
      search: neighbour search over ``database`` (default: exact blocked search).
    Returns:
      ``[N, D]`` float32 (``database`` itself when k == 0).
    """
    from components.retrieval.index import exact_search

    k, alpha = check_settings(k, alpha)
    if k == 0:
        return database
    db = np.ascontiguousarray(database, dtype=np.float32)
    search = search or (lambda q, n: exact_search(q, db, n))
    return expand_queries(db, search, lambda rows: db[rows], k, alpha,
                          exclude=np.arange(db.shape[0]), block_rows=block_rows)


def augment_index(index, k: int, alpha: float = DEFAULT_ALPHA, block_rows: int = BLOCK_ROWS):
    """DBA of a :class:`~components.retrieval.index.GalleryIndex`: a new index of the same
    backend and parameters over the augmented vectors, recording ``dba = {k, alpha}``.

    Neighbours come from the index itself (exact, HNSW or IVF-PQ search), a block of rows at a
    time; the augmented vectors are built shard by shard, so peak extra memory is the new
    vectors plus one block's neighbours (``block_rows x (k + 1) x D`` floats). k == 0 returns
    ``index`` unchanged.
    """
    from components.retrieval.index import GalleryIndex

    k, alpha = check_settings(k, alpha)
    if k == 0:
        return index
    if index.dba:
        raise ValueError(f"the index is already augmented ({index.dba}); build it from the raw vectors")
    shards = []
    for s, shard in enumerate(index.shards):
        start = int(index.starts[s])
        out = np.empty(shard.shape, np.float32)
        for b0 in range(0, shard.shape[0], block_rows):
            rows = np.arange(start + b0, start + min(b0 + block_rows, shard.shape[0]))
            out[b0:b0 + rows.size] = expand_queries(index.vectors(rows), index.search, index.vectors,
                                                    k, alpha, exclude=rows, block_rows=block_rows)
        shards.append(out)
    return GalleryIndex(index.ids, shards, labels=index.labels, paths=index.paths, model=index.model,
                        model_version=index.model_version, backend=index.backend,
                        dba={"k": k, "alpha": alpha}, **index.parameters())
