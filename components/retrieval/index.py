"""A gallery index over L2-normalised embeddings: exact numpy search or faiss HNSW.

Scores are inner products, i.e. cosine similarities for the model's L2-normalised embeddings.
Two backends, same results up to the ANN's recall:

* ``exact``: blocked matrix products plus ``argpartition`` for the top k, O(N D) per query and
  never an N x N matrix. Best for small galleries and the reference for the ANN.
* ``hnsw``: faiss ``IndexHNSWFlat`` with the inner-product metric. It stores the full vectors,
  so returned scores are exact; only which neighbours are found is approximate.

``auto`` picks HNSW from ``AUTO_ANN_MIN`` gallery images when faiss imports, exact otherwise.

On disk (``save``/``load``) an index is a directory::

    ids.json         the gallery ids, in row order
    embeddings.npy   float32 [count, dim]
    faiss.index      the HNSW graph (hnsw backend only)
    meta.json        format, model, dim, count, backend, hnsw parameters, labels, paths

``meta.json`` is written last, so a directory with it is complete.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Optional, Sequence

import numpy as np

FORMAT, FORMAT_VERSION = "dolg-tfx-gallery-index", 1
BACKENDS = ("auto", "exact", "hnsw")
# Below this many images exact search takes well under a millisecond per query and is
# exact: an HNSW graph would only add build time and approximation.
AUTO_ANN_MIN = 20_000
# Exact search holds one [rows, N] float32 score block; rows shrink so that it stays under
# this many elements (256 MB), e.g. ~88 query rows at a time against GLDv2's 762k index.
_MAX_BLOCK_ELEMENTS = 64 * 1024 * 1024


def faiss_or_none():
    """The faiss module, or None when it is not installed (exact search then)."""
    try:
        import faiss  # noqa: PLC0415  (optional dependency; imported only where used)
    except ImportError:
        return None
    return faiss


def exact_search(queries: np.ndarray, database: np.ndarray, k: int, block_size: int = 1024):
    """Top-k database rows by inner product for each query, exactly.

    Ties are broken by the lower database index (a stable ranking), so results are
    deterministic. Peak extra memory is one ``[rows, N]`` score block, with rows at most
    ``block_size`` and small enough to keep the block under 256 MB.

    Returns:
      (scores, indices): ``[n_queries, min(k, N)]`` float32 and int64, best first.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    db = np.ascontiguousarray(database, dtype=np.float32)
    n = db.shape[0]
    k = min(int(k), n)
    out_s = np.zeros((q.shape[0], k), np.float32)
    out_i = np.zeros((q.shape[0], k), np.int64)
    if k <= 0:
        return out_s, out_i
    block_size = max(1, min(block_size, _MAX_BLOCK_ELEMENTS // n))
    for b0 in range(0, q.shape[0], block_size):
        scores = q[b0:b0 + block_size] @ db.T
        if k < n:  # argpartition: O(N) per row instead of a full O(N log N) sort
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            # The k-th best score may be tied with rows argpartition left out: take every row
            # scoring at least the k-th best so the lower-index tie-break sees all of them.
            kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
            for r in range(scores.shape[0]):
                cand = np.flatnonzero(scores[r] >= kth[r])
                order = np.lexsort((cand, -scores[r, cand]))[:k]
                out_i[b0 + r] = cand[order]
        else:
            out_i[b0:b0 + scores.shape[0]] = np.argsort(-scores, axis=1, kind="stable")
        out_s[b0:b0 + scores.shape[0]] = np.take_along_axis(
            scores, out_i[b0:b0 + scores.shape[0]], axis=1)
    return out_s, out_i


class GalleryIndex:
    """Gallery ids, embeddings and optional labels/paths, searchable by inner product."""

    def __init__(self, ids: Sequence[str], embeddings: np.ndarray,
                 labels: Optional[Sequence[str]] = None, paths: Optional[Sequence[str]] = None,
                 model: Optional[str] = None, backend: str = "auto", hnsw_m: int = 32,
                 ef_construction: int = 200, ef_search: int = 128, _faiss_index=None):
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be [N, D], got shape {emb.shape}")
        if len(ids) != emb.shape[0]:
            raise ValueError(f"{len(ids)} ids for {emb.shape[0]} embeddings")
        if len(set(ids)) != len(ids):
            raise ValueError("gallery ids must be unique")
        for name, seq in (("labels", labels), ("paths", paths)):
            if seq is not None and len(seq) != len(ids):
                raise ValueError(f"{len(seq)} {name} for {len(ids)} ids")
        if not np.all(np.isfinite(emb)):
            raise ValueError("embeddings contain NaN or inf")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.ids, self.embeddings = list(ids), emb
        self.labels = None if labels is None else [str(v) for v in labels]
        self.paths = None if paths is None else [str(v) for v in paths]
        self.model = model
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        faiss = faiss_or_none()
        if backend == "auto":
            backend = "hnsw" if faiss is not None and len(ids) >= AUTO_ANN_MIN else "exact"
        if backend == "hnsw" and faiss is None:
            raise ImportError("backend 'hnsw' needs faiss (pip install faiss-cpu)")
        self.backend = backend
        self._faiss = _faiss_index
        if backend == "hnsw" and self._faiss is None and len(ids):
            self._faiss = faiss.IndexHNSWFlat(self.dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self._faiss.hnsw.efConstruction = ef_construction
            self._faiss.add(emb)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int = 10, exact: bool = False):
        """Top-k gallery rows per query.

        Args:
          queries: ``[n, dim]`` (or one ``[dim]`` vector).
          exact: force exact search whatever the backend (e.g. to measure ANN recall).
        Returns:
          (scores, indices), ``[n, min(k, count)]``, best first.
        """
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dim {q.shape[1]}, the index has {self.dim}")
        k = min(int(k), len(self))
        if self.backend == "exact" or exact or k == 0:
            return exact_search(q, self.embeddings, k)
        # efSearch bounds the candidate list: it must be at least k to return k results.
        self._faiss.hnsw.efSearch = max(self.ef_search, k)
        scores, indices = self._faiss.search(np.ascontiguousarray(q), k)
        scores, indices = scores.astype(np.float32), indices.astype(np.int64)
        short = np.flatnonzero(np.any(indices < 0, axis=1))
        if short.size:  # HNSW found fewer than k (a disconnected graph): answer those exactly
            scores[short], indices[short] = exact_search(q[short], self.embeddings, k)
        return scores, indices

    def save(self, directory: str) -> None:
        """Writes the index directory (see the module docstring); meta.json last."""
        os.makedirs(directory, exist_ok=True)
        meta_path = os.path.join(directory, "meta.json")
        if os.path.exists(meta_path):
            os.remove(meta_path)  # the directory is incomplete until meta.json is back
        with open(os.path.join(directory, "ids.json"), "w", encoding="utf-8") as f:
            json.dump(self.ids, f)
        np.save(os.path.join(directory, "embeddings.npy"), self.embeddings)
        faiss_path = os.path.join(directory, "faiss.index")
        if self.backend == "hnsw" and self._faiss is not None:
            faiss_or_none().write_index(self._faiss, faiss_path)
        elif os.path.exists(faiss_path):
            os.remove(faiss_path)  # a stale graph from an earlier build must not be loaded
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.model,
                "dim": self.dim, "count": len(self), "backend": self.backend,
                "hnsw": {"m": self.hnsw_m, "ef_construction": self.ef_construction,
                         "ef_search": self.ef_search},
                "labels": self.labels, "paths": self.paths}
        with open(meta_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(meta, f)
        os.replace(meta_path + ".tmp", meta_path)

    @classmethod
    def load(cls, directory: str, backend: Optional[str] = None) -> "GalleryIndex":
        """Reads an index directory; ``backend='exact'`` ignores a saved HNSW graph.

        A saved HNSW index loads as exact search (with a warning) when faiss is missing.
        """
        meta_path = os.path.join(directory, "meta.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{directory}: no meta.json (not an index, or incomplete)")
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: not a {FORMAT} v{FORMAT_VERSION} index")
        with open(os.path.join(directory, "ids.json"), encoding="utf-8") as f:
            ids = json.load(f)
        emb = np.load(os.path.join(directory, "embeddings.npy"), allow_pickle=False)
        if emb.shape != (meta["count"], meta["dim"]) or len(ids) != meta["count"]:
            raise ValueError(f"{directory}: files disagree with meta.json "
                             f"({len(ids)} ids, embeddings {emb.shape}, meta count {meta['count']})")
        want = backend or meta["backend"]
        graph = None
        if want == "hnsw":
            faiss = faiss_or_none()
            faiss_path = os.path.join(directory, "faiss.index")
            if faiss is None:
                warnings.warn(f"{directory}: faiss is not installed; searching exactly")
                want = "exact"
            elif os.path.isfile(faiss_path):
                graph = faiss.read_index(faiss_path)
                if graph.ntotal != len(ids) or graph.d != meta["dim"]:
                    raise ValueError(f"{faiss_path}: {graph.ntotal} x {graph.d} vectors, "
                                     f"meta says {meta['count']} x {meta['dim']}")
        hnsw = meta.get("hnsw") or {}
        return cls(ids, emb, labels=meta.get("labels"), paths=meta.get("paths"),
                   model=meta.get("model"), backend=want, hnsw_m=hnsw.get("m", 32),
                   ef_construction=hnsw.get("ef_construction", 200),
                   ef_search=hnsw.get("ef_search", 128), _faiss_index=graph)
