"""Image-retrieval evaluation protocols, pure numpy.

One implementation of each protocol:

* :func:`revisited_ap` / :func:`revisited_map` -- Revisited Oxford/Paris (revisitop semantics:
  junk removed from the ranking, trapezoid AP, mP@k).
* :func:`gldv2_map_at_k` -- Google Landmarks v2 retrieval mAP@100.
* :func:`ukbench_ns_score` -- UKBench N-S score.
* :func:`leave_one_out_retrieval` -- every embedding queries all the others (blocked, never N x N).

There is exactly one AP@k formula, :func:`_average_precision`; both :func:`gldv2_map_at_k` and
:func:`leave_one_out_retrieval` (full-ranking AP and AP@k) go through it. The trapezoid AP of
the revisited protocol is a different, protocol-specific estimator and lives in
:func:`revisited_ap`.

Rankings are always query-by-database: ``ranks[q]`` is the ranking of the database for query
``q``, best first (revisitop itself stores the transpose, ``[n_database, n_queries]``).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

PROTOCOLS = ("easy", "medium", "hard")

# Leave-one-out: a query with at most this many positives ranks them by direct comparisons
# against its score row (2*m passes of N, SIMD-fast); above it, by sorting the row once
# (N log N) and binary searches. Both give identical ranks; the switch is only about speed.
_COMPARE_MAX = 20


def _average_precision(hit_ranks, n_relevant: int, k: Optional[int] = None) -> float:
    """AP@k of one query from the 0-based ranks of its relevant hits -- the project's only AP@k.

    ``hit_ranks`` must be sorted ascending and distinct (one entry per relevant item found).
    AP@k = 1/min(m, k) * sum_{i : r_i < k} (i + 1) / (r_i + 1), i.e. precision at each relevant
    position within the first k, summed and normalised by min(m, k) with m = ``n_relevant``.
    ``k=None`` is the full, non-interpolated AP (normalised by m). m == 0 gives 0.0.
    """
    r = np.asarray(hit_ranks, dtype=np.float64)
    denom = n_relevant if k is None else min(n_relevant, k)
    if k is not None:
        r = r[r < k]
    if denom <= 0 or r.size == 0:
        return 0.0
    return float(np.sum(np.arange(1, r.size + 1) / (r + 1.0)) / denom)


# ----------------------------------------------------------------------------------------------
# Revisited Oxford / Paris
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RevisitedResult:
    """Revisited Oxford/Paris scores (fractions; x100 for the usual percentages).

    ``AP_per_query[q]`` is None for a query without positives under the protocol; such queries
    are left out of both ``mAP`` and ``mP_at_kappas`` (``n_evaluated`` counts the others).
    """

    protocol: str
    mAP: float
    mP_at_kappas: list
    kappas: tuple
    AP_per_query: list
    n_evaluated: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _ok_and_junk(entry: Mapping, protocol: str):
    """Positives and junk of one ground-truth entry ({'easy','hard','junk'}) under a protocol."""
    easy, hard, junk = (list(entry.get(key, ())) for key in ("easy", "hard", "junk"))
    if protocol == "easy":
        return easy, junk + hard
    if protocol == "medium":
        return easy + hard, junk
    if protocol == "hard":
        return hard, junk + easy
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def _positive_positions(ranking, ok, junk) -> np.ndarray:
    """0-based positions of the positives once junk is removed from the ranking (sorted).

    Each positive's position drops by the number of junk images ranked strictly before it.
    """
    ranking = np.asarray(ranking).ravel()
    is_ok = np.isin(ranking, np.asarray(list(ok), dtype=ranking.dtype))
    is_junk = np.isin(ranking, np.asarray(list(junk), dtype=ranking.dtype)).astype(np.int64)
    junk_before = np.cumsum(is_junk) - is_junk
    pos = np.flatnonzero(is_ok)
    return pos - junk_before[pos]


def _trapezoid_ap(positions: np.ndarray, n_positives: int) -> float:
    """revisitop's AP: trapezoid rule over recall steps of 1/n_positives."""
    if n_positives == 0 or positions.size == 0:
        return 0.0
    r = positions.astype(np.float64)
    j = np.arange(r.size, dtype=np.float64)
    p0 = np.where(r == 0, 1.0, j / np.maximum(r, 1.0))
    p1 = (j + 1.0) / (r + 1.0)
    return float(np.sum((p0 + p1) / 2.0) / n_positives)


def revisited_ap(ranks, ok, junk) -> float:
    """Revisited Oxford/Paris AP of one query.

    Args:
      ranks: the database ranking for this query (database indices, best first).
      ok: positive database indices; junk: indices to ignore (removed from the ranking).
    Returns:
      Trapezoid AP: for the j-th positive (0-based) at junk-adjusted position r,
      precision_0 = 1 if r == 0 else j / r, precision_1 = (j + 1) / (r + 1), and
      AP = sum_j (precision_0 + precision_1) / 2 / len(ok). 0.0 if ``ok`` is empty.
    """
    n_pos = len(np.unique(np.asarray(list(ok))))
    return _trapezoid_ap(_positive_positions(ranks, ok, junk), n_pos)


def revisited_map(ranks_query_by_db, gnd: Sequence[Mapping], protocol: str,
                  kappas: Sequence[int] = (1, 5, 10)) -> RevisitedResult:
    """mAP and mP@kappas of the Revisited Oxford/Paris protocol (revisitop ``compute_map``).

    Args:
      ranks_query_by_db: ``[n_queries, n_database]`` (or a list of rankings), row q = database
        ranking of query q, best first. Note: the transpose of revisitop's layout.
      gnd: per query a mapping with ``easy``, ``hard`` and ``junk`` database-index lists.
      protocol: ``easy`` (ok=easy, junk=junk+hard), ``medium`` (ok=easy+hard, junk=junk) or
        ``hard`` (ok=hard, junk=junk+easy).
      kappas: cut-offs for mP@k. With 1-based junk-adjusted positions, kq = min(max position, k)
        and P@k = #(positions <= kq) / kq (0 if no positive appears in the ranking at all).
    Returns:
      A :class:`RevisitedResult`; queries with no positives get AP None and are excluded from
      the means (mAP and mP are NaN if every query is excluded).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if len(ranks_query_by_db) != len(gnd):
        raise ValueError(
            f"{len(ranks_query_by_db)} rankings for {len(gnd)} queries; rankings must be "
            "query-by-database (the transpose of revisitop's [n_database, n_queries])")
    kappas = tuple(int(k) for k in kappas)
    aps, prs = [], []
    ap_per_query: list = []
    for ranking, entry in zip(ranks_query_by_db, gnd):
        ok, junk = _ok_and_junk(entry, protocol)
        n_pos = len(np.unique(np.asarray(ok)))
        if n_pos == 0:
            ap_per_query.append(None)
            continue
        positions = _positive_positions(ranking, ok, junk)
        ap = _trapezoid_ap(positions, n_pos)
        ap_per_query.append(ap)
        aps.append(ap)
        pos1 = positions + 1
        row = []
        for k in kappas:
            kq = min(int(pos1.max()), k) if pos1.size else k
            row.append(float(np.count_nonzero(pos1 <= kq)) / kq)
        prs.append(row)
    if aps:
        m_ap = float(np.mean(aps))
        m_p = [float(v) for v in np.mean(np.asarray(prs, dtype=np.float64), axis=0)]
    else:
        m_ap, m_p = float("nan"), [float("nan")] * len(kappas)
    return RevisitedResult(protocol=protocol, mAP=m_ap, mP_at_kappas=m_p, kappas=kappas,
                           AP_per_query=ap_per_query, n_evaluated=len(aps))


# ----------------------------------------------------------------------------------------------
# Google Landmarks v2 retrieval
# ----------------------------------------------------------------------------------------------
def gldv2_map_at_k(solution: Mapping[str, Sequence], predictions: Mapping[str, Sequence],
                   k: int = 100) -> float:
    """GLDv2 retrieval mAP@k (the challenge's reference metric; k=100 for the challenge).

    For each query q of ``solution`` with m_q relevant index ids, only the first k entries of
    its prediction list are read. A duplicate entry (an id already seen earlier in the list)
    is skipped: it is never relevant again, but it still occupies its position, so later hits
    keep their raw 1-based list position i in P_q(i). This is what the reference code does and
    it reproduces the golden numbers exactly (dropping duplicates before counting positions
    does not). AP@k = 1/min(m_q, k) * sum_i P_q(i) rel_q(i); a query absent from
    ``predictions`` scores 0; the mean is over all queries of ``solution``.

    Raises:
      ValueError: a predicted query is not in the solution, or a query has no relevant ids.
    """
    unknown = set(predictions) - set(solution)
    if unknown:
        raise ValueError(f"{len(unknown)} predicted queries are not in the solution, "
                         f"e.g. {sorted(map(str, unknown))[:3]}")
    if not solution:
        raise ValueError("empty solution")
    total = 0.0
    for query, relevant_list in solution.items():
        relevant = set(relevant_list)
        if not relevant:
            raise ValueError(f"query {query!r} has no relevant index images")
        seen, hit_ranks = set(), []
        for position, item in enumerate(list(predictions.get(query, ()))[:k]):
            if item in seen:
                continue
            seen.add(item)
            if item in relevant:
                hit_ranks.append(position)
        total += _average_precision(hit_ranks, len(relevant), k)
    return total / len(solution)


# ----------------------------------------------------------------------------------------------
# UKBench
# ----------------------------------------------------------------------------------------------
def ukbench_ns_score(ranks, groups, query_groups=None, top: int = 4) -> float:
    """UKBench N-S score: mean number of the query's group found in its top 4 (max 4.0).

    Args:
      ranks: ``[n_queries, n_database]`` query-by-database rankings (database indices, best
        first). As in the standard protocol the query itself is in the database and counts.
      groups: group id of every database image (UKBench: image i belongs to group i // 4).
      query_groups: group id of every query; default: the queries are the database images in
        order, so ``groups`` is used (then n_queries must equal n_database).
      top: the cut-off (4 for UKBench).
    """
    groups = np.asarray(groups).ravel()
    if query_groups is None:
        if len(ranks) != groups.size:
            raise ValueError("query_groups is required unless every database image is a query")
        query_groups = groups
    query_groups = np.asarray(query_groups).ravel()
    if len(ranks) != query_groups.size:
        raise ValueError(f"{len(ranks)} rankings for {query_groups.size} queries")
    if query_groups.size == 0:
        raise ValueError("no queries")
    head = np.stack([np.asarray(r).ravel()[:top] for r in ranks]).astype(np.int64)
    return float(np.mean(np.sum(groups[head] == query_groups[:, None], axis=1)))


# ----------------------------------------------------------------------------------------------
# Leave-one-out retrieval on an embedding set
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LeaveOneOutResult:
    """Leave-one-out scores over the ``n_evaluated`` queries that have a same-label item."""

    mAP: float
    mAP_at_k: float
    map_at: int
    recall_at_k: dict
    n_queries: int
    n_evaluated: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _hit_ranks(row: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """0-based ranks of a query's relevant items, with ties broken pessimistically.

    Convention ("pessimistic" ties): among items with exactly equal scores every non-relevant
    item is ranked before every relevant one; the order among tied relevant items does not
    matter (they are interchangeable for every metric here). The ranks therefore depend only
    on the scores and on which items are relevant, never on the order of the rows, and a tie
    can only lower a score, never raise it.

    Args:
      row: [N] scores of the query against every item (float). The query's own entry must
        already be -inf (it is then never ranked before a finite score).
      positives: [m] int indices into ``row`` of the relevant items (the query excluded),
        m >= 1.

    Returns:
      [m] int64, strictly increasing: the i-th entry (0-based) is the rank of the i-th best
      relevant item, i + #(non-relevant items with a score >= that item's score).
    """
    scores = np.sort(row[positives])[::-1]            # [m], best first
    m = scores.size
    if m <= _COMPARE_MAX:
        at_least = np.count_nonzero(row >= scores[:, None], axis=1)
    else:
        ordered = np.sort(row)
        at_least = row.size - np.searchsorted(ordered, scores, side="left")
    # relevant items scoring >= each score (ties with it included): m - #(relevant < score)
    relevant_at_least = m - np.searchsorted(scores[::-1], scores, side="left")
    return np.arange(m, dtype=np.int64) + (at_least - relevant_at_least).astype(np.int64)


def leave_one_out_retrieval(embeddings, labels, ks: Sequence[int] = (1, 5, 10),
                            map_at: int = 100, block_size: int = 1024,
                            queries=None) -> LeaveOneOutResult:
    """Every row queries all OTHER rows by dot product; relevant = same label.

    Metrics, over the queries that have at least one other item of their label (the others
    are excluded from every mean; ``n_evaluated`` counts the rest):

    * ``mAP``: full-ranking non-interpolated AP, 1/m_q * sum_i (i+1)/(r_i+1).
    * ``mAP_at_k``: AP@``map_at`` with the GLDv2 definition, normalised by min(m_q, map_at).
    * ``recall_at_k[k]``: fraction of queries with a relevant item among their top k.

    Both APs go through :func:`_average_precision` (the one AP@k formula).

    Ties are pessimistic (see :func:`_hit_ranks`): when a relevant and a non-relevant item
    have exactly the same score, the non-relevant one is ranked first. Every metric is then a
    function of the scores and labels alone: permuting the rows (with their labels) or
    renaming the labels does not change it. (Breaking ties by row index, as a stable sort
    does, made the result depend on the order the examples were stored or delivered in.)
    Near-ties are not ties: two scores that differ in the last bits rank by those bits, so
    embeddings computed by another path (another batch size, another signature) can still
    reorder items whose scores differ by about the float rounding of that path.

    Scores are computed in the embeddings' dtype (float32 stays float32; anything else
    becomes float64); for embeddings from any one block the product of that block against
    all rows is taken, so very close scores may round differently from an unblocked product.
    Pass L2-normalised embeddings for cosine similarity.

    Args:
      embeddings: [N, D] float, one row per item (any row order).
      labels: [N] labels (any comparable dtype); relevant = same label, the query excluded.
      ks: recall cut-offs; map_at: the AP@k cut-off; block_size: query rows scored at once.
      queries: optional [N, D], the vector row q queries with instead of row q itself (e.g.
        its query expansion, ``expansion.expand_queries``); row q is still never retrieved.

    Returns:
      A :class:`LeaveOneOutResult`: scalars ``mAP`` and ``mAP_at_k``, ``recall_at_k`` {k: float},
      ``n_queries`` = N and ``n_evaluated``; the means are NaN when no query has a same-label
      item.

    Cost: the block products are O(N^2 D) (BLAS). Ranking only needs the ranks of each query's
    m_q positives: for m_q <= 20 by direct comparisons against the score row, O(N m_q), else
    by sorting the row, O(N log N); all metrics follow from those ranks. Peak extra memory is
    O(block_size * N) for the score block (block_size * N * 4 bytes in float32, i.e. 205 MB for
    the default block and N = 50,000) plus O(N) bookkeeping; the N x N matrix is never formed.
    """
    x = np.asarray(embeddings)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    x = np.ascontiguousarray(x)
    labels = np.asarray(labels).ravel()
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    n = x.shape[0]
    if labels.size != n:
        raise ValueError(f"{labels.size} labels for {n} embeddings")
    qx = x if queries is None else np.ascontiguousarray(np.asarray(queries), dtype=x.dtype)
    if qx.shape != x.shape:
        raise ValueError(f"queries must be shaped like the embeddings {x.shape}, got {qx.shape}")
    if not (np.all(np.isfinite(x)) and (queries is None or np.all(np.isfinite(qx)))):
        raise ValueError("embeddings contain NaN or inf")
    if block_size < 1 or map_at < 1 or any(int(k) < 1 for k in ks):
        raise ValueError("block_size, map_at and ks must be positive")
    ks = tuple(int(k) for k in ks)

    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    members_sorted = np.argsort(inverse, kind="stable")  # grouped by label, ascending index
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    ap_full = np.full(n, np.nan)
    ap_k = np.full(n, np.nan)
    first_hit = np.full(n, -1, dtype=np.int64)
    # One score buffer reused by every block: peak memory is one block, never two.
    buffer = np.empty((min(block_size, n), n), dtype=x.dtype)
    for b0 in range(0, n, block_size):
        b1 = min(b0 + block_size, n)
        scores = np.matmul(qx[b0:b1], x.T, out=buffer[:b1 - b0])  # [b, N]: the only large array
        for q in range(b0, b1):
            c = inverse[q]
            m = int(counts[c]) - 1
            if m == 0:
                continue
            members = members_sorted[starts[c]:starts[c] + counts[c]]
            row = scores[q - b0]
            row[q] = -np.inf
            hits = _hit_ranks(row, members[members != q])
            ap_full[q] = _average_precision(hits, m)
            ap_k[q] = _average_precision(hits, m, map_at)
            first_hit[q] = hits[0]

    evaluated = first_hit >= 0
    n_eval = int(np.count_nonzero(evaluated))
    if n_eval == 0:
        nan = float("nan")
        return LeaveOneOutResult(nan, nan, map_at, {k: nan for k in ks}, n, 0)
    fh = first_hit[evaluated]
    return LeaveOneOutResult(
        mAP=float(np.mean(ap_full[evaluated])),
        mAP_at_k=float(np.mean(ap_k[evaluated])),
        map_at=map_at,
        recall_at_k={k: float(np.mean(fh < k)) for k in ks},
        n_queries=n,
        n_evaluated=n_eval,
    )
