"""Leave-one-out retrieval evaluation against its floor and faiss: seconds, ratios, peak memory.

Over N random unit 512-d float32 embeddings with N/10 random labels (about 9 positives per
query, the regime of landmark data):

- protocol: components.retrieval.protocols.leave_one_out_retrieval (full-ranking mAP, mAP@100,
  recall@k), default block of 1024 queries.
- floor: the minimal work of any exact top-100 evaluation: the same [block, N] matmul (BLAS,
  same block size) plus np.argpartition for each row's top 100; no metric at all.
- faiss: IndexFlatIP add + search(k=101) (exact, same top-100 the floor finds).

Each (method, N) runs in a FRESH SUBPROCESS, so its peak memory is its own: peak extra memory =
ru_maxrss after the method minus the resident size just before it (embeddings, labels and
imports already loaded; the embeddings are generated in chunks so that setup leaves no
transient peak of its own). This counts everything the method touches, faiss' C++ buffers
included, which tracemalloc would not see. Repeats (full mode) alternate the methods and take
medians. mAP@100 of every method is printed as a check that all three found the same
neighbours (computed after the timing and memory readings).

Targets: protocol <= 1.5x the floor's seconds; protocol's peak extra memory <= 2x its score
block (block_size x N x 4 bytes) and growing with N like N, not N^2 (exponent < 1.5). When
the memory target is missed, a tracemalloc run at the smaller N compares the peak with the
default block against one block of all N queries, to show where the excess comes from.

N: 5,000 and 10,000 (quick), 10,000 and 50,000 (full), 500 and 1,000 with one run per cell
(smoke).

    tools/devenv.sh run python -m benchmarks.retrieval_eval [--quick|--full|--smoke] [--json OUT]
"""
import json
import math
import statistics
import subprocess
import sys
import time

from benchmarks import common

DIM, TOP_K, BLOCK = 512, 100, 1024
TIME_TARGET, MEMORY_TARGET, EXPONENT_TARGET = 1.5, 2.0, 1.5
METHODS = ("protocol", "floor", "faiss")


def make_data(n, seed=0):
    """Unit float32 embeddings and integer labels, generated chunk by chunk (no float64 N x D
    temporary that would set the process' peak before the method runs)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = np.empty((n, DIM), np.float32)
    for i in range(0, n, 4096):
        chunk = rng.standard_normal((min(4096, n - i), DIM), dtype=np.float32)
        x[i:i + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return x, rng.integers(0, max(1, n // 10), n)


def floor_topk(x):
    """Block-wise x @ x.T and argpartition: each row's TOP_K others, unordered (the floor)."""
    import numpy as np

    n = len(x)
    top = np.empty((n, TOP_K), np.int64)
    for b0 in range(0, n, BLOCK):
        b1 = min(b0 + BLOCK, n)
        scores = x[b0:b1] @ x.T
        scores[np.arange(b1 - b0), np.arange(b0, b1)] = -np.inf  # leave the query out
        top[b0:b1] = np.argpartition(scores, n - TOP_K, axis=1)[:, n - TOP_K:]
        del scores  # else the old block lives on while the next product is allocated
    return top


def faiss_topk(x):
    """Exact inner-product search with faiss; drops each query's own hit."""
    import faiss
    import numpy as np

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, found = index.search(x, TOP_K + 1)
    n = len(x)
    keep = found != np.arange(n)[:, None]
    # a row whose self-hit was not returned (a tie pushed it out) keeps its first TOP_K
    return np.stack([row[k][:TOP_K] for row, k in zip(found, keep)])


def map_at_k(x, labels, top):
    """mAP@TOP_K (GLDv2 normalisation) from unordered top lists: the cross-check column."""
    import numpy as np

    aps = []
    counts = np.bincount(labels)
    for q in range(len(x)):
        m = counts[labels[q]] - 1
        if m == 0:
            continue
        s = x[top[q]] @ x[q]
        ranked = top[q][np.argsort(-s, kind="stable")]
        hits = labels[ranked] == labels[q]
        prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float(np.sum(prec * hits) / min(m, TOP_K)))
    return float(np.mean(aps))


def rss_now_mb():
    """Current resident set size (VmRSS), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(method, n):
    """Runs one method on fresh data in this process and prints one JSON line."""
    import faiss  # noqa: F401  (imported before the baseline so library pages are not counted)

    from components.retrieval.protocols import leave_one_out_retrieval

    x, labels = make_data(n)
    before = rss_now_mb()
    start = time.perf_counter()
    if method == "protocol":
        result = leave_one_out_retrieval(x, labels, map_at=TOP_K, block_size=BLOCK)
    else:
        top = floor_topk(x) if method == "floor" else faiss_topk(x)
    seconds = time.perf_counter() - start
    peak_extra = common.peak_rss_mb() - before
    check = result.mAP_at_k if method == "protocol" else map_at_k(x, labels, top)
    print(json.dumps({"method": method, "n": n, "seconds": seconds, "peak_extra_mb": peak_extra,
                      "rss_before_mb": before, "map_at_100": check}))


def diagnose(n):
    """Where the protocol's memory goes: tracemalloc peaks (numpy reports its buffers to it) with
    the default block and with one block holding every query. Prints one JSON line."""
    import tracemalloc

    from components.retrieval.protocols import leave_one_out_retrieval

    x, labels = make_data(n)
    peaks = {}
    for block in (BLOCK, n):
        tracemalloc.start()
        leave_one_out_retrieval(x, labels, map_at=TOP_K, block_size=block)
        peaks[block] = tracemalloc.get_traced_memory()[1] / (block * n * x.itemsize)
        tracemalloc.stop()
    print(json.dumps({"n": n, "peak_over_block": peaks}))


def measure(method, n):
    out = subprocess.run([sys.executable, "-m", "benchmarks.retrieval_eval", "--child", method, "--n", str(n)],
                         capture_output=True, text=True, check=True, cwd=common.REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(full=False, smoke=False):
    sizes = (10_000, 50_000) if full else (500, 1_000) if smoke else (5_000, 10_000)
    repeats = 1 if smoke else 3  # a single run of the cheap N=5,000 cells is at the mercy of the shared cores
    rows = []
    for n in sizes:
        runs = {m: [] for m in METHODS}
        for _ in range(repeats):
            for method in METHODS:  # alternate, so a slow spell of the machine hits all three
                runs[method].append(measure(method, n))
        floor_s = statistics.median(r["seconds"] for r in runs["floor"])
        for method in METHODS:
            seconds = statistics.median(r["seconds"] for r in runs[method])
            rows.append({"method": method, "n": n, "seconds": seconds, "ratio": seconds / floor_s,
                         "peak_extra_mb": max(r["peak_extra_mb"] for r in runs[method]),
                         "score_block_mb": BLOCK * n * 4 / 2 ** 20, "full_matrix_mb": n * n * 4 / 2 ** 20,
                         "map_at_100": runs[method][0]["map_at_100"]})
    table = common.md_table(
        ["method", "N", "seconds", "/ floor", "peak extra MB", "score block MB", "N x N MB", "mAP@100 (check)"],
        [[r["method"], f"{r['n']:,}", f"{r['seconds']:.2f}", f"{r['ratio']:.2f}x", f"{r['peak_extra_mb']:.0f}",
          f"{r['score_block_mb']:.0f}", f"{r['full_matrix_mb']:,.0f}", f"{r['map_at_100']:.5f}"] for r in rows])
    proto = [r for r in rows if r["method"] == "protocol"]
    checks = [common.verdict(f"protocol / floor seconds at N={r['n']:,}", r["ratio"], TIME_TARGET, False)
              for r in proto]
    checks += [common.verdict(f"protocol peak extra / score block at N={r['n']:,}",
                              r["peak_extra_mb"] / r["score_block_mb"], MEMORY_TARGET, False) for r in proto]
    lo, hi = proto[0], proto[-1]
    exponent = math.log(max(hi["peak_extra_mb"], 1e-3) / max(lo["peak_extra_mb"], 1e-3)) / math.log(hi["n"] / lo["n"])
    checks.append(common.verdict(f"protocol peak memory growth exponent, N={lo['n']:,} -> {hi['n']:,} "
                                 f"(1 = linear, 2 = N^2)", exponent, EXPONENT_TARGET, False, unit=""))
    if smoke or any("MISSED" in c and "peak extra" in c for c in checks):  # smoke: run its code too
        diag = measure("diagnose", lo["n"])["peak_over_block"]
        one = diag[str(lo["n"])]
        checks.append(f"diagnosis (tracemalloc, N={lo['n']:,}): peak = {diag[str(BLOCK)]:.2f} score blocks with "
                      f"block {BLOCK}, {one:.2f} with a single block of all N queries: "
                      + ("the previous block is still alive while the next product is allocated"
                         if diag[str(BLOCK)] > one + 0.5 else "not a lingering block"))
    markdown = (f"{DIM}-d unit float32 embeddings, N/10 labels, top-{TOP_K}, block {BLOCK}; "
                f"{'median of ' + str(repeats) if repeats > 1 else 'one run'} per cell, each in a fresh "
                f"subprocess; memory = ru_maxrss after the method minus VmRSS before it "
                f"(whole process, native buffers included).\n\n{table}\n\n" + "\n".join(f"- {c}" for c in checks))
    return markdown, [c for c in checks if "MISSED" in c], rows


def main():
    p = common.parser(__doc__)
    p.add_argument("--child", choices=METHODS + ("diagnose",), help="internal: one method, prints JSON")
    p.add_argument("--n", type=int, default=10_000)
    args = p.parse_args()
    if args.child:
        diagnose(args.n) if args.child == "diagnose" else child(args.child, args.n)
        return
    markdown, missed, rows = run(args.full, args.smoke)
    common.finish(args, "Leave-one-out retrieval evaluation vs floor and faiss", markdown, missed, rows)


if __name__ == "__main__":
    main()
