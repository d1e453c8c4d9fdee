"""The whole pipeline on a tiny config, started as a user starts it: `dolg-tfx run` from a
folder outside the repository, through a fresh entry into the environment, with relative paths
(the data folder's name has a space), in the default quiet console. One run feeds every test
here: ingestion with bad files, training, evaluation, blessing, push, serving, the console, the
log file, report.html and how a real browser renders it; one rerun covers caching and the
NOT_BLESSED path. (An added image re-running ingestion through TFX's cache is checked on
ImageExampleGen alone in tests/components/test_ingest_fingerprint.py.)"""
import base64
import html.parser
import io
import itertools
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from PIL import Image
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from components.image_example_gen.inputs import display_name, from_display_name
from conftest import REPO, load_fixture
from pipeline import demo_report, local_runner
from pipeline.config import load_config
from pipeline.demo_data import generate_landmarks
from test_host_paths import DEVENV, outside_env

bad_images = load_fixture("bad_images")
CONFIG = load_config("tiny")
SECTIONS = ("run", "ingestion", "training", "evaluation", "retrieval", "attention", "model-card")
COMPONENTS = ("ImageExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomalyGate",
              "Transform", "Trainer", "Evaluator", "Pusher")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("user")
    data = home / "city photos"
    generate_landmarks(data, n_landmarks=8, views_per_landmark=5, size=72, seed=3)
    zoo = bad_images.write_image_zoo(data)  # labels alpha/beta/gamma beside the landmarks
    zoo.update(bad_images.write_pipeline_extras(data, display_name))  # bombs, odd names, EXIF
    run = subprocess.run([str(DEVENV), "run", "dolg-tfx", "run", "--data", "city photos", "--output", "out",
                          "--preset", "tiny"],
                         cwd=home, env=outside_env(), capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = local_runner.summarise(local_runner.Layout(str(home / "out")))
    return {"home": home, "data": data, "zoo": zoo, "summary": summary, "out": home / "out",
            "stdout": run.stdout, "stderr": run.stderr}


@pytest.mark.slow
def test_relative_paths_resolve_against_the_callers_folder(first_run):
    home = first_run["home"]
    serving = first_run["out"] / "serving_model"
    versions = [p for p in serving.iterdir() if (p / "saved_model.pb").is_file()]
    assert len(versions) == 1, list(serving.iterdir())
    assert not (REPO / "out").exists()
    # Every absolute path the run printed is under the caller's folder (no environment path).
    printed = [w.strip("(),:") for w in first_run["stdout"].split() if w.startswith(("/", "(/"))]
    assert printed and all(p.startswith(str(home)) for p in printed), printed
    with open(first_run["summary"]["ingestion_report"], "rb") as f:
        rejected = [json.loads(line) for line in f]
    assert rejected and all(r["path"].startswith(str(first_run["data"]) + os.sep) for r in rejected)


@pytest.mark.slow
def test_the_default_console_is_quiet_and_names_the_log(first_run):
    console = first_run["stdout"] + first_run["stderr"]
    for noise in ("WARNING", "cuInit", "deprecated", "oneDNN", "I0000", "W0000", "E0000"):
        assert noise not in console, f"{noise!r} on the console:\n{console[-3000:]}"
    for name in COMPONENTS:
        assert f"  {name} ...\n" in console and f"  {name} done in " in console, name
    assert "Transform done in" in console and "labels in the vocabulary" in console
    rejected = first_run["summary"]["ingestion"]["rejected"]
    assert "ImageExampleGen done in" in console and f"{rejected} rejected" in console
    assert "Pusher done in" in console and "pushed version" in console
    steps = load_config("tiny").train_steps
    assert f"] {steps}/{steps} steps  loss " in console   # the Trainer's progress bar, last state
    log = _named_log(console)
    assert log.parent == first_run["out"] / "logs" and log.name.startswith("run-")
    last = console.strip().splitlines()[-2:]
    assert any(str(log) in line for line in last) and any("report.html" in line for line in last), last
    # The log file has what the console left out: TFX's INFO records and TensorFlow's notices.
    text = log.read_text(errors="replace")
    assert "Component Trainer is running." in text and "WARNING" in text


def _named_log(console: str) -> pathlib.Path:
    [path] = re.findall(r"^Full log: (\S+\.log)$", console, flags=re.M)
    return pathlib.Path(path)


class _Report(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.section_ids, self.images, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section_ids.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs["src"])

    def handle_data(self, data):
        self.text.append(data)


@pytest.mark.slow
def test_report_has_every_section_with_the_runs_own_numbers(first_run):
    page = (first_run["out"] / "report.html").read_text(encoding="utf-8")
    parsed = _Report()
    parsed.feed(page)
    assert parsed.section_ids == list(SECTIONS)
    text = " ".join(parsed.text)
    # The Evaluator's mAP, as the run summary printed it, is the report's.
    summary_map = next(w for w in first_run["stdout"].split() if w.startswith("retrieval_mAP="))
    assert f"{float(summary_map.split('=')[1].rstrip(',')):.4f}" in text
    for reason, count in first_run["summary"]["ingestion"]["reasons"].items():
        assert f"{reason}: {count}" in text, reason   # each reason's heading with its count
    assert "BLESSED" in text and "serving_default" in text
    assert "<svg" in page and "epoch_loss" in page          # the training curves
    assert len(parsed.images) >= 2                          # retrieval grids and attention maps
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")     # self-contained
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            assert im.width > 100 and im.height > 50
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page


@pytest.mark.slow
def test_a_real_browser_renders_the_report(first_run, tmp_path):
    # Debian's chromium, installed into the environment by the test set-up where missing.
    subprocess.run([str(DEVENV), "packages", "chromium", "fonts-dejavu-core"], check=True, timeout=900,
                   capture_output=True)
    shot = tmp_path / "report.png"
    run = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400", f"--screenshot={shot}",
         (first_run["out"] / "report.html").as_uri()],
        capture_output=True, text=True, timeout=300)
    assert shot.is_file(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.shape == (2400, 1280)
    assert pixels.std() > 20                       # not blank
    assert (pixels < 128).mean() > 0.01            # text and pictures, not just background
    ink_columns = np.flatnonzero((pixels < 200).any(axis=0))
    assert ink_columns.min() > 20 and ink_columns.max() < 1260  # laid out inside the window


CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HEADLINE = ("retrieval_mAP", "retrieval_mAP@100", "recall@1", "recall@5", "recall@10")
STACK = ("tfx", "tensorflow", "tf-keras", "tensorflow-transform", "tensorflow-model-analysis", "apache-beam",
         "ml-metadata")


class _Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def text(self):
        return " ".join(" ".join((c if isinstance(c, str) else c.text()) for c in self.children).split())

    def find_all(self, tag):
        for child in self.children:
            if isinstance(child, _Node):
                if child.tag == tag:
                    yield child
                yield from child.find_all(tag)

    def following(self, tag):
        """The next sibling element after this one, if it is a ``tag``."""
        siblings = [c for c in self.parent.children if isinstance(c, _Node)]
        rest = siblings[siblings.index(self) + 1:]
        return rest[0] if rest and rest[0].tag == tag else None


class _Dom(html.parser.HTMLParser):
    """The page as a tree of _Node (enough of a DOM for the report: chromium's serialisation)."""
    VOID = {"meta", "link", "img", "br", "hr", "input", "source", "wbr"}

    def __init__(self, page):
        super().__init__()
        self.root = self.current = _Node("#document", {})
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        node = _Node(tag, attrs, self.current)
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(_Node(tag, attrs, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def _rows(table):
    return [[cell.text() for cell in row.children if isinstance(cell, _Node) and cell.tag in ("td", "th")]
            for row in table.find_all("tr")]


def _dump_dom(report, profile):
    """The DOM Chromium built from ``report`` (after parsing and layout, as a reader sees it)."""
    run = subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "<section" in run.stdout, run.stderr[-2000:]
    return run.stdout


def _report_facts(dom_text):
    """Every fact the rendered report states, by section: its tables (header and rows), its
    headings with their lists, its paragraphs, its charts (label, axis texts, points) and its
    pictures (caption, decoded size). The 'report written' time is the one thing left out."""
    dom = _Dom(dom_text)
    facts = {}
    for section in dom.root.find_all("section"):
        sid = section.attrs["id"]
        pictures = []
        for figure in section.find_all("figure"):
            for img in figure.find_all("img"):
                src = img.attrs["src"]
                assert src.startswith("data:image/png;base64,"), src[:60]  # self-contained
                with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
                    im.load()
                    pixels = np.asarray(im.convert("RGB"), np.float32)
                pictures.append({"alt": img.attrs.get("alt"), "caption": figure.text(), "size": im.size,
                                 "std": float(pixels.std())})
        charts = []
        for svg in section.find_all("svg"):
            [line] = list(svg.find_all("polyline"))
            points = [tuple(map(float, p.split(","))) for p in line.attrs["points"].split()]
            charts.append({"name": svg.attrs.get("aria-label"), "texts": [t.text() for t in svg.find_all("text")],
                           "points": points, "dots": len(list(svg.find_all("circle")))})
        facts[sid] = {
            "title": next(section.find_all("h2")).text(),
            "tables": [_rows(t) for t in section.find_all("table")],
            "lists": {h.text(): [li.text() for li in (h.following("ul") or _Node("ul", {})).find_all("li")]
                      for h in section.find_all("h3")},
            "paragraphs": [p.text() for p in section.find_all("p")],
            "charts": charts, "pictures": pictures}
    return facts


def _words(text):
    """Text as a rendered DOM's text reads (runs of white space as one space)."""
    return " ".join(text.split())


def _without_pixels(facts):
    """The facts without each picture's pixel spread (float rounding of a re-embedding)."""
    return {sid: {**f, "pictures": [{k: v for k, v in p.items() if k != "std"} for p in f["pictures"]]}
            for sid, f in facts.items()}


def _table(facts, section, first_cell):
    """The table of ``section`` whose first row starts with ``first_cell``, as {first cell: rest}."""
    [table] = [t for t in facts[section]["tables"] if t and t[0][0] == first_cell]
    return {row[0]: row[1:] for row in table}


def _events(out):
    """{tag: {step: value}} of the Trainer's TensorBoard events, read here, not by run_facts."""
    [run] = (out / "pipeline" / "Trainer" / "model_run").iterdir()
    series = {}
    for name in sorted((run / "tensorboard" / "train").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(name)):
            for value in event.summary.value:
                if value.tag.startswith(("epoch_", "batch_")):  # scalars (not the model graph's JSON)
                    number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                    series.setdefault(value.tag, {})[int(event.step)] = number
    return series


def _assert_report_states_the_runs_facts(facts, first_run):
    """Each section of a rendered report against the run's own records, read here: ML Metadata
    (component states and times), the ingestion report file, TFMA's metrics, the Trainer's
    event files, the installed packages, the held-out split and the pushed SavedModel."""
    import importlib.metadata as md

    summary, out = first_run["summary"], first_run["out"]
    assert list(facts) == list(SECTIONS)
    # The run: what was run on what, and each component's state and wall time from ML Metadata.
    run = _table(facts, "run", "started")
    assert run["data"] == [str(first_run["data"])] and run["output"] == [str(out)] and run["preset"] == ["tiny"]
    _, _, executions = local_runner.latest_run_executions(local_runner.Layout(str(out)))
    seconds = {name: max(e.last_update_time_since_epoch - e.create_time_since_epoch, 0) / 1000.0
               for name, e in executions.items()}
    components = _table(facts, "run", "component")
    assert set(components) - {"component"} == set(executions) >= set(COMPONENTS)
    for name, execution in executions.items():
        assert components[name] == [local_runner._state(execution), str(round(seconds[name], 1))], name
    assert run["components' time (sum)"] == [f"{sum(seconds.values()):.1f} s"]
    stack = _table(facts, "run", "package")
    assert {k: v[0] for k, v in stack.items() if k != "package"} == {name: md.version(name) for name in STACK}
    # Ingestion: the counts, then each reason with its count and its first 20 paths in path order.
    ing = summary["ingestion"]
    counts = _table(facts, "ingestion", "files seen")
    assert counts == {"files seen": [str(ing["files_seen"])], "emitted": [str(ing["emitted_total"])],
                      "train": [str(ing["emitted"]["train"])], "eval (held-out labels)": [str(ing["emitted"]["eval"])],
                      "rejected": [str(ing["rejected"])],
                      "EXIF-rotated (turned upright)": [str(ing.get("exif_rotated", 0))]}
    with open(summary["ingestion_report"]) as f:
        rejected = [json.loads(line) for line in f if line.strip()]
    by_reason = {}
    for row in rejected:
        by_reason.setdefault(row["reason"], []).append(row["path"])
    assert len(rejected) == ing["rejected"] == sum(v["expect"] == "reject" for v in first_run["zoo"].values())
    assert facts["ingestion"]["lists"] == {f"{reason}: {len(paths)}": [_words(p) for p in sorted(paths)[:20]]
                                           for reason, paths in by_reason.items()}
    # Training: one chart per curve the Trainer logged; the learning rate drawn point by point.
    events = _events(out)
    charts = {c["name"]: c for c in facts["training"]["charts"]}
    assert set(charts) == {"epoch_loss", "epoch_learning_rate", "batch_loss"} & set(events) and "epoch_learning_rate" in charts
    for name, chart in charts.items():
        steps, values = zip(*sorted(events[name].items()))
        assert chart["dots"] == len(chart["points"]) == len(values), name
        assert chart["texts"] == [f"{max(values):.4g}", f"{min(values):.4g}", str(steps[0]), str(steps[-1]), name]
        xs, ys = zip(*chart["points"])
        assert all(a < b for a, b in zip(xs, xs[1:])), name  # in step order
        for i, j in itertools.combinations(range(len(values)), 2):  # higher value, higher on the page
            if abs(values[i] - values[j]) > 1e-3 * (max(values) - min(values)):
                assert (values[i] > values[j]) == (ys[i] < ys[j]), (name, values, ys)
    lr = [v for _, v in sorted(events["epoch_learning_rate"].items())]
    assert len(lr) == -(-CONFIG.train_steps // CONFIG.steps_per_epoch)  # one per epoch, the last one short
    # Warm-up (2 steps) ends before the first epoch: from there a cosine decay that reaches 0.
    assert 0 < lr[0] <= CONFIG.learning_rate and lr == sorted(lr, reverse=True) and lr[-1] < 1e-6, lr
    # Evaluation: the verdict, the thresholds of the tiny preset, every headline metric by name.
    paragraphs = " ".join(facts["evaluation"]["paragraphs"])
    assert "BLESSED: pushed to serving." in paragraphs and "NOT BLESSED" not in paragraphs
    assert f"Thresholds: held-out mAP ≥ {CONFIG.min_map}; no comparison with the last blessed model " \
           "(max_map_drop is null)." in paragraphs and CONFIG.max_map_drop is None
    assert "No earlier blessed model" in paragraphs
    metrics = local_runner.evaluation_metrics(
        str(next((out / "pipeline" / "Evaluator" / "evaluation").iterdir())))
    assert metrics == summary["metrics"]
    table = _table(facts, "evaluation", "metric")
    assert [k for k in table if k != "metric"] == list(HEADLINE)
    for name in HEADLINE:
        shown, baseline, change = table[name]
        assert abs(float(shown) - metrics[name]) <= 5e-5 and baseline == change == "", (name, table[name])
    # Pictures: one retrieval grid and one attention map per held-out query (the first image of
    # each of the first 4 held-out labels), each a PNG that decodes and is not blank.
    ids, _, labels = demo_report.read_split(summary["examples"])
    firsts = [ids[labels.index(label)] for label in dict.fromkeys(labels)][:4]
    for section in ("retrieval", "attention"):
        pictures = facts[section]["pictures"]
        assert [p["alt"] for p in pictures] == firsts, section
        assert [p["caption"] for p in pictures] == [_words(i) for i in firsts], section
        assert all(p["std"] > 5 for p in pictures), section
    assert all(p["size"][0] > p["size"][1] for p in facts["attention"]["pictures"])  # overlay + colour bar
    # The model card: the pushed model's signatures and the headline numbers.
    signatures = _table(facts, "model-card", "signature")
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((pathlib.Path(summary["pushed_to"]) / "saved_model.pb").read_bytes())
    [graph] = saved_model.meta_graphs
    assert set(signatures) - {"signature"} == set(graph.signature_def) >= {"serving_default", "attention"}
    def tensors(infos):  # as saved_model_cli shows them: name dtype shape
        return ", ".join(f"{k} {types_pb2.DataType.Name(v.dtype)} "
                         f"{None if v.tensor_shape.unknown_rank else [d.size for d in v.tensor_shape.dim]}"
                         for k, v in sorted(infos.items()))

    for name, signature in graph.signature_def.items():
        assert signatures[name] == [tensors(signature.inputs), tensors(signature.outputs)], name
    card = " ".join(facts["model-card"]["paragraphs"])
    for name in ("retrieval_mAP", "recall@1"):
        assert f"{name} {metrics[name]:.4f}" in card, name
    assert f"{first_run['data']}: {ing['emitted_total']} images" in card


@pytest.fixture(scope="module")
def rendered(first_run, tmp_path_factory):
    """report.html as the run wrote it, rendered by Chromium: its DOM's facts (see
    _report_facts). Read before any test rewrites the report."""
    subprocess.run([str(DEVENV), "packages", "chromium", "fonts-dejavu-core"], check=True, timeout=900,
                   capture_output=True)
    return _report_facts(_dump_dom(first_run["out"] / "report.html", tmp_path_factory.mktemp("chromium")))


@pytest.mark.slow
def test_the_rendered_report_states_the_runs_own_facts(first_run, rendered):
    """What Chromium renders of report.html, section by section, against the run's own records.

    Mutations tried, each failing it: ("attention", "Attention") dropped from run_report.SECTIONS
    (the section list differs); recall@1 and recall@5 swapped in _section_evaluation's rows
    (recall@1 shows recall@5's number)."""
    _assert_report_states_the_runs_facts(rendered, first_run)


@pytest.mark.slow
def test_the_report_command_writes_the_same_facts_again(first_run, rendered, tmp_path):
    """`dolg-tfx report OUT` on the run's output folder rewrites report.html with the same facts
    (all of them, every section; only the time it was written differs)."""
    report = first_run["out"] / "report.html"
    before = report.stat().st_mtime_ns
    run = subprocess.run([str(DEVENV), "run", "dolg-tfx", "report", "out"], cwd=first_run["home"],
                         env=outside_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"wrote {report}" in run.stdout and report.stat().st_mtime_ns != before
    again = _report_facts(_dump_dom(report, tmp_path / "profile"))
    assert _without_pixels(again) == _without_pixels(rendered)  # pictures: same names, sizes
    _assert_report_states_the_runs_facts(again, first_run)


def _numpy_map(embeddings, labels, misses_ahead=None):
    """Leave-one-out mAP written plainly: per query, AP = mean precision at each same-label hit.

    Ties as the metric breaks them (``components.retrieval.protocols``, "pessimistic"): an
    other-label item scoring >= a same-label item is ranked before it; the order among
    same-label items never matters.

    Args:
      embeddings: [N, D] float embeddings (dot product = similarity).
      labels: [N] labels; relevant = same label, the query excluded.
      misses_ahead: optional {(query, hit, miss): bool} of row indices, deciding those pairs
        whatever their scores: True ranks the other-label item ``miss`` before the same-label
        item ``hit`` in the query's ranking, False after it.

    Returns:
      The mean AP (float) over the queries with at least one other same-label item.
    """
    labels = np.asarray(labels)
    scores = embeddings @ embeddings.T
    decided = misses_ahead or {}
    aps = []
    for q in range(len(labels)):
        others = np.delete(np.arange(len(labels)), q)
        hits, misses = others[labels[others] == labels[q]], others[labels[others] != labels[q]]
        if hits.size:
            ahead = np.sort([sum(decided.get((q, h, m), scores[q, m] >= scores[q, h]) for m in misses)
                             for h in hits])                     # other-label items before each hit
            ranks = np.arange(1, hits.size + 1) + ahead          # 1-based, best hit first
            aps.append(np.mean(np.arange(1, hits.size + 1) / ranks))
    return float(np.mean(aps))


def test_ingestion_reports_exactly_the_bad_files(first_run):
    summary, zoo = first_run["summary"], first_run["zoo"]
    with open(summary["ingestion_report"]) as f:
        rejected = [json.loads(line) for line in f]
    data = str(first_run["data"])
    got = {os.path.relpath(r["path"], data) for r in rejected}
    want = {k for k, v in zoo.items() if v["expect"] == "reject"}
    assert got == want
    assert all(r["reason"] for r in rejected)
    good = 8 * 5 + sum(v["expect"] == "ok" for v in zoo.values())
    ingestion = summary["ingestion"]
    assert ingestion["emitted_total"] == good
    assert ingestion["files_seen"] == good + len(want)


def test_blessed_model_is_pushed_in_serving_layout(first_run):
    summary = first_run["summary"]
    assert summary["blessed"] is True
    pushed = pathlib.Path(summary["pushed_to"])
    assert pushed.name.isdigit() and (pushed / "saved_model.pb").exists()
    assert pushed.parent == first_run["out"] / "serving_model"


def test_serving_default_embeds_real_jpeg_bytes(first_run):
    serve = tf.saved_model.load(first_run["summary"]["pushed_to"]).signatures["serving_default"]
    jpegs = sorted(first_run["data"].glob("landmark_*/*.jpg"))[:3]
    out = serve(images=tf.constant([p.read_bytes() for p in jpegs]))["embedding"].numpy()
    assert out.shape == (3, CONFIG.model.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_evaluator_map_equals_numpy_map_on_the_same_embeddings(first_run):
    summary = first_run["summary"]
    _, images, labels = demo_report.read_split(summary["examples"], "eval")
    assert len(set(labels)) >= 2
    embeddings = demo_report.embed_saved_model(summary["model"], images)
    got = summary["metrics"]["retrieval_mAP"]
    # Not bit-for-bit the Evaluator's embeddings: it runs the ``serving_examples`` signature in
    # batches Beam's BatchElements sizes by timing and scores rows in its canonical order; this
    # runs ``serving_default`` in batches of 32. The two differ by float rounding: in 4 runs of
    # the tiny preset (trained scores crowd near 1, e.g. 0.94-1.0) a same-label/other-label
    # score gap moved by up to 5.4e-7 across batch sizes, and a score by up to 2.4e-7 with the
    # product's row order. A pair closer than that may rank either way: one such swap (a
    # query's first hit at rank 3 or 4) moved the mAP by 1/960 = 0.00104 in a CI run. So the
    # Evaluator's mAP must be the numpy mAP for SOME order of the pairs within 2 * score_noise
    # (4x the measured bound), to 1e-9; with no such pair, the numpy mAP itself.
    score_noise = 2e-6
    scores, n, labels = embeddings @ embeddings.T, len(labels), np.asarray(labels)
    near = [(q, h, m) for q in range(n) for h in range(n) for m in range(n)
            if h != q and labels[h] == labels[q] != labels[m]
            and abs(scores[q, h] - scores[q, m]) <= 2 * score_noise]
    if len(near) <= 10:
        possible = {_numpy_map(embeddings, labels, dict(zip(near, ahead)))
                    for ahead in itertools.product((False, True), repeat=len(near))}
        assert min(abs(got - p) for p in possible) < 1e-9, (got, sorted(possible), near)
    else:  # too many to enumerate: the bounds (every near pair lost, every one won)
        low, high = (_numpy_map(embeddings, labels, dict.fromkeys(near, ahead)) for ahead in (True, False))
        assert low - 1e-9 <= got <= high + 1e-9, (got, low, high, len(near))


def test_serving_rejects_bad_inputs_and_keeps_serving(first_run):
    serve = tf.saved_model.load(first_run["summary"]["pushed_to"]).signatures["serving_default"]
    bad = [pathlib.Path(v["path"]).read_bytes() for v in first_run["zoo"].values() if v["expect"] == "reject"]
    bad.append(b"")
    good = next(first_run["data"].glob("landmark_*/*.jpg")).read_bytes()
    for payload in bad:
        with pytest.raises(tf.errors.InvalidArgumentError):
            serve(images=tf.constant([payload]))
        assert serve(images=tf.constant([good]))["embedding"].shape == (1, CONFIG.model.embedding_dim)


@pytest.mark.slow
def test_every_benchmark_runs_in_smoke_mode_on_this_run(first_run, tmp_path):
    """Issue 26: ``benchmarks.run_all --smoke`` runs every benchmark at its smallest size, the ones
    that read a pipeline run on this file's run (``--run``: no run of their own), so a broken
    benchmark fails the suite and not only ``make bench``. Before the rerun below, so the run
    read is the complete first one. Checked against a mutation: multi_worker's pattern for Keras'
    epoch lines put back to "ms/step" only (as it was before this test): a first epoch that
    prints "5s/step" was not matched, so dropping the first match left nothing, multi_worker
    FAILED (RuntimeError "no epoch timings after the first") and this test failed with its log.
    (In quick mode the same pattern silently dropped a real epoch instead.)"""
    from benchmarks import run_all

    scratch, out = tmp_path / "bench", tmp_path / "RESULTS.md"
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--smoke", "--run", str(first_run["out"]),
                          "--out", str(out)], cwd=REPO, env=dict(os.environ, DOLG_TFX_BENCH_SCRATCH=str(scratch)),
                         capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    modules = [module for module, *_ in run_all.BENCHMARKS]
    failed = [m for m in modules if f"[run_all] {m} FAILED" in run.stdout]
    logs = "".join(f"\n---- {m} ----\n" + (scratch / "logs-smoke" / f"{m}.log").read_text()[-3000:] for m in failed)
    assert run.returncode == 0 and not failed, run.stdout[-3000:] + run.stderr[-2000:] + logs
    text = out.read_text(encoding="utf-8")
    assert "FAILED" not in text
    assert all(f"[run_all] {m} done in " in run.stdout for m in modules), run.stdout[-3000:]
    smoke_sections = [line for line in text.splitlines() if line.startswith("## ") and line.endswith(" (smoke)")]
    assert len(smoke_sections) == len(modules), smoke_sections
    print(f"benchmarks.run_all --smoke: {wall:.0f} s; {text.split('wall time per benchmark: ')[1].split(chr(10))[0]}")


def test_a_stricter_threshold_reuses_the_cache_and_pushes_nothing(first_run):
    """One rerun for two claims: unchanged inputs are reused from the cache (thresholds do not
    retrain), and an impossible threshold is not blessed and pushes nothing. (The kill chain's
    last run shows an unchanged rerun being blessed again.)"""
    out = first_run["out"]
    before = sorted(os.listdir(out / "serving_model"))
    summary = local_runner.run(CONFIG.replace(min_map=1.01), str(first_run["data"]), str(out))
    states = summary["components"]
    for component in ("ImageExampleGen", "StatisticsGen", "ExampleValidator", "Transform", "Trainer"):
        assert states[component] == "CACHED", states
    assert states["Evaluator"] == "COMPLETE", states  # its threshold changed
    assert summary["blessed"] is False
    assert summary["pushed_to"] is None
    assert sorted(os.listdir(out / "serving_model")) == before


def test_pushed_signatures_are_what_the_clients_use(first_run):
    from components.retrieval.serving_contract import check_signatures as check_serving_signatures

    info = check_serving_signatures(first_run["summary"]["pushed_to"])  # raises on any mismatch
    assert info["embedding_dim"] == CONFIG.model.embedding_dim


def test_explain_works_from_the_pushed_model(first_run, tmp_path):
    import subprocess

    from PIL import Image

    image = next(first_run["data"].glob("landmark_*/*.jpg"))
    out = tmp_path / "heat.png"
    base = pathlib.Path(first_run["summary"]["pushed_to"]).parent  # the TF Serving base folder
    run = subprocess.run(["dolg-tfx", "explain", str(image), "--model", str(base), "-o", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with Image.open(image) as original, Image.open(out) as heat:
        # the overlay at the image's own size, the colour bar to its right
        assert heat.height == original.height and heat.width > original.width
        overlay = np.asarray(heat.convert("RGB"))[:, :original.width]
        assert overlay.std() > 0
    serve = tf.saved_model.load(first_run["summary"]["pushed_to"]).signatures["attention"]
    att = serve(image=tf.constant(image.read_bytes()))["attention"].numpy()
    # softplus is positive in exact arithmetic but underflows to 0.0 in float32 below about -104,
    # which a briefly trained model reaches on background: non-negative and finite is the contract
    assert att.shape == (72, 72) and np.all(np.isfinite(att)) and np.all(att >= 0) and att.std() > 0


def test_scales_chosen_per_request(first_run):
    from components.retrieval.embedder import Embedder

    pushed = first_run["summary"]["pushed_to"]
    jpegs = [p.read_bytes() for p in sorted(first_run["data"].glob("landmark_*/*.jpg"))[:4]]
    embedder = Embedder(pushed)
    default = embedder.embed_bytes(jpegs)  # the tiny preset exports scales (1.0,)
    np.testing.assert_allclose(Embedder(pushed, scales=[1.0]).embed_bytes(jpegs), default, atol=1e-5)
    # Other scales on the same loaded model (with_scales) rather than a load each.
    multi = embedder.with_scales([0.7071, 1.0, 1.4142]).embed_bytes(jpegs)
    np.testing.assert_allclose(np.linalg.norm(multi, axis=1), 1.0, rtol=1e-5)
    assert np.abs(multi - default).max() > 1e-3
    # Averaging per-scale unit descriptors, as multi_scale_embedding does:
    parts = [embedder.with_scales([s]).embed_bytes(jpegs) for s in (0.7071, 1.0, 1.4142)]
    manual = sum(parts)
    np.testing.assert_allclose(multi, manual / np.linalg.norm(manual, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_array_equal(embedder.embed_bytes(jpegs), default)  # the original keeps its scales
    with pytest.raises(ValueError, match="scales must be positive"):
        embedder.with_scales([0.0, 1.0])


def test_trainer_takes_exactly_train_steps_steps(first_run):
    """The tiny preset's length is not a multiple of its epoch, so whole epochs would overshoot."""
    from pipeline.trainer import PROGRESS_FILE

    assert CONFIG.train_steps % CONFIG.steps_per_epoch != 0
    runs = sorted((first_run["out"] / "pipeline" / "Trainer" / "model_run").glob(f"*/{PROGRESS_FILE}"),
                  key=lambda p: int(p.parent.name))
    progress = json.loads(runs[0].read_text())
    assert progress["initial_step"] == 0 and progress["step"] == CONFIG.train_steps, progress


# ---------------------------------------------------------------- hostile bytes (issue 10)
@pytest.mark.parametrize("mode", ["serving", "transform"])
def test_real_bombs_are_refused_cheaply_by_serving_and_the_transform_graph(first_run, mode, tmp_path):
    """The bombs (100-268 Mpx, 0.5-6 GB once decoded) over the pixel cap; a 63 MB JPEG of a
    320x240 picture over the byte cap, which ingestion refuses with the same words (the run's
    max_bytes, baked into the Transform graph that serving applies)."""
    good = next(first_run["data"].glob("landmark_*/*.jpg")).read_bytes()
    padded = bad_images.padded_jpeg()
    results = load_fixture("refusal_probe").measure(
        mode, {**bad_images.bombs(), "padded": padded}, good, tmp_path, model=first_run["summary"]["pushed_to"])
    for name, out in results.items():  # each followed by a good request that must work
        want = f"{len(padded)} bytes > max_bytes {CONFIG.max_bytes}" if name == "padded" else "over the pixel cap"
        assert want in out["refused"], (name, out)
        # The padded file's 63 MB are copied into the request (and the example) whatever the verdict.
        assert out["seconds"] < (2.0 if name == "padded" else 0.5) and out["grown_mb"] < 200, (name, out)


def _transposed_by_pillow(data):
    """The photo turned upright by Pillow's ImageOps.exif_transpose, as a PNG without EXIF."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        out = io.BytesIO()
        ImageOps.exif_transpose(im).convert("RGB").save(out, "PNG")
    return out.getvalue()


def test_exif_orientations_match_pillow_in_serving_and_the_transform_graph(first_run):
    loaded = tf.saved_model.load(first_run["summary"]["pushed_to"])
    serve, transform = loaded.signatures["serving_default"], loaded.signatures["transform_features"]

    def transformed(blobs):
        examples = [load_fixture("refusal_probe").raw_example(b) for b in blobs]
        return transform(examples=tf.constant(examples))["image"].numpy()

    for fmt in ("PNG", "JPEG"):
        upright, rotated = bad_images.exif_orientations(fmt)
        files = [rotated[v] for v in range(1, 9)]
        pillow = [_transposed_by_pillow(b) for b in files]
        # The Transform graph and serving against Pillow's exif_transpose of the same bytes.
        # 1e-3 for PNG: the graph resizes before it turns the image (float sums in another
        # order: 2.3e-4 measured); a wrong turn moves values by tens.
        np.testing.assert_allclose(transformed(files), transformed(pillow), atol=2.0 if fmt == "JPEG" else 1e-3)
        got, want = (serve(images=tf.constant(b))["embedding"].numpy() for b in (files, pillow))
        np.testing.assert_allclose(got, want, atol=0.01 if fmt == "JPEG" else 1e-5)
        # And the same embedding as the upright photo (JPEG: each turn was re-encoded).
        ref = serve(images=tf.constant([upright]))["embedding"].numpy()[0]
        cosine = got @ ref
        assert (cosine > 0.99).all() if fmt == "JPEG" else np.allclose(got, ref, atol=1e-5), (fmt, cosine)


def test_formats_end_to_end(first_run):
    formats = first_run["summary"]["ingestion"]["formats"]
    assert formats["webp"] == 4 and formats["gif"] == 2 and formats["bmp"] == 2  # ingested and trained on
    serve = tf.saved_model.load(first_run["summary"]["pushed_to"]).signatures["serving_default"]
    zoo = first_run["zoo"]
    webps = [pathlib.Path(v["path"]).read_bytes() for v in zoo.values() if v["kind"].startswith("webp")]
    assert len(webps) == 3 and serve(images=tf.constant(webps))["embedding"].shape[0] == 3
    for key, name in (("gamma/photo.heic", "HEIC"), ("alpha/photo.avif", "AVIF"), ("beta/scan.tiff", "TIFF")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"{name} is not supported: convert to JPEG"):
            serve(images=tf.constant([pathlib.Path(zoo[key]["path"]).read_bytes()]))
    with open(first_run["summary"]["ingestion_report"], "rb") as f:
        reasons = {json.loads(line)["image_id"]: json.loads(line)["detail"] for line in f}
    assert reasons["gamma/photo.heic"] == "HEIC is not supported: convert to JPEG"


def test_any_file_name_is_ingested_with_a_reversible_id(first_run):
    with open(first_run["summary"]["ingestion_report"], "rb") as f:
        [json.loads(line.decode("utf-8")) for line in f]  # strict UTF-8, valid JSON
    ids = set()
    for split in ("train", "eval"):
        ids.update(i.decode("utf-8") if isinstance(i, bytes) else i
                   for i in demo_report.read_split(first_run["summary"]["examples"], split)[0])
    names = {k for k, v in first_run["zoo"].items() if v["kind"] == "awkward_name"}
    assert len(names) == len(bad_images.AWKWARD_NAMES) and names <= ids
    for image_id in names:
        assert os.path.isfile(os.path.join(os.fsencode(str(first_run["data"])),
                                           os.fsencode(from_display_name(image_id))))

