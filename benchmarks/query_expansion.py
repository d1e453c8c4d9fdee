"""αQE and DBA (components.retrieval.expansion): mAP and recall@1 without, with αQE, with DBA and
with both, and what they cost next to a plain search.

Three sets:

- demo held-out: the 30 eval-split examples (5 landmarks never trained on) of the cached tiny
  pipeline run in scratch/bench/ (made by benchmarks.common.bench_run when absent), embedded by
  the model that run pushed through its ``serving_examples`` signature (the Evaluator's input).
- demo generator, unseen: pipeline.demo_data views of ``--landmarks`` new landmarks (seed 1:
  none of them is in the run's data) x 10 views, embedded by the same model.
- generated, harder: unit vectors in 64 dimensions (few enough that true matches are similar,
  about 0.4, as CNN descriptors of one landmark are, and wrong ones not far below): classes
  drawn around 30 "super" centres (look-alike landmarks), items around their class centre
  with noise of 1.2x the centre's norm; 10% of the database labels replaced by a random other
  class (label noise) and as many distractors (classes of the same super centres, relevant to
  no query) as labelled images; queries are separate vectors of the query classes, never in
  the database. Isotropic noise is what averaging neighbours removes best: read it as the
  favourable case, the demo sets as the real one.

Protocols: the demo sets are leave-one-out (each image queries all the others); for DBA the
database is augmented WITHOUT the query (re-augmented per query), so the query's own vector
never leaks into its neighbours' augmented vectors. mAP is full-ranking AP on the demo sets and
AP@100 on the generated set (protocols.gldv2_map_at_k, the project's one AP@k). Searching a DBA
database expands the query with the same K and alpha (what ``search`` does on a DBA index);
the "DBA, raw query" row is the same database searched with the plain query (``search --qe 0``).

Cost, through GalleryIndex on the same generator in 512 dimensions (the model's size): query
time with αQE over a plain search (same k = 100, exact and HNSW backends, median of repeats),
and the DBA build next to the index build.

Sizes (unseen landmarks, generated classes, classes of the 512-d cost set, cost rounds): quick
10, 300, 100, 3; full 40, 1000, 1000, 5; smoke 2, 20, 20, 1. --run DIR embeds with that
completed run's pushed model and eval split instead of the cached tiny run's.

    tools/devenv.sh run python -m benchmarks.query_expansion [--quick|--full|--smoke] [--run DIR] [--json OUT]
"""
import statistics
import time

import numpy as np

from benchmarks import common

ALPHA = 3.0
KS = (1, 2, 5)  # K of αQE and DBA (the same K for both in a row)


def METHODS(k):
    """(column, αQE K, DBA K) of the variants beside "plain"."""
    return (("αQE", k, 0), ("DBA, raw query", 0, k), ("DBA + αQE", k, k))
TOP = 100


def _sorted_search(db):
    """Exact search by one full stable sort (the order exact_search gives), for small sets."""
    def search(v, m):
        s = v @ db.T
        top = np.argsort(-s, axis=1, kind="stable")[:, :m]
        return np.take_along_axis(s, top, axis=1), top
    return search


def _loo_scores(x, labels, qe, dba):
    """Leave-one-out mAP (full ranking) and recall@1; DBA re-augments the database per query."""
    from components.retrieval import expansion

    n = len(x)
    counts = {l: int(np.sum(labels == l)) for l in set(labels.tolist())}
    solution, predictions = {}, {}
    for q in range(n):
        if counts[labels[q]] < 2:
            continue
        rows = np.delete(np.arange(n), q)
        db = expansion.augment(x[rows], dba, ALPHA, search=_sorted_search(x[rows]))
        query = expansion.expand_queries(x[q:q + 1], _sorted_search(db), lambda r: db[r], qe, ALPHA)
        _, top = _sorted_search(db)(query, n - 1)
        solution[q] = [int(r) for r in rows if labels[r] == labels[q]]
        predictions[q] = [int(rows[j]) for j in top[0]]
    return _scores(solution, predictions, n)


def _scores(solution, predictions, k):
    from components.retrieval import protocols

    m_ap = protocols.gldv2_map_at_k(solution, predictions, k)
    r1 = float(np.mean([predictions[q][0] in set(solution[q]) for q in solution]))
    return m_ap, r1


def _generated(classes, dim=64, per_class=8, supers=30, seed=0):
    """(database, db labels, queries, query labels): see the module docstring."""
    rng = np.random.default_rng(seed)

    def unit(v):
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    tops = unit(rng.standard_normal((supers, dim)))
    centres = unit(tops[rng.integers(0, supers, 2 * classes)] + rng.standard_normal((2 * classes, dim)) / np.sqrt(dim))

    def around(cls):
        return unit(centres[cls] + rng.standard_normal((len(cls), dim)) * (1.2 / np.sqrt(dim)))

    db_cls = np.repeat(np.arange(classes), per_class)
    labels = db_cls.copy()
    noisy = rng.random(len(labels)) < 0.10
    labels[noisy] = rng.integers(0, classes, int(noisy.sum()))
    distractor_cls = rng.integers(classes, 2 * classes, len(db_cls))  # clusters no query shares
    db = np.concatenate([around(db_cls), around(distractor_cls)])
    db_labels = np.concatenate([labels, np.full(len(distractor_cls), -1)])
    q_cls = np.repeat(np.arange(classes), 2)
    return db, db_labels, around(q_cls), q_cls


def _split_scores(db, db_labels, queries, q_labels, qe, dba):
    from components.retrieval import expansion
    from components.retrieval.index import exact_search

    aug = expansion.augment(db, dba, ALPHA)
    q = expansion.expand_queries(queries, lambda v, m: exact_search(v, aug, m), lambda r: aug[r], qe, ALPHA)
    _, top = exact_search(q, aug, TOP)
    solution = {i: np.flatnonzero(db_labels == l).tolist() for i, l in enumerate(q_labels)}
    solution = {i: s for i, s in solution.items() if s}
    return _scores(solution, {i: top[i].tolist() for i in solution}, TOP)


def _demo_sets(landmarks, given=None):
    """{name: (embeddings, labels)} of the two demo sets, embedded by the cached run's model."""
    common.quiet_tf()
    import argparse

    import tensorflow as tf

    from pipeline.demo_data import iter_views

    # the tiny run (whatever the mode) or --run DIR's: its model and its eval split
    _, _, _, run = common.bench_run(argparse.Namespace(full=False, run=given))
    model_dir = run["summary"].get("pushed_to") or run["summary"]["model"]  # pushed, else the Trainer's
    model = tf.saved_model.load(model_dir)
    examples = run["summary"]["examples"] + "/Split-eval"
    records = [r.numpy() for r in tf.data.TFRecordDataset(tf.io.gfile.glob(examples + "/*"), compression_type="GZIP")]
    labels = [tf.train.Example.FromString(r).features.feature["label"].bytes_list.value[0].decode() for r in records]
    held = model.signatures["serving_examples"](examples=tf.constant(records))["embedding"].numpy()
    views = list(iter_views(landmarks, 10, 160, seed=1))
    unseen = np.concatenate([model.signatures["serving_default"](images=tf.constant([v[2] for v in views[b:b + 64]]))
                             ["embedding"].numpy() for b in range(0, len(views), 64)])
    return model_dir, {
        f"demo held-out ({len(records)} images, {len(set(labels))} landmarks)": (held, np.asarray(labels)),
        f"demo generator, unseen ({len(views)} images, {landmarks} landmarks)": (unseen, np.asarray([v[0] for v in views]))}


def _timing(db, queries, rounds):
    """Median seconds of plain vs αQE search, and of the DBA build vs the index build."""
    from components.retrieval import expansion
    from components.retrieval.index import GalleryIndex

    ids = [str(i) for i in range(len(db))]
    out = []
    for backend in ("exact", "hnsw"):
        start = time.perf_counter()
        index = GalleryIndex(ids, db, backend=backend)
        build = time.perf_counter() - start
        start = time.perf_counter()
        expansion.augment_index(index, 2, ALPHA)
        dba = time.perf_counter() - start
        steps = {"plain": lambda: index.search(queries, TOP)}
        steps.update({f"qe{k}": (lambda k=k: expansion.expanded_search(queries, index.search, index.vectors, TOP, k, ALPHA))
                      for k in (2, 5)})
        med = common.round_robin(steps, rounds)
        out.append({"backend": backend, "n": len(db), "queries": len(queries), "build_s": build, "dba_s": dba,
                    **{f"{name}_s": t for name, t in med.items()}})
    return out


SIZES = {"quick": (10, 300, 100, 3), "full": (40, 1000, 1000, 5), "smoke": (2, 20, 20, 1)}


def run(mode="quick", landmarks=None, given=None):
    default_landmarks, classes, cost_classes, rounds = SIZES[mode]
    model_dir, sets = _demo_sets(landmarks or default_landmarks, given)
    db, db_labels, queries, q_labels = _generated(classes)
    gen_name = (f"generated, harder ({len(queries)} queries; {int(np.sum(db_labels >= 0))} labelled images, 10% "
                f"mislabelled, + {int(np.sum(db_labels < 0))} distractors)")
    scorers = [(name, lambda qe, dba, x=x, labels=labels: _loo_scores(x, labels, qe, dba))
               for name, (x, labels) in sets.items()]
    scorers.append((gen_name, lambda qe, dba: _split_scores(db, db_labels, queries, q_labels, qe, dba)))
    rows = []
    for name, score in scorers:
        plain = score(0, 0)
        for k in KS:
            row = {"set": name, "k": k, "plain": plain}
            row.update({method: score(qe, dba) for method, qe, dba in METHODS(k)})
            rows.append(row)
    big, _, big_queries, _ = _generated(cost_classes, dim=512, seed=1)
    timing = _timing(big, big_queries[:200], rounds=rounds)

    names = ["plain"] + [m for m, _, _ in METHODS(1)]
    table = common.md_table(
        ["set", "K"] + [f"mAP {n}" for n in names] + [f"R@1 {n}" for n in names],
        [[r["set"], r["k"]] + [f"{100 * r[n][0]:.2f}" for n in names] + [f"{100 * r[n][1]:.2f}" for n in names]
         for r in rows])
    cost = common.md_table(
        ["backend", "gallery", f"plain search ({timing[0]['queries']} queries, k={TOP})", "αQE K=2", "αQE K=5",
         "index build", "DBA K=2 build"],
        [[t["backend"], f"{t['n']:,}", f"{1e3 * t['plain_s']:.1f} ms", f"{t['qe2_s'] / t['plain_s']:.2f}x",
          f"{t['qe5_s'] / t['plain_s']:.2f}x", f"{t['build_s']:.2f} s", f"{t['dba_s']:.2f} s"] for t in timing])
    markdown = (f"alpha = {ALPHA:g}; K = the number of neighbours merged (the same K for αQE and DBA in a row). "
                f"Demo embeddings by `{common.shown_path(model_dir)}` ("
                + ("the model of the run read with --run" if given else "the tiny preset's model, 24 training steps")
                + "). mAP is full-ranking AP on the demo sets (leave-one-out; DBA re-augmented without the "
                f"query), AP@{TOP} on the generated set (separate queries). \"DBA + αQE\" is what `search` does on "
                f"a DBA index; \"DBA, raw query\" is `search --qe 0` on it.\n\n{table}\n\n"
                f"Cost (median of {rounds}; ratios to a plain search of the same index):\n\n{cost}")
    return markdown, [], {"quality": [dict(r, **{n: list(r[n]) for n in names}) for r in rows], "timing": timing}


def main():
    p = common.parser(__doc__, reads_run=True)
    p.add_argument("--landmarks", type=int, default=None, help="unseen demo landmarks (default 10, --full 40)")
    args = p.parse_args()
    markdown, missed, rows = run(args.mode, args.landmarks, args.run)
    common.finish(args, "Query expansion (αQE) and database-side augmentation (DBA)", markdown, missed, rows)


if __name__ == "__main__":
    main()
