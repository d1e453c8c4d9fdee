"""Gallery index at scale: exact, HNSW and IVF-PQ on 40,000 (quick) or 1,000,000 (--full)
clustered 512-d unit vectors, each next to bare faiss with the same parameters.

Per index type: build time; memory of a fresh process that loads the saved index and searches
(anonymous RSS added, i.e. what the process allocated, and file-backed RSS, i.e. memory-mapped
shards it touched) against the index's own size (the vectors for exact, the faiss index
otherwise); search latency p50/p99 at batch 1 and batch 64; recall@10 against exact search.
"Bare faiss" calls the same faiss index directly (IndexFlatIP for exact): the ratio is what
the project's wrapper (exact fallback, IVF-PQ's exact re-rank) costs on top.

Targets (issues 12 and 24): HNSW and IVF-PQ (re-ranked) recall@10 >= 0.95; the project's
search within 1.2x of bare faiss doing the same job (for IVF-PQ: faiss' IndexRefineFlat, the same
exact re-rank); memory within 1.2x of the index's own size, 2x of its codes for IVF-PQ.

Sizes (vectors, held-out queries, latency samples at batch 1 / batch 64): quick 40,000, 1,000,
300 / 30 (100,000 until 2026-12-02: 105 s, HNSW's build alone 50 s, and make bench had to fit
in 10 minutes); full 1,000,000, 1,000, 300 / 30; smoke 2,000, 100, 10 / 2.

    tools/devenv.sh run python -m benchmarks.index_scale [--quick|--full|--smoke] [--json OUT]
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from benchmarks import common

K, DIM = 10, 512
# (vectors, held-out queries, latency samples at batch 1, at batch 64) per mode
SIZES = {"quick": (40_000, 1000, 300, 30), "full": (1_000_000, 1000, 300, 30), "smoke": (2_000, 100, 10, 2)}


def _vectors(n, queries, seed=0):
    spec = importlib.util.spec_from_file_location(
        "bench_vectors", os.path.join(common.REPO, "tests", "fixtures", "vectors.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # ~50 images a landmark, as in a landmark gallery.
    data = module.clustered_unit_vectors(n + queries, DIM, clusters=max(1, n // 50), seed=seed)
    return data[:n], data[n:]


def _latencies(search, queries, samples):
    one, batch = [], []
    queries_1, batches_64 = samples
    for q in queries[:queries_1]:
        start = time.perf_counter()
        search(q[None])
        one.append(time.perf_counter() - start)
    for b in range(batches_64):
        rows = queries[(b * 64) % (len(queries) - 64):][:64]
        start = time.perf_counter()
        search(rows)
        batch.append(time.perf_counter() - start)
    return [float(np.percentile(t, p)) * 1e3 for t in (one, batch) for p in (50, 99)]


def _recall(got, want):
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]))


# The child: a fresh process loads the saved index and searches, so its memory is the index's.
CHILD = r"""
import json, sys, numpy as np
def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out
from components.retrieval.index import GalleryIndex
queries = np.load(sys.argv[2])
before = status()
index = GalleryIndex.load(sys.argv[1])
for b in range(0, len(queries), 64):
    index.search(queries[b:b + 64], 10)
after = status()
print(json.dumps({k: after[k] - before[k] for k in after}))
"""


def _memory(directory, queries_file):
    out = subprocess.run([sys.executable, "-c", CHILD, directory, queries_file], capture_output=True,
                         text=True, check=True, cwd=common.REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(n, n_queries=1000, samples=(300, 30)):
    import faiss

    from components.retrieval.index import RERANK, GalleryIndex, exact_search

    work = os.path.join(common.SCRATCH, f"index_scale_{n}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    gallery, queries = _vectors(n, n_queries)
    queries_file = os.path.join(work, "queries.npy")
    np.save(queries_file, queries)
    _, truth = exact_search(queries, gallery, K)
    ids = [str(i) for i in range(n)]
    rows = []
    for backend in ("exact", "hnsw", "ivfpq"):
        start = time.perf_counter()
        index = GalleryIndex(ids, gallery, backend=backend)
        build_s = time.perf_counter() - start
        directory = os.path.join(work, backend)
        index.save(directory)
        if backend == "exact":
            bare, own_mb = faiss.IndexFlatIP(DIM), gallery.nbytes / 2**20
            bare.add(gallery)
        else:
            bare = index._faiss  # the same structure, called directly
            own_mb = os.path.getsize(os.path.join(directory, "faiss.index")) / 2**20
        if backend == "hnsw":
            bare.hnsw.efSearch = index.ef_search
        elif backend == "ivfpq":
            # The same job in bare faiss: the same IVF-PQ, its RERANK x k candidates re-ranked
            # exactly by faiss' own refine index (which holds every float vector in memory,
            # where the project reads them from the memory-mapped shards).
            bare.nprobe = index.nprobe
            bare = faiss.IndexRefineFlat(bare, faiss.swig_ptr(gallery))
            bare.k_factor = RERANK
        project_lat = _latencies(lambda q: index.search(q, K), queries, samples)
        bare_lat = _latencies(lambda q: bare.search(np.ascontiguousarray(q), K), queries, samples)
        recall = _recall(index.search(queries, K)[1], truth)
        bare_recall = _recall(bare.search(queries, K)[1], truth)
        memory = _memory(directory, queries_file)
        rows.append({"backend": backend, "answered_by": index.answered_by(), "build_s": build_s,
                     "own_mb": own_mb, "rss_anon_mb": memory["RssAnon"], "rss_file_mb": memory["RssFile"],
                     "p50_1": project_lat[0], "p99_1": project_lat[1], "p50_64": project_lat[2],
                     "p99_64": project_lat[3], "bare_p50_1": bare_lat[0], "bare_p99_1": bare_lat[1],
                     "bare_p50_64": bare_lat[2], "bare_p99_64": bare_lat[3],
                     "recall": recall, "bare_recall": bare_recall})
        del index, bare
    shutil.rmtree(work, ignore_errors=True)
    return rows


def report(rows, n, n_queries=1000):
    table = common.md_table(
        ["index", "build s", "own size MB", "RSS anon / file MB", "p50 / p99 ms, batch 1 (bare faiss)",
         "p50 / p99 ms, batch 64 (bare faiss)", "recall@10 (bare faiss)"],
        [[r["answered_by"], f"{r['build_s']:.1f}", f"{r['own_mb']:.0f}",
          f"{r['rss_anon_mb']:.0f} / {r['rss_file_mb']:.0f}",
          f"{r['p50_1']:.2f} / {r['p99_1']:.2f} ({r['bare_p50_1']:.2f} / {r['bare_p99_1']:.2f})",
          f"{r['p50_64']:.1f} / {r['p99_64']:.1f} ({r['bare_p50_64']:.1f} / {r['bare_p99_64']:.1f})",
          f"{r['recall']:.3f} ({r['bare_recall']:.3f})"] for r in rows])
    missed = []
    for r in rows:
        if r["backend"] == "hnsw":
            line = common.verdict("HNSW recall@10", r["recall"], 0.95, True, unit="")
            missed += [line] if "MISSED" in line else []
        for batch in ("1", "64"):
            ratio = r[f"p50_{batch}"] / r[f"bare_p50_{batch}"]
            line = common.verdict(f"{r['backend']} p50 batch {batch} vs bare faiss", ratio, 1.2, False)
            missed += [line] if "MISSED" in line else []
        # Issue 12: an index holds about its own size. Issue 24 for IVF-PQ: a small multiple of
        # its codes (taken as 2x: the ids are Python strings beside the codes), not of the vectors.
        limit = 2.0 if r["backend"] == "ivfpq" else 1.2
        ratio = r["rss_anon_mb"] / r["own_mb"]
        line = common.verdict(f"{r['backend']} memory (anonymous RSS) vs own size", ratio, limit, False)
        missed += [line] if "MISSED" in line else []
        if r["backend"] == "ivfpq":
            line = common.verdict("ivfpq recall@10 with re-ranking", r["recall"], 0.95, True, unit="")
            missed += [line] if "MISSED" in line else []
    note = (f"\n{n:,} clustered unit vectors of {DIM} dimensions (~50 a cluster), {n_queries:,} held-out "
            "queries, k=10. Memory: a fresh process loading the saved index and answering every "
            "query; file-backed RSS is the memory-mapped shards it read (page cache, not held). "
            "Bare faiss for IVF-PQ is the same IVF-PQ inside faiss' `IndexRefineFlat` (k_factor 8): "
            "the same exact re-rank of 8k candidates, from float vectors it holds in memory "
            f"({n * DIM * 4 / 2**20:,.0f} MB here), where the project maps the shards from disk.")
    return table + "\n" + note, missed


def main():
    parser = common.parser(__doc__)
    args = parser.parse_args()
    n, n_queries, *samples = SIZES[args.mode]
    if args.smoke:  # faiss' OpenMP threads spin against a busy machine: one thread (here and in the
        os.environ["OMP_NUM_THREADS"] = "1"  # memory children) keeps smoke's few seconds a few seconds
    rows = run(n, n_queries, samples)
    markdown, missed = report(rows, n, n_queries)
    common.finish(args, f"Gallery index at {n:,} vectors: exact, HNSW, IVF-PQ", markdown, missed, rows)


if __name__ == "__main__":
    main()
