"""Scoring a model on a standard retrieval benchmark: embed a test set, rank, apply the protocol.

Only glue lives here: the test set comes from ``datasets``, the embeddings from an embedder
(``embedder.Embedder``), the rankings by dot product, and the numbers from ``protocols`` -- the
project's one implementation of each metric. With ``qe > 0`` every protocol ranks with
α-weighted query expansion (``expansion.expand_queries`` over the embedded database; a query
that is itself a database image, as in UKBench, never counts its own entry as a neighbour).

Images that cannot be read or decoded are reported and skipped. A skipped DATABASE image is
ranked last for every query (it can never be retrieved, so the score is a lower bound of the
full set's). A skipped QUERY has no defined ranking: GLDv2 scores it 0 by its own definition
(a query without predictions), while the revisited and UKBench protocols have no such rule,
so evaluation stops (EvaluationError) rather than return a number that is not the benchmark's.
"""
from __future__ import annotations

import numpy as np


class EvaluationError(RuntimeError):
    """The benchmark's number is undefined for this run (e.g. a query could not be embedded)."""


PROTOCOL_CHOICES = ("roxford5k", "rparis6k", "gldv2", "ukbench")
KAPPAS = (1, 5, 10)
GLDV2_K = 100
UKBENCH_TOP = 4


def _full_matrix(result, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings laid out by input position (zeros for failures) and the 'ok' mask."""
    full = np.zeros((n, dim), np.float32)
    ok = np.zeros(n, bool)
    full[result.positions] = result.embeddings
    ok[result.positions] = True
    return full, ok


def revisited_rankings(query_emb: np.ndarray, db_emb: np.ndarray, db_ok: np.ndarray) -> np.ndarray:
    """Full database rankings ``[n_queries, n_db]``, best first; failed database images last.

    A stable argsort: equal scores keep database order, as with the exact gallery search.
    """
    scores = query_emb @ db_emb.T
    scores[:, ~db_ok] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")


def expand(queries: np.ndarray, database: np.ndarray, qe: int, qe_alpha: float, exclude=None) -> np.ndarray:
    """αQE of ``queries`` [n, D] over ``database`` [N, D] with exact search (``queries`` itself
    when qe == 0); ``exclude``: each query's own database row, or None."""
    from components.retrieval import index as index_lib
    from components.retrieval.expansion import expand_queries

    db = np.ascontiguousarray(database, dtype=np.float32)
    return expand_queries(queries, lambda q, n: index_lib.exact_search(q, db, n), lambda rows: db[rows],
                          qe, qe_alpha, exclude)


def evaluate_set(ds, embedder, batch_size: int = 32, progress=None, report_failure=None,
                 qe: int = 0, qe_alpha: float = 3.0) -> dict:
    """Embeds a :class:`~components.retrieval.datasets.RetrievalSet` and scores it.

    Args:
      ds: the test set.
      embedder: has ``embed_files(paths, ids, boxes=None, batch_size, progress, desc)``.
      batch_size: images per model call.
      progress: optional progress-bar factory passed to the embedder.
      report_failure: optional callback(failure) for each image that could not be embedded,
        called before any verdict so an error below can point at them.
      qe, qe_alpha: α-weighted query expansion (top ``qe`` database images merged with weights
        similarity ** qe_alpha); qe = 0 (the default) ranks with the plain embeddings.
    Returns:
      A JSON-ready dict: protocol, counts, ``failures`` and ``results`` (the protocol's numbers
      as fractions, exactly as ``protocols`` returns them).
    Raises:
      EvaluationError: a query failed under a protocol that cannot score that, or nothing in
        the database could be embedded.
    """
    from components.retrieval import index as index_lib
    from components.retrieval import protocols
    from components.retrieval.expansion import check_settings

    qe, qe_alpha = check_settings(qe, qe_alpha)
    db = embedder.embed_files(ds.db_paths, ds.db_ids, batch_size=batch_size, progress=progress,
                              desc=f"{ds.name} database")
    if not len(db.ids):
        raise EvaluationError("no database image could be embedded")
    dim = db.embeddings.shape[1]
    if ds.queries_are_database:
        q = db
    else:  # revisited queries are cropped to their box (query_boxes); others are whole
        q = embedder.embed_files(ds.query_paths, ds.query_ids, boxes=ds.query_boxes,
                                 batch_size=batch_size, progress=progress,
                                 desc=f"{ds.name} queries")
    failures = list(db.failures) + ([] if ds.queries_are_database else list(q.failures))
    for f in failures:  # reported before any verdict, so an abort below can point at them
        if report_failure is not None:
            report_failure(f)
    out = {"protocol": ds.name, "data": ds.root, "model": embedder.model_dir,
           "n_database": len(ds.db_ids), "n_queries": len(ds.query_ids),
           "n_failed": len(failures),
           "failures": [{"id": f.image_id, "path": f.path, "reason": f.reason} for f in failures]}
    if qe:
        out["query_expansion"] = {"k": qe, "alpha": qe_alpha}
    failed_queries = len(ds.query_ids) - len(q.ids)

    if ds.gnd is not None:
        if failed_queries:
            raise EvaluationError(
                f"{failed_queries} queries could not be embedded; revisited mAP is undefined "
                "without them (see the report above)")
        db_full, db_ok = _full_matrix(db, len(ds.db_ids), dim)
        q_full, _ = _full_matrix(q, len(ds.query_ids), dim)
        q_full = expand(q_full, db.embeddings, qe, qe_alpha)  # failed database images are no neighbours
        ranks = revisited_rankings(q_full, db_full, db_ok)
        out["results"] = {p: protocols.revisited_map(ranks, ds.gnd, p, KAPPAS).to_dict()
                          for p in protocols.PROTOCOLS}
    elif ds.solution is not None:
        # Failed index images are simply absent from the search; failed queries get no
        # predictions, which the GLDv2 metric scores as 0.
        _, top = index_lib.exact_search(expand(q.embeddings, db.embeddings, qe, qe_alpha), db.embeddings, GLDV2_K)
        predictions = {qid: [db.ids[j] for j in row] for qid, row in zip(q.ids, top)}
        out["results"] = {f"mAP@{GLDV2_K}": protocols.gldv2_map_at_k(
            ds.solution, predictions, GLDV2_K), "n_queries_failed": failed_queries}
    elif ds.groups is not None:
        if failures:
            raise EvaluationError(
                f"{len(failures)} UKBench images could not be embedded; every image is a "
                "query, so the N-S score is undefined without them (see the report above)")
        # Every query is a database image: its own entry is no neighbour of its expansion, but
        # it is still ranked (and counts), as the protocol has it.
        queries = expand(db.embeddings, db.embeddings, qe, qe_alpha, exclude=np.arange(len(db.ids)))
        _, top = index_lib.exact_search(queries, db.embeddings, UKBENCH_TOP)
        out["results"] = {"ns_score": protocols.ukbench_ns_score(top, ds.groups, top=UKBENCH_TOP)}
    else:
        raise ValueError(f"{ds.name}: the test set carries no ground truth")
    return out
