"""`dolg-tfx evaluate`: a pushed model on Revisited Oxford/Paris, GLDv2 retrieval or UKBench.

Only glue lives here: load the test set (``components.retrieval.datasets``), embed it with
the SavedModel (``components.retrieval.embedder``), rank the database by dot product, and
hand the rankings to ``components.retrieval.protocols`` -- the project's one implementation
of each metric.

Images that cannot be read or decoded are reported and skipped. A skipped DATABASE image is
ranked last for every query (it can never be retrieved, so the score is a lower bound of the
full set's). A skipped QUERY has no defined ranking: GLDv2 scores it 0 by its own definition
(a query without predictions), while the revisited and UKBench protocols have no such rule,
so evaluation stops rather than print a number that is not the benchmark's.
"""
from __future__ import annotations

import json

import click
import numpy as np

from dolg_tfx.cli import main

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


def evaluate_set(ds, embedder, batch_size: int = 32, progress=None) -> dict:
    """Embeds a :class:`~components.retrieval.datasets.RetrievalSet` and scores it.

    Returns:
      A JSON-ready dict: protocol, counts, ``failures`` and ``results`` (the protocol's numbers
      as fractions, exactly as ``protocols`` returns them).
    Raises:
      click.ClickException: a query failed under a protocol that cannot score that, or
        nothing in the database could be embedded.
    """
    from components.retrieval import index as index_lib
    from components.retrieval import protocols

    db = embedder.embed_files(ds.db_paths, ds.db_ids, batch_size=batch_size, progress=progress,
                              desc=f"{ds.name} database")
    if not len(db.ids):
        raise click.ClickException("no database image could be embedded")
    dim = db.embeddings.shape[1]
    if ds.queries_are_database:
        q = db
    else:  # revisited queries are cropped to their box (query_boxes); others are whole
        q = embedder.embed_files(ds.query_paths, ds.query_ids, boxes=ds.query_boxes,
                                 batch_size=batch_size, progress=progress,
                                 desc=f"{ds.name} queries")
    failures = list(db.failures) + ([] if ds.queries_are_database else list(q.failures))
    for f in failures:  # reported before any verdict, so an abort below can point at them
        click.echo(f"skipped {f.path}: {f.reason}", err=True)
    out = {"protocol": ds.name, "data": ds.root, "model": embedder.model_dir,
           "n_database": len(ds.db_ids), "n_queries": len(ds.query_ids),
           "n_failed": len(failures),
           "failures": [{"id": f.image_id, "path": f.path, "reason": f.reason} for f in failures]}
    failed_queries = len(ds.query_ids) - len(q.ids)

    if ds.gnd is not None:
        if failed_queries:
            raise click.ClickException(
                f"{failed_queries} queries could not be embedded; revisited mAP is undefined "
                "without them (see the report above)")
        db_full, db_ok = _full_matrix(db, len(ds.db_ids), dim)
        q_full, _ = _full_matrix(q, len(ds.query_ids), dim)
        ranks = revisited_rankings(q_full, db_full, db_ok)
        out["results"] = {p: protocols.revisited_map(ranks, ds.gnd, p, KAPPAS).to_dict()
                          for p in protocols.PROTOCOLS}
    elif ds.solution is not None:
        # Failed index images are simply absent from the search; failed queries get no
        # predictions, which the GLDv2 metric scores as 0.
        _, top = index_lib.exact_search(q.embeddings, db.embeddings, GLDV2_K)
        predictions = {qid: [db.ids[j] for j in row] for qid, row in zip(q.ids, top)}
        out["results"] = {f"mAP@{GLDV2_K}": protocols.gldv2_map_at_k(
            ds.solution, predictions, GLDV2_K), "n_queries_failed": failed_queries}
    elif ds.groups is not None:
        if failures:
            raise click.ClickException(
                f"{len(failures)} UKBench images could not be embedded; every image is a "
                "query, so the N-S score is undefined without them (see the report above)")
        _, top = index_lib.exact_search(db.embeddings, db.embeddings, UKBENCH_TOP)
        out["results"] = {"ns_score": protocols.ukbench_ns_score(top, ds.groups, top=UKBENCH_TOP)}
    else:
        raise ValueError(f"{ds.name}: the test set carries no ground truth")
    return out


def format_report(report: dict) -> list[str]:
    """The printed summary: percentages with 2 decimals (N-S score as is, max 4)."""
    lines = [f"{report['protocol']}: {report['n_queries']} queries, "
             f"{report['n_database']} database images, {report['n_failed']} skipped"]
    res = report["results"]
    if "medium" in res:
        kappas = res["medium"]["kappas"]
        lines.append(f"{'':8s}{'mAP':>8s}" + "".join(f"{'mP@' + str(k):>8s}" for k in kappas))
        for p, name in (("easy", "Easy"), ("medium", "Medium"), ("hard", "Hard")):
            vals = [res[p]["mAP"]] + list(res[p]["mP_at_kappas"])
            lines.append(f"{name:8s}" + "".join(f"{100 * v:8.2f}" for v in vals))
    elif f"mAP@{GLDV2_K}" in res:
        lines.append(f"mAP@{GLDV2_K}: {100 * res[f'mAP@{GLDV2_K}']:.2f}")
    else:
        lines.append(f"N-S score: {res['ns_score']:.3f} (of 4)")
    return lines


@main.command()
@click.option("--protocol", required=True, type=click.Choice(PROTOCOL_CHOICES),
              help="Test set and its protocol.")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The test set's folder (layouts: components/retrieval/datasets.py).")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The pushed SavedModel: a version folder or the base with version folders.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Images per model call.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Also write the full results (per-query APs, failures) as JSON here.")
@click.option("--scales", default=None, metavar="S1,S2,...",
              help="Multi-scale descriptor scales, e.g. 0.7071,1,1.4142 (default: those the model "
                   "was exported with).")
def evaluate(data_dir, model_dir, protocol, batch_size, json_out, scales):
    """Score a pushed model on a standard retrieval benchmark."""
    from components.retrieval import datasets
    from components.retrieval.embedder import Embedder

    try:
        ds = datasets.load(protocol, data_dir)
    except (OSError, ValueError) as err:
        raise click.ClickException(f"cannot load {protocol} from {data_dir}: {err}")
    try:
        scale_list = [float(v) for v in scales.split(",")] if scales else None
    except ValueError:
        raise click.BadParameter(f"{scales!r} is not a comma-separated list of numbers", param_hint="--scales")
    try:
        embedder = Embedder(model_dir, scales=scale_list)
    except (OSError, ValueError) as err:
        raise click.ClickException(f"cannot load the model: {err}")
    report = evaluate_set(ds, embedder, batch_size)
    for line in format_report(report):
        click.echo(line)
    if json_out:
        with open(json_out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
        click.echo(f"wrote {json_out}")
