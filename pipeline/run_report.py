"""``report.html``: one self-contained page (styles, charts and pictures inline; readable
offline) saying what a run did: the run, ingestion, training curves, evaluation and the
blessing, retrieval examples, attention maps and a model card.

The facts come from ``run_facts`` (ML Metadata, the artifacts, the run manifest); the pictures
from the run's own held-out split, embedded by the model the run trained, through the same
serving signatures TF Serving would use.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
from typing import Optional, Sequence

import numpy as np

REPORT_FILE = "report.html"
SECTIONS = (("run", "The run"), ("ingestion", "Ingestion"), ("training", "Training"),
            ("evaluation", "Evaluation"), ("retrieval", "Retrieval examples"),
            ("attention", "Attention"), ("model-card", "Model card"))
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1d2330;background:#fff;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{border-bottom:2px solid #d9dee8;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #d9dee8;padding:.25em .6em;text-align:left}
th{background:#f3f5f9} .num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#107a3a;font-weight:600} .bad{color:#b3261e;font-weight:600} .muted{color:#687080}
img{max-width:100%;border:1px solid #d9dee8;margin:.3em 0} figure{display:inline-block;margin:.4em}
figcaption{font-size:.85em;color:#687080} code{background:#f3f5f9;padding:0 .25em}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _png_data_uri(picture) -> str:
    """A PIL image as an embedded PNG."""
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _table(rows: Sequence[Sequence], header: Optional[Sequence] = None) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(
        f'<td class="num">{_e(c)}</td>' if isinstance(c, (int, float)) else f"<td>{_e(c)}</td>" for c in row)
        + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def svg_chart(curve, width: int = 460, height: int = 200) -> str:
    """An inline SVG line chart of a ``run_facts.Curve`` with its range marked."""
    xs, ys = np.asarray(curve.steps, float), np.asarray(curve.values, float)
    left, right, top, bottom = 58, 12, 22, 30
    span_x = (xs.max() - xs.min()) or 1.0
    low, high = float(ys.min()), float(ys.max())
    span_y = (high - low) or (abs(high) or 1.0)
    px = left + (xs - xs.min()) / span_x * (width - left - right)
    py = top + (1 - (ys - low) / span_y) * (height - top - bottom)
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(px, py))
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#2456b3"/>' for x, y in zip(px, py))
    axis = f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#888"/>' \
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>'
    labels = (f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" font-size="11">{high:.4g}</text>'
              f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end" font-size="11">{low:.4g}</text>'
              f'<text x="{left}" y="{height - 10}" font-size="11">{int(xs.min())}</text>'
              f'<text x="{width - right}" y="{height - 10}" text-anchor="end" font-size="11">{int(xs.max())}</text>'
              f'<text x="{left}" y="14" font-size="12" font-weight="600">{_e(curve.name)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="{_e(curve.name)}">{axis}<polyline fill="none" stroke="#2456b3" stroke-width="2" '
            f'points="{points}"/>{dots}{labels}</svg>')


def _held_out_pictures(summary: dict, embedder=None, n_queries: int = 4, k: int = 5, n_attention: int = 4):
    """Grids of a few held-out queries with their top-k, and attention overlays: PIL images.
    ``embedder``: ``report_model(summary)`` if the caller has it already."""
    from components.retrieval import search_grid, serving_contract
    from dolg_model import explain
    from pipeline.demo_report import read_split, report_model
    from PIL import Image, ImageOps

    if not (summary.get("pushed_to") or summary.get("model")) or not summary.get("examples"):
        return [], []
    ids, images, labels = read_split(summary["examples"])
    if len(ids) < 2:
        return [], []
    embedder = embedder or report_model(summary)  # loaded once: embeddings and attention maps
    embeddings = embedder.embed_bytes(images)
    queries, seen = [], set()
    for i, label in enumerate(labels):  # one query per label, the first few labels
        if label not in seen:
            seen.add(label)
            queries.append(i)
    grids = []
    for q in queries[:n_queries]:
        scores = embeddings @ embeddings[q]
        scores[q] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        results = [(r, float(scores[j]), ids[j], labels[j], images[j]) for r, j in enumerate(top, 1)]
        grids.append((ids[q], search_grid.render_grid(images[q], labels[q], results)))
    overlays = []
    if serving_contract.has_signature(embedder.model_dir, serving_contract.ATTENTION_SIGNATURE):
        for q in queries[:n_attention]:
            rgb = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(images[q]))).convert("RGB"))
            heat = explain.unit_range(embedder.attention_map(images[q]))
            overlays.append((ids[q], explain.with_colour_bar(explain.overlay(rgb, heat))))
    return grids, overlays


def _section_run(manifest, times, total) -> str:
    rows = [("started", manifest.get("started", "?")), ("data", manifest.get("data", "?")),
            ("output", manifest.get("output", "?")), ("preset", manifest.get("preset", "?")),
            ("components' time (sum)", f"{total:.1f} s")]
    versions = manifest.get("versions", {})
    parts = [_table(rows),
             "<h3>Components</h3>",
             _table([(name, state, round(seconds, 1)) for name, (state, seconds) in times.items()],
                    ("component", "state", "seconds")),
             "<h3>Stack</h3>", _table(sorted(versions.items()), ("package", "version")),
             "<details><summary>Configuration</summary><pre>"
             + _e(json.dumps(manifest.get("config", {}), indent=1, sort_keys=True)) + "</pre></details>"]
    return "".join(parts)


def _section_ingestion(summary, rejected) -> str:
    ing = summary.get("ingestion") or {}
    if not ing:
        return '<p class="muted">No ingestion in this run.</p>'
    rows = [("files seen", ing.get("files_seen", "?")), ("emitted", ing.get("emitted_total", "?")),
            ("train", ing.get("emitted", {}).get("train", "?")), ("eval (held-out labels)", ing.get("emitted", {}).get("eval", "?")),
            ("rejected", ing.get("rejected", "?")), ("EXIF-rotated (turned upright)", ing.get("exif_rotated", 0))]
    parts = [_table(rows)]
    for reason, entry in sorted(rejected.items()):
        more = entry["count"] - len(entry["paths"])
        items = "".join(f"<li><code>{_e(p)}</code></li>" for p in entry["paths"])
        parts.append(f"<h3>{_e(reason)}: {entry['count']}</h3><ul>{items}</ul>"
                     + (f'<p class="muted">and {more} more (see the report file)</p>' if more > 0 else ""))
    parts.append(f'<p class="muted">Full report: <code>{_e(summary.get("ingestion_report", ""))}</code></p>')
    return "".join(parts)


def _section_training(curves) -> str:
    if not curves:
        return '<p class="muted">No training events in this run (the Trainer may have been reused from the cache of an earlier run).</p>'
    return "".join(f"<figure>{svg_chart(c)}</figure>" for c in curves)


def _section_evaluation(ev) -> str:
    from pipeline.run_facts import HEADLINE_METRICS

    if ev is None:
        return '<p class="muted">No evaluation in this run.</p>'
    rows = []
    for name in HEADLINE_METRICS:
        if name in ev.candidate:
            base = ev.baseline.get(name)
            change = ev.change(name)
            rows.append((name, round(ev.candidate[name], 4), "" if base is None else round(base, 4),
                         "" if change is None else f"{change:+.4f}"))
    verdict = ('<p class="ok">BLESSED: pushed to serving.</p>' if ev.blessed
               else '<p class="bad">NOT BLESSED: nothing pushed.</p>' if ev.blessed is False else "")
    thresholds = (f"<p>Thresholds: held-out mAP &ge; {_e(ev.min_map)}"
                  + (f"; at most {_e(ev.max_map_drop)} below the last blessed model" if ev.max_map_drop is not None
                     else "; no comparison with the last blessed model (max_map_drop is null)") + ".</p>")
    baseline = ("" if ev.baseline else
                '<p class="muted">No earlier blessed model: this run had nothing to compare with.</p>')
    return verdict + thresholds + _table(rows, ("metric", "this model", "last blessed", "change")) + baseline


def _section_pictures(items, what) -> str:
    if not items:
        return f'<p class="muted">No {what} (no model was trained or exported in this run).</p>'
    return "".join(f'<figure><img src="{_png_data_uri(pic)}" alt="{_e(name)}">'
                   f"<figcaption>{_e(name)}</figcaption></figure>" for name, pic in items)


def _section_model_card(summary, ev, manifest) -> str:
    from components.retrieval import serving_contract

    model = summary.get("pushed_to") or summary.get("model")
    signatures = ""
    if model:
        try:
            info = serving_contract.check_signatures(model)
            signatures = _table([(name, ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in s["inputs"].items()),
                                  ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in s["outputs"].items()))
                                 for name, s in info["signatures"].items()], ("signature", "inputs", "outputs"))
        except serving_contract.SignatureError as err:
            signatures = f'<p class="bad">{_e(err)}</p>'
    ing = summary.get("ingestion") or {}
    headline = "" if ev is None else ", ".join(f"{k} {v:.4f}" for k, v in ev.candidate.items() if k in
                                               ("retrieval_mAP", "recall@1"))
    return (
        "<h3>Intended use</h3><p>Image retrieval: an L2-normalised DOLG descriptor per image, compared by "
        "dot product, to find other photos of the same landmark or object in a gallery.</p>"
        f"<h3>Data</h3><p>{_e(manifest.get('data', '?'))}: {_e(ing.get('emitted_total', '?'))} images; "
        "labels are split, not images: the held-out labels were never seen in training.</p>"
        f"<h3>Metrics</h3><p>Leave-one-out retrieval on the held-out labels: {_e(headline or 'n/a')}.</p>"
        "<h3>Limitations</h3><ul><li>The held-out set is small and drawn from the same collection as the "
        "training data: it does not measure other cameras, seasons, regions or distractor-heavy galleries "
        "(use <code>dolg-tfx evaluate</code> on Revisited Oxford/Paris or GLDv2 for that).</li>"
        "<li>Scores are similarities, not probabilities; a threshold for 'same place' must be chosen on "
        "your own data.</li><li>Faces and people are not a use this model was trained or evaluated for.</li></ul>"
        f"<h3>Exported signatures</h3>{signatures}")


def build_html(output: str, embedder=None) -> str:
    """The report of the latest run in ``output`` (a run's output folder); ``embedder``: its
    ``report_model`` if the caller has loaded it already."""
    from pipeline import local_runner, run_facts, run_manifest
    from pipeline.config import PipelineConfig

    layout = local_runner.Layout(output)
    summary = local_runner.summarise(layout)
    manifest = run_manifest.read(output)
    config = PipelineConfig.from_json(json.dumps(manifest["config"])) if manifest.get("config") else PipelineConfig()
    times = run_facts.component_times(layout)
    ev = run_facts.evaluation(layout, summary, config)
    grids, overlays = _held_out_pictures(summary, embedder)
    bodies = {"run": _section_run(manifest, times, sum(s for _, s in times.values())),
              "ingestion": _section_ingestion(summary, run_facts.rejected_files(summary.get("ingestion_report"))),
              "training": _section_training(run_facts.training_curves(layout)),
              "evaluation": _section_evaluation(ev),
              "retrieval": "<p>Held-out queries, each with its top 5 among the other held-out images "
                           "(green frame: same label, red: another).</p>" + _section_pictures(grids, "retrieval examples"),
              "attention": "<p>Where the local branch looks (the map is relative to each image).</p>"
                           + _section_pictures(overlays, "attention maps"),
              "model-card": _section_model_card(summary, ev, manifest)}
    nav = " · ".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS)
    written = datetime.datetime.now().isoformat(timespec="seconds")
    sections = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{bodies[sid]}</section>' for sid, title in SECTIONS)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>DOLG-TFX run {_e(summary.get("run", ""))}</title>'
            f"<style>{STYLE}</style></head><body><h1>DOLG-TFX run report</h1>"
            f'<p class="muted">Run {_e(summary.get("run", ""))}, report written {written}. {nav}</p>'
            f"{sections}</body></html>")


def write_report(output: str, embedder=None) -> str:
    """Writes ``<output>/report.html`` and returns its path (``embedder``: see build_html)."""
    import tensorflow as tf

    path = f"{output.rstrip('/')}/{REPORT_FILE}"
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(build_html(output, embedder))
    return path
