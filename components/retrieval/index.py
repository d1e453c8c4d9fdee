"""A gallery index over L2-normalised embeddings: exact search, faiss HNSW or faiss IVF-PQ.

Scores are inner products, i.e. cosine similarities for the model's L2-normalised embeddings.
Three backends; which one a size calls for is ``choose_backend``'s rule:

* ``exact``: blocked matrix products plus ``argpartition`` for the top k, O(N D) per query and
  never an N x N matrix. Below ``AUTO_ANN_MIN`` images, and the reference for the others.
* ``hnsw``: faiss ``IndexHNSWFlat`` (inner product). It stores the full vectors, so scores are
  exact; only which neighbours are found is approximate. Needs N x D x 4 bytes of memory.
* ``ivfpq``: faiss ``IndexIVFPQ``: an inverted file of product-quantised codes (``pq_m`` bytes
  a vector), for galleries whose vectors do not fit the memory budget. Its candidates are
  re-ranked with the exact vectors, read from the memory-mapped shards on disk, so returned
  scores are exact here too.

On disk (``save``/``load``) an index is a directory::

    ids.json                       the gallery ids, in row order
    embeddings-SSSSS-of-NNNNN.npy  float32 rows in shards of at most SHARD_ROWS, row order
    faiss.index                    the HNSW graph or the IVF-PQ codes (those backends only)
    meta.json                      format, model, model_version, dim, count, backend,
                                   parameters, shards, labels, paths, dba

``dba`` is null, or ``{"k": K, "alpha": A}`` when the stored vectors are database-side augmented
(``expansion.augment_index``): searches of such an index expand their queries the same way.

``meta.json`` is written last, so a directory with it is complete. ``load`` maps the shards
(numpy mmap): the HNSW and IVF-PQ backends never read all the vectors into memory.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from typing import List, Optional, Sequence

import numpy as np

FORMAT, FORMAT_VERSION = "dolg-tfx-gallery-index", 2
BACKENDS = ("auto", "exact", "hnsw", "ivfpq")
# Below this many images exact search takes well under a millisecond per query and is
# exact: an ANN structure would only add build time and approximation.
AUTO_ANN_MIN = 20_000
# The float32 vectors an in-memory backend (exact, HNSW) may hold; above it, IVF-PQ.
DEFAULT_MEMORY_BUDGET = 16 * 2**30
SHARD_ROWS = 100_000  # 200 MB shards at 512 dimensions
# IVF-PQ: candidates re-ranked exactly per result, and the probe count.
RERANK, NPROBE = 8, 32
HNSW_M, EF_CONSTRUCTION, EF_SEARCH = 32, 200, 128  # faiss HNSW's defaults here
# Exact search holds one [rows, N] float32 score block; rows shrink so that it stays under
# this many elements (256 MB), e.g. ~88 query rows at a time against GLDv2's 762k index.
_MAX_BLOCK_ELEMENTS = 64 * 1024 * 1024


def index_meta(model: Optional[str], model_version: Optional[int], dim: int, count: int, backend: str,
               shards: List[str], parameters: dict, dba: Optional[dict] = None) -> dict:
    """An index folder's meta.json fields but the labels and paths; ``parameters`` as
    ``GalleryIndex.parameters`` gives them."""
    p = parameters
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model, "model_version": model_version,
            "dim": dim, "count": count, "backend": backend, "shards": shards,
            "hnsw": {"m": p["hnsw_m"], "ef_construction": p["ef_construction"], "ef_search": p["ef_search"]},
            "ivfpq": {"nlist": p["nlist"], "m": p["pq_m"], "nbits": p["nbits"], "nprobe": p["nprobe"]},
            "dba": dba}


def default_parameters(count: int, dim: int) -> dict:
    """The backends' parameters an index of ``count`` x ``dim`` gets unless told otherwise."""
    nlist, pq_m, nbits = ivfpq_parameters(max(count, 1), dim)
    return {"hnsw_m": HNSW_M, "ef_construction": EF_CONSTRUCTION, "ef_search": EF_SEARCH,
            "nlist": nlist, "pq_m": pq_m, "nbits": nbits, "nprobe": NPROBE}


def faiss_or_none():
    """The faiss module, or None when it is not installed (exact search then)."""
    try:
        import faiss  # noqa: PLC0415  (optional dependency; imported only where used)
    except ImportError:
        return None
    return faiss


def choose_backend(count: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                   faiss_available: bool = True) -> str:
    """The backend for ``count`` vectors of ``dim`` floats: exact below AUTO_ANN_MIN (or
    without faiss), IVF-PQ when the vectors exceed ``memory_budget`` bytes, HNSW otherwise."""
    if count < AUTO_ANN_MIN or not faiss_available:
        return "exact"
    if count * dim * 4 > memory_budget:
        return "ivfpq"
    return "hnsw"


def ivfpq_parameters(count: int, dim: int):
    """(nlist, pq_m, nbits): about 4 sqrt(N) lists, the largest of 64/32/16/8/4/2/1
    sub-quantisers that divides ``dim``, and 8 bits per code (6 at a 3,000-image gallery):
    faiss trains each of the 2^nbits and nlist centroids from >= 39 points."""
    nlist = max(1, min(int(4 * math.sqrt(count)), count // 39))
    pq_m = next(m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0 and m <= dim)
    nbits = min(8, max(1, int(math.log2(max(count, 78) / 39))))
    return nlist, pq_m, nbits


def exact_search(queries: np.ndarray, database: np.ndarray, k: int, block_size: int = 1024):
    """Top-k database rows by inner product for each query, exactly.

    Ties are broken by the lower database index (a stable ranking), so results are
    deterministic. Peak extra memory is one ``[rows, N]`` score block, with rows at most
    ``block_size`` and small enough to keep the block under 256 MB.

    Returns:
      (scores, indices): ``[n_queries, min(k, N)]`` float32 and int64, best first.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    db = np.asarray(database, dtype=np.float32)
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


def _top_k(scores: np.ndarray, rows: np.ndarray, k: int):
    """Per query, the k best (score desc, row asc) of candidate columns ``[n, c]``; absent
    candidates (row -1) must score -inf. One row-wise lexsort for the whole batch (a Python
    loop per query cost IVF-PQ's re-rank more than faiss' own search at batch 64)."""
    order = np.lexsort((rows, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


class GalleryIndex:
    """Gallery ids, embeddings (one array or row-ordered shards) and optional labels/paths,
    searchable by inner product."""

    def __init__(self, ids: Sequence[str], embeddings, labels: Optional[Sequence[str]] = None,
                 paths: Optional[Sequence[str]] = None, model: Optional[str] = None,
                 model_version: Optional[int] = None, backend: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 hnsw_m: int = HNSW_M, ef_construction: int = EF_CONSTRUCTION, ef_search: int = EF_SEARCH,
                 nlist: Optional[int] = None, pq_m: Optional[int] = None, nbits: Optional[int] = None,
                 nprobe: int = NPROBE, dba: Optional[dict] = None,
                 _faiss_index=None, _check_finite: bool = True):
        shards = [embeddings] if isinstance(embeddings, np.ndarray) else list(embeddings)
        shards = [s if isinstance(s, np.memmap) else np.ascontiguousarray(s, dtype=np.float32) for s in shards]
        if not shards or any(s.ndim != 2 for s in shards) or len({s.shape[1] for s in shards}) != 1:
            raise ValueError(f"embeddings must be [N, D] (or shards of one D), got {[s.shape for s in shards]}")
        count = sum(s.shape[0] for s in shards)
        if len(ids) != count:
            raise ValueError(f"{len(ids)} ids for {count} embeddings")
        # Sorted and compared neighbour to neighbour: a set of a million ids would cost tens of MB.
        if any(a == b for a, b in itertools.pairwise(sorted(ids))):
            raise ValueError("gallery ids must be unique")
        for name, seq in (("labels", labels), ("paths", paths)):
            if seq is not None and len(seq) != len(ids):
                raise ValueError(f"{len(seq)} {name} for {len(ids)} ids")
        if _check_finite and not all(np.all(np.isfinite(s)) for s in shards):
            raise ValueError("embeddings contain NaN or inf")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.ids, self._shards = list(ids), shards
        self._starts = np.cumsum([0] + [s.shape[0] for s in shards])
        self.labels = None if labels is None else [str(v) for v in labels]
        self.paths = None if paths is None else [str(v) for v in paths]
        self.model = model
        # The version folder of the model that embedded the gallery (TF Serving's integer name):
        # what a search checks its model against (model_versions.check_index_matches_model).
        self.model_version = None if model_version is None else int(model_version)
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        default_nlist, default_m, default_bits = ivfpq_parameters(max(count, 1), self.dim)
        self.nlist, self.pq_m, self.nprobe = nlist or default_nlist, pq_m or default_m, nprobe
        self.nbits = nbits or default_bits
        self.dba = None if not dba else {"k": int(dba["k"]), "alpha": float(dba["alpha"])}
        faiss = faiss_or_none()
        if backend == "auto":
            backend = choose_backend(count, self.dim, memory_budget, faiss is not None)
        if backend in ("hnsw", "ivfpq") and faiss is None:
            raise ImportError(f"backend {backend!r} needs faiss (pip install faiss-cpu)")
        self.backend = backend
        self._faiss = _faiss_index
        self.local_copy = None  # where load() copied an object store's index to, if it did
        if self._faiss is None and count and backend != "exact":
            self._faiss = self._build_faiss(faiss)

    def _build_faiss(self, faiss):
        if self.backend == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
        else:
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFPQ(quantizer, self.dim, self.nlist, self.pq_m, self.nbits,
                                     faiss.METRIC_INNER_PRODUCT)
            # Training needs a sample, not the gallery: faiss asks 39 points a centroid at least
            # (k-means costs sample x nlist x dim per iteration: 1M vectors would take hours).
            n = len(self)
            take = np.sort(np.random.default_rng(0).choice(n, min(n, max(39 * self.nlist, 50_000)), replace=False))
            index.train(self.vectors(take))
        for shard in self._shards:
            index.add(np.ascontiguousarray(shard, dtype=np.float32))
        return index

    def parameters(self) -> dict:
        """The backends' parameters, as the constructor takes them."""
        return {"hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "nlist": self.nlist, "pq_m": self.pq_m, "nbits": self.nbits, "nprobe": self.nprobe}

    @property
    def shards(self) -> list:
        """The ``[rows, D]`` arrays (maybe memory-mapped) holding the vectors, in row order."""
        return list(self._shards)

    @property
    def starts(self) -> np.ndarray:
        """The global row of each shard's first vector (and the count, last)."""
        return self._starts

    @property
    def dim(self) -> int:
        return int(self._shards[0].shape[1])

    @property
    def embeddings(self) -> np.ndarray:
        """All the vectors as one in-memory array (reads every shard)."""
        return np.concatenate([np.asarray(s) for s in self._shards]) if len(self._shards) > 1 \
            else np.asarray(self._shards[0])

    def __len__(self) -> int:
        return len(self.ids)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of global ``rows`` (any shape), gathered from the shards."""
        flat = np.asarray(rows, np.int64).ravel()
        if len(self._shards) == 1:  # one copy straight out of the (mapped) shard
            return np.take(self._shards[0], flat, axis=0).reshape(*np.shape(rows), self.dim)
        out = np.empty((flat.size, self.dim), np.float32)
        shard_of = np.searchsorted(self._starts, flat, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            out[sel] = self._shards[s][flat[sel] - self._starts[s]]
        return out.reshape(*np.shape(rows), self.dim)

    def _rerank_scores(self, q: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """``[n, c]`` exact inner products of each query with its candidate rows (-inf for -1).

        faiss reads the candidates' vectors in place, from the (memory-mapped) shards: no
        gathered copy of them is made, which cost more than faiss' own IVF-PQ search at batch
        64 (what faiss' IndexRefineFlat does with vectors it holds in memory).
        """
        faiss = faiss_or_none()
        ptr = faiss.swig_ptr
        nq, nc = cand.shape
        cand = np.ascontiguousarray(cand, dtype=np.int64)
        if len(self._shards) == 1:
            local, parts = cand[None], np.empty((1, nq, nc), np.float32)
        else:  # per shard, its own rows' local numbers and -1 elsewhere, made in one step
            starts = self._starts[:-1, None, None]
            inside = (cand >= starts) & (cand < self._starts[1:, None, None])
            local = np.where(inside, cand - starts, -1)
            parts = np.empty(local.shape, np.float32)
        for s, shard in enumerate(self._shards):
            if not (inside[s].any() if len(self._shards) > 1 else True):
                parts[s] = -np.inf
                continue
            if shard.dtype != np.float32 or not shard.flags.c_contiguous:  # not faiss-readable in place
                shard = np.ascontiguousarray(shard, dtype=np.float32)
            faiss.fvec_inner_products_by_idx(ptr(parts[s]), ptr(q), ptr(shard), ptr(local[s]), self.dim, nq, nc)
        return parts[0] if len(self._shards) == 1 else parts.max(axis=0)  # -inf outside each shard

    def _exact(self, q: np.ndarray, k: int):
        if len(self._shards) == 1:
            return exact_search(q, self._shards[0], k)
        parts = [exact_search(q, shard, k) for shard in self._shards]
        scores = np.concatenate([p[0] for p in parts], axis=1)
        rows = np.concatenate([p[1] + start for p, start in zip(parts, self._starts)], axis=1)
        return _top_k(scores, rows, k)

    def answered_by(self, exact: bool = False) -> str:
        """The backend a ``search(..., exact=exact)`` uses, with its parameters."""
        if exact or self.backend == "exact":
            return f"exact over {len(self)} vectors"
        if self.backend == "hnsw":
            return f"hnsw (M={self.hnsw_m}, efSearch={self.ef_search}) over {len(self)} vectors"
        return (f"ivfpq (nlist={self.nlist}, m={self.pq_m}x{self.nbits} bits, nprobe={self.nprobe}, exact re-rank of "
                f"{RERANK}k) over {len(self)} vectors")

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
            return self._exact(q, k)
        q = np.ascontiguousarray(q)
        if self.backend == "hnsw":
            # efSearch bounds the candidate list: it must be at least k to return k results.
            self._faiss.hnsw.efSearch = max(self.ef_search, k)
            scores, indices = self._faiss.search(q, k)
            scores, indices = scores.astype(np.float32), indices.astype(np.int64)
        else:
            self._faiss.nprobe = self.nprobe
            _, cand = self._faiss.search(q, min(RERANK * k, len(self)))
            scores, indices = _top_k(self._rerank_scores(q, cand), cand, k)
        if (indices < 0).any():  # fewer than k found (sparse lists, a disconnected graph): answer exactly
            short = np.flatnonzero(np.any(indices < 0, axis=1))
            scores[short], indices[short] = self._exact(q[short], k)
        return scores, indices

    def save(self, directory: str, shard_rows: int = SHARD_ROWS) -> None:
        """Writes the index directory (see the module docstring); meta.json last. On an object
        store (gs://) it is written to a local folder, then copied up, meta.json last."""
        from components.retrieval import index_files

        if index_files.is_remote(directory):
            import tempfile

            with tempfile.TemporaryDirectory(prefix="dolg-tfx-index-save-") as local:
                self.save(local, shard_rows)
                index_files.publish(local, directory)
            return
        directory = index_files.local_path(directory)
        index_files.clear_for_write(directory)
        index_files.write_json_array(os.path.join(directory, "ids.json"), self.ids)
        names = index_files.shard_names(len(self), shard_rows)
        for i, name in enumerate(names):
            start, end = i * shard_rows, min((i + 1) * shard_rows, len(self))
            # Written through a mapped file, 4,096 rows at a time: saving never holds a shard's
            # vectors in memory (the shards given may be mapped files themselves).
            out = np.lib.format.open_memmap(os.path.join(directory, name), mode="w+", dtype=np.float32,
                                            shape=(end - start, self.dim))
            for b in range(start, end, 4096):
                out[b - start:min(b + 4096, end) - start] = self.vectors(np.arange(b, min(b + 4096, end)))
            out.flush()
            del out
        if self._faiss is not None:
            faiss_or_none().write_index(self._faiss, os.path.join(directory, index_files.FAISS_FILE))
        index_files.write_meta(directory, self.meta(names), {"labels": self.labels, "paths": self.paths})

    def meta(self, shards: List[str]) -> dict:
        """meta.json's fields but the labels and paths (``index_files.write_meta`` adds them)."""
        return index_meta(self.model, self.model_version, self.dim, len(self), self.backend, shards,
                          self.parameters(), self.dba)

    @classmethod
    def load(cls, directory: str, backend: Optional[str] = None) -> "GalleryIndex":
        """Reads an index directory, mapping its shards; ``backend='exact'`` ignores a saved
        faiss index. A saved faiss index loads as exact search (with a warning) without faiss.
        An index on an object store is read through a local copy (``index_files.local_copy``;
        ``local_copy`` then names it), as faiss and memory-mapping need local files.
        """
        from components.retrieval import index_files

        if index_files.is_remote(directory):
            copy = index_files.local_copy(directory)
            index = cls.load(copy, backend)
            index.local_copy = copy
            return index
        directory = index_files.local_path(directory)
        meta_path = os.path.join(directory, "meta.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{directory}: no meta.json (not an index, or incomplete)")
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT or meta.get("format_version") not in (1, FORMAT_VERSION):
            raise ValueError(f"{directory}: not a {FORMAT} v1/v{FORMAT_VERSION} index")
        with open(os.path.join(directory, "ids.json"), encoding="utf-8") as f:
            ids = json.load(f)
        names: List[str] = meta.get("shards") or ["embeddings.npy"]  # v1: one file
        shards = [np.load(os.path.join(directory, n), mmap_mode="r", allow_pickle=False) for n in names]
        rows = sum(s.shape[0] for s in shards)
        if rows != meta["count"] or len(ids) != meta["count"] or any(s.shape[1:] != (meta["dim"],) for s in shards):
            raise ValueError(f"{directory}: files disagree with meta.json ({len(ids)} ids, "
                             f"{rows} embedding rows, meta count {meta['count']} x {meta['dim']})")
        want = backend or meta["backend"]
        graph = None
        if want in ("hnsw", "ivfpq"):
            faiss = faiss_or_none()
            faiss_path = os.path.join(directory, "faiss.index")
            if faiss is None:
                warnings.warn(f"{directory}: faiss is not installed; searching exactly")
                want = "exact"
            elif want == meta["backend"] and os.path.isfile(faiss_path):
                graph = faiss.read_index(faiss_path)
                if graph.ntotal != len(ids) or graph.d != meta["dim"]:
                    raise ValueError(f"{faiss_path}: {graph.ntotal} x {graph.d} vectors, "
                                     f"meta says {meta['count']} x {meta['dim']}")
        hnsw, ivf = meta.get("hnsw") or {}, meta.get("ivfpq") or {}
        # The vectors were checked when the index was built; scanning them here would read
        # every shard from disk.
        return cls(ids, shards, labels=meta.get("labels"), paths=meta.get("paths"),
                   model=meta.get("model"), model_version=meta.get("model_version"), backend=want, hnsw_m=hnsw.get("m", HNSW_M),
                   ef_construction=hnsw.get("ef_construction", EF_CONSTRUCTION),
                   ef_search=hnsw.get("ef_search", EF_SEARCH), nlist=ivf.get("nlist"), pq_m=ivf.get("m"), nbits=ivf.get("nbits"),
                   nprobe=ivf.get("nprobe", NPROBE), dba=meta.get("dba"), _faiss_index=graph, _check_finite=False)
