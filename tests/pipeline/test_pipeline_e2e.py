"""The whole pipeline on a tiny config: ingestion with bad files, training, evaluation,
blessing, push, serving, caching and the NOT_BLESSED path."""
import io
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from components.image_example_gen.inputs import display_name, from_display_name
from conftest import load_fixture
from pipeline import demo_report, local_runner
from pipeline.config import load_config
from pipeline.demo_data import generate_landmarks

bad_images = load_fixture("bad_images")
CONFIG = load_config("tiny")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    generate_landmarks(data, n_landmarks=8, views_per_landmark=5, size=72, seed=3)
    zoo = bad_images.write_image_zoo(data)  # labels alpha/beta/gamma beside the landmarks
    zoo.update(bad_images.write_pipeline_extras(data, display_name))  # bombs, odd names, EXIF
    summary = local_runner.run(CONFIG, str(data), str(root / "out"))
    return {"root": root, "data": data, "zoo": zoo, "summary": summary}


def _numpy_map(embeddings, labels):
    """Leave-one-out mAP written plainly: full sort per query, AP = mean precision at hits."""
    labels = np.asarray(labels)
    scores = embeddings @ embeddings.T
    aps = []
    for q in range(len(labels)):
        others = np.delete(np.arange(len(labels)), q)
        order = others[np.argsort(-scores[q, others], kind="stable")]
        hits = labels[order] == labels[q]
        if hits.any():
            ranks = np.flatnonzero(hits) + 1
            aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
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
    assert pushed.parent == first_run["root"] / "out" / "serving_model"


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
    expected = _numpy_map(embeddings, labels)
    assert summary["metrics"]["retrieval_mAP"] == pytest.approx(expected, abs=1e-6)


def test_serving_rejects_bad_inputs_and_keeps_serving(first_run):
    serve = tf.saved_model.load(first_run["summary"]["pushed_to"]).signatures["serving_default"]
    bad = [pathlib.Path(v["path"]).read_bytes() for v in first_run["zoo"].values() if v["expect"] == "reject"]
    bad.append(b"")
    good = next(first_run["data"].glob("landmark_*/*.jpg")).read_bytes()
    for payload in bad:
        with pytest.raises(tf.errors.InvalidArgumentError):
            serve(images=tf.constant([payload]))
        assert serve(images=tf.constant([good]))["embedding"].shape == (1, CONFIG.model.embedding_dim)


def test_a_stricter_threshold_reuses_the_cache_and_pushes_nothing(first_run):
    """One rerun for two claims: unchanged inputs are reused from the cache (thresholds do not
    retrain), and an impossible threshold is not blessed and pushes nothing. (The kill chain's
    last run shows an unchanged rerun being blessed again.)"""
    out = first_run["root"] / "out"
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
    default = Embedder(pushed).embed_bytes(jpegs)  # the tiny preset exports scales (1.0,)
    np.testing.assert_allclose(Embedder(pushed, scales=[1.0]).embed_bytes(jpegs), default, atol=1e-5)
    multi = Embedder(pushed, scales=[0.7071, 1.0, 1.4142]).embed_bytes(jpegs)
    np.testing.assert_allclose(np.linalg.norm(multi, axis=1), 1.0, rtol=1e-5)
    assert np.abs(multi - default).max() > 1e-3
    # Averaging per-scale unit descriptors, as multi_scale_embedding does:
    parts = [Embedder(pushed, scales=[s]).embed_bytes(jpegs) for s in (0.7071, 1.0, 1.4142)]
    manual = sum(parts)
    np.testing.assert_allclose(multi, manual / np.linalg.norm(manual, axis=1, keepdims=True), atol=1e-5)


def test_added_image_reruns_ingestion(first_run):
    """Runs last: it changes the data folder."""
    extra = first_run["data"] / "landmark_000" / "added.jpg"
    extra.write_bytes(next(first_run["data"].glob("landmark_001/*.jpg")).read_bytes())
    summary = local_runner.run(CONFIG, str(first_run["data"]), str(first_run["root"] / "out"))
    assert summary["components"]["ImageExampleGen"] == "COMPLETE"
    assert summary["ingestion"]["emitted_total"] == first_run["summary"]["ingestion"]["emitted_total"] + 1


def test_trainer_takes_exactly_train_steps_steps(first_run):
    """The tiny preset's length is not a multiple of its epoch, so whole epochs would overshoot."""
    from pipeline.trainer import PROGRESS_FILE

    assert CONFIG.train_steps % CONFIG.steps_per_epoch != 0
    runs = sorted((first_run["root"] / "out" / "pipeline" / "Trainer" / "model_run").glob(f"*/{PROGRESS_FILE}"),
                  key=lambda p: int(p.parent.name))
    progress = json.loads(runs[0].read_text())
    assert progress["initial_step"] == 0 and progress["step"] == CONFIG.train_steps, progress


# ---------------------------------------------------------------- hostile bytes (issue 10)
@pytest.mark.parametrize("mode", ["serving", "transform"])
def test_real_bombs_are_refused_cheaply_by_serving_and_the_transform_graph(first_run, mode, tmp_path):
    good = next(first_run["data"].glob("landmark_*/*.jpg")).read_bytes()
    results = load_fixture("refusal_probe").measure(  # 100-268 Mpx, 0.5-6 GB once decoded
        mode, bad_images.bombs(), good, tmp_path, model=first_run["summary"]["pushed_to"])
    for name, out in results.items():  # each followed by a good request that must work
        assert "over the pixel cap" in out["refused"], (name, out)
        assert out["seconds"] < 0.5 and out["grown_mb"] < 200, (name, out)


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
        np.testing.assert_allclose(transformed(files), transformed(pillow), atol=2.0 if fmt == "JPEG" else 1e-4)
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

