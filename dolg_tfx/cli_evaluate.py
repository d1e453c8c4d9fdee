"""`dolg-tfx evaluate`: a pushed model on Revisited Oxford/Paris, GLDv2 retrieval or UKBench.
Parses and prints; the scoring is ``components.retrieval.evaluation``."""
from __future__ import annotations

import json
import os
import tempfile

import click

from components.retrieval.evaluation import GLDV2_K, PROTOCOL_CHOICES


def format_report(report: dict) -> list[str]:
    """The printed summary: percentages with 2 decimals (N-S score as is, max 4)."""
    lines = [f"{report['protocol']}: {report['n_queries']} queries, "
             f"{report['n_database']} database images, {report['n_failed']} skipped"]
    res = report["results"]
    if report.get("query_expansion"):
        qe = report["query_expansion"]
        lines.append(f"ranked with alpha query expansion: top {qe['k']} merged, weights similarity^{qe['alpha']:g}")
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


@click.command()
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
@click.option("--qe", "qe", default=0, show_default=True, type=click.IntRange(min=0), metavar="K",
              help="Alpha query expansion: each query becomes the normalised sum of itself and its "
                   "top K database images, weighted by similarity^--qe-alpha, and is ranked again "
                   "(0: off).")
@click.option("--qe-alpha", default=3.0, show_default=True, type=click.FloatRange(min=0), metavar="A",
              help="The weight exponent of --qe (negative similarities weigh 0).")
@click.option("-v", "--verbose", is_flag=True,
              help="Show every log line (TensorFlow) on the console too; the full log is always kept "
                   "in a file, beside --json or else in the system's temporary folder.")
def evaluate(data_dir, model_dir, protocol, batch_size, json_out, scales, qe, qe_alpha, verbose):
    """Score a pushed model on a standard retrieval benchmark."""
    from components.retrieval import datasets
    from pipeline.console import Console, log_path

    try:
        ds = datasets.load(protocol, data_dir)
    except (OSError, ValueError) as err:
        raise click.ClickException(f"cannot load {protocol} from {data_dir}: {err}")
    try:
        scale_list = [float(v) for v in scales.split(",")] if scales else None
    except ValueError:
        raise click.BadParameter(f"{scales!r} is not a comma-separated list of numbers", param_hint="--scales")
    log = log_path(os.path.dirname(os.path.abspath(json_out)) if json_out else
                   os.path.join(tempfile.gettempdir(), "dolg-tfx"), "evaluate")
    failures = []
    try:
        # Skipped images are printed after the console, where the user reads them, not in the log.
        with Console(log, verbose) as console, console.showing_progress():
            console.say(f"Evaluating {model_dir} on {protocol} ({data_dir}); full log: {log}")
            report = _score(ds, model_dir, scale_list, batch_size, failures.append, qe, qe_alpha)
    finally:
        for f in failures:
            click.echo(f"skipped {f.path}: {f.reason}", err=True)
    for line in format_report(report):
        click.echo(line)
    if json_out:
        with open(json_out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
        click.echo(f"wrote {json_out}")
    click.echo(f"Full log: {log}")


def _score(ds, model_dir, scale_list, batch_size, report_failure, qe=0, qe_alpha=3.0) -> dict:
    from components.retrieval.embedder import Embedder
    from components.retrieval.evaluation import EvaluationError, evaluate_set

    try:
        embedder = Embedder(model_dir, scales=scale_list)
    except (OSError, ValueError) as err:
        raise click.ClickException(f"cannot load the model: {err}")
    try:
        return evaluate_set(ds, embedder, batch_size, report_failure=report_failure, qe=qe, qe_alpha=qe_alpha)
    except EvaluationError as err:
        raise click.ClickException(str(err))
