"""`dolg-tfx run` as a user starts it: from a folder outside the repository, through a fresh
entry into the environment, with relative paths (one with a space), in the default quiet mode.
One run feeds every test here: host paths, the console, the log file, report.html, and how a
real browser renders that report."""
import base64
import html.parser
import io
import json
import pathlib
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from pipeline.config import load_config
from test_host_paths import DEVENV, outside_env

SECTIONS = ("run", "ingestion", "training", "evaluation", "retrieval", "attention", "model-card")
COMPONENTS = ("ImageExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomalyGate",
              "Transform", "Trainer", "Evaluator", "Pusher")


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    from pipeline.demo_data import generate_landmarks

    home = tmp_path_factory.mktemp("user")
    data = home / "city photos"
    generate_landmarks(data, n_landmarks=6, views_per_landmark=4, size=64, seed=5)
    (data / "landmark_000" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = subprocess.run([str(DEVENV), "run", "dolg-tfx", "run", "--data", "city photos", "--output", "out",
                          "--preset", "tiny"],
                         cwd=home, env=outside_env(), capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {"home": home, "data": data, "out": home / "out", "stdout": out.stdout, "stderr": out.stderr}


@pytest.mark.slow
def test_relative_paths_resolve_against_the_callers_folder(user_run):
    home = user_run["home"]
    serving = user_run["out"] / "serving_model"
    versions = [p for p in serving.iterdir() if (p / "saved_model.pb").is_file()]
    assert len(versions) == 1, list(serving.iterdir())
    assert not (REPO / "out").exists()
    # Every absolute path the run printed is under the caller's folder (no environment path).
    printed = [w.strip("(),:") for w in user_run["stdout"].split() if w.startswith(("/", "(/"))]
    assert printed and all(p.startswith(str(home)) for p in printed), printed
    [report] = user_run["out"].rglob("rejected.jsonl")
    rejected = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r["path"] for r in rejected] == [str(user_run["data"] / "landmark_000" / "truncated.jpg")]


@pytest.mark.slow
def test_the_default_console_is_quiet_and_names_the_log(user_run):
    console = user_run["stdout"] + user_run["stderr"]
    for noise in ("WARNING", "cuInit", "deprecated", "oneDNN", "I0000", "W0000", "E0000"):
        assert noise not in console, f"{noise!r} on the console:\n{console[-3000:]}"
    for name in COMPONENTS:
        assert f"  {name} ...\n" in console and f"  {name} done in " in console, name
    assert "Transform done in" in console and "labels in the vocabulary" in console
    assert "ImageExampleGen done in" in console and "1 rejected" in console
    assert "Pusher done in" in console and "pushed version" in console
    steps = load_config("tiny").train_steps
    assert f"] {steps}/{steps} steps  loss " in console   # the Trainer's progress bar, last state
    log = _named_log(console)
    assert log.parent == user_run["out"] / "logs" and log.name.startswith("run-")
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
def test_report_has_every_section_with_the_runs_own_numbers(user_run):
    page = (user_run["out"] / "report.html").read_text(encoding="utf-8")
    parsed = _Report()
    parsed.feed(page)
    assert parsed.section_ids == list(SECTIONS)
    text = " ".join(parsed.text)
    # The Evaluator's mAP, as the run summary printed it, is the report's.
    summary_map = next(w for w in user_run["stdout"].split() if w.startswith("retrieval_mAP="))
    assert f"{float(summary_map.split('=')[1].rstrip(',')):.4f}" in text
    assert "truncated.jpg" in text and "BLESSED" in text and "serving_default" in text
    assert "<svg" in page and "epoch_loss" in page          # the training curves
    assert len(parsed.images) >= 2                          # retrieval grids and attention maps
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")     # self-contained
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            assert im.width > 100 and im.height > 50
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page


@pytest.mark.slow
def test_a_real_browser_renders_the_report(user_run, tmp_path):
    # Debian's chromium, installed into the environment by the test set-up where missing.
    subprocess.run([str(DEVENV), "packages", "chromium", "fonts-dejavu-core"], check=True, timeout=900,
                   capture_output=True)
    shot = tmp_path / "report.png"
    run = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400", f"--screenshot={shot}",
         (user_run["out"] / "report.html").as_uri()],
        capture_output=True, text=True, timeout=300)
    assert shot.is_file(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.shape == (2400, 1280)
    assert pixels.std() > 20                       # not blank
    assert (pixels < 128).mean() > 0.01            # text and pictures, not just background
    ink_columns = np.flatnonzero((pixels < 200).any(axis=0))
    assert ink_columns.min() > 20 and ink_columns.max() < 1260  # laid out inside the window
