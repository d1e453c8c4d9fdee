"""The blessing gate end to end, through the pipeline: the Resolver hands the latest blessed
model to the Evaluator as its baseline; a candidate whose held-out mAP is more than
`max_map_drop` below it is NOT blessed and the Pusher pushes nothing; a better one is pushed.
Then the pushed DOLG model itself: what the pinned TF Serving's TensorFlow needs to load it, and
the REST / gRPC stand-ins of TF Serving serving it to the project's clients.

Four runs on one output folder, each with a small gallery (ingestion, statistics and Transform
are cached after the first):
1. "weak": two steps at a learning rate of 1e-6 (its initial weights, in effect). Nothing was
   blessed before, so only min_map gates it: blessed and pushed.
2. "better": 60 steps. Its baseline is the weak model; it beats it: blessed and pushed.
3. "worse": the weak configuration again. Its Trainer is cached, so the candidate is the weak
   model, and its baseline is now the 60-step model: more than max_map_drop worse, refused.
   (The same verdict as for a newly trained weak model, at the cost of an evaluation.)
4. "again": the better configuration again with one image added to the gallery. Trainer cached;
   evaluated against itself, so blessed; pushed again under a new version, whose index embeds
   only the added image (the rest come from the cache of that model's embeddings).
The gallery index goes with every push: gallery_index/<V> beside serving_model/<V>.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from components.retrieval.index import GalleryIndex
from conftest import REPO, load_fixture
from dolg_tfx.cli import main as cli_main
from pipeline import local_runner
from pipeline.config import load_config
from pipeline.demo_data import generate_landmarks

stand_in = load_fixture("stand_in_model")

MAX_DROP = 0.02
BASE = load_config("tiny").replace(max_map_drop=MAX_DROP, eval_fraction=0.34)
WEAK = dict(train_steps=2, steps_per_epoch=2, warmup_steps=0, learning_rate=1e-6)
BETTER = dict(train_steps=60, steps_per_epoch=60)
RUNS = {"weak": WEAK, "better": BETTER, "worse": WEAK, "again": BETTER}  # in this order
GALLERY_IMAGES = 9
MAP = "retrieval_mAP"


def _evaluator_io(output):
    """The Evaluator's input and output artifact URIs of the latest run, by channel key."""
    from ml_metadata.proto import metadata_store_pb2

    store, _, executions = local_runner.latest_run_executions(local_runner.Layout(str(output)))
    events = store.get_events_by_execution_ids([executions["Evaluator"].id])
    uris = {a.id: a.uri for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    found = {}
    for e in events:
        kind = "in" if e.type == metadata_store_pb2.Event.INPUT else "out"
        found.setdefault((kind, e.path.steps[0].key), []).append(uris[e.artifact_id])
    return found


def _map_values(evaluation_uri):
    """retrieval_mAP of the ModelEvaluation, keyed (model name, is it the diff to the baseline)."""
    import tensorflow_model_analysis as tfma

    values = {}
    for metrics in tfma.load_metrics(evaluation_uri):
        if metrics.slice_key.single_slice_keys:
            continue
        for item in metrics.metric_keys_and_values:
            if item.key.name == MAP:
                values[(item.key.model_name, item.key.is_diff)] = item.value.double_value.value
    return values


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    data, out, gallery = root / "data", root / "out", root / "gallery"
    generate_landmarks(data, n_landmarks=12, views_per_landmark=6, size=64, seed=11)
    generate_landmarks(gallery, n_landmarks=3, views_per_landmark=3, size=64, seed=5)
    results = {}
    for name, changes in RUNS.items():
        if name == "again":  # a new gallery image, from the training data's folder
            (gallery / "added").mkdir()
            shutil.copy(data / "landmark_001" / "landmark_001_01.jpg", gallery / "added" / "added.jpg")
            # The same run, first SIGKILLed in its GalleryIndexer, after the push: the run below
            # is then the rerun that must complete the pair.
            results["killed"] = _kill_in_gallery_indexer(root, BASE.replace(gallery=str(gallery), **changes),
                                                         data, out)
        summary = local_runner.run(BASE.replace(gallery=str(gallery), **changes), str(data), str(out),
                                   verbose=False)
        io = _evaluator_io(out)
        (evaluation,) = io[("out", "evaluation")]
        summary.update(versions=sorted(os.listdir(out / "serving_model")), baseline=io.get(("in", "baseline_model"), []),
                       maps=_map_values(evaluation), data=data, out=out, gallery=gallery,
                       indexes=sorted(n for n in os.listdir(out / "gallery_index") if n.isdigit()))
        results[name] = summary
        print(f"{name}: eval images {summary['ingestion']['emitted']}, {MAP}={summary['metrics'][MAP]:.4f} blessed={summary['blessed']} "
              f"pushed={summary['pushed_to']} baseline={summary['baseline']}")
    return results


def _kill_in_gallery_indexer(root, config, data, out):
    """`dolg-tfx run` with ``config`` in a child process, SIGKILLed (its whole process group,
    as the kill chain does) once ML Metadata shows its GalleryIndexer RUNNING: the Pusher has
    pushed, the index of that push is not written yet. Returns what the kill left: the states
    of the killed run and the serving and index folders' version names."""
    layout = local_runner.Layout(str(out))
    known = {c.id for c in local_runner._store(layout).get_contexts_by_type("pipeline_run")}
    config_file = root / "killed.json"
    config_file.write_text(json.dumps(config.to_dict()))
    log = root / "killed-in-GalleryIndexer.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from dolg_tfx.cli import main; main()", "run", "--data", str(data), "--output",
         str(out), "--preset", "tiny", "--config", str(config_file)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600  # a safety bound: a run that hangs must fail, not block CI
    try:
        while True:
            assert proc.poll() is None, "the run ended before its GalleryIndexer was killed:\n" + log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the GalleryIndexer never started"
            try:
                _, run, executions = local_runner.latest_run_executions(layout)
            except Exception:  # no run yet, or the writer holds the database this instant
                run = None
            if run is not None and run.id not in known and "GalleryIndexer" in executions and \
                    local_runner._state(executions["GalleryIndexer"]) == "RUNNING":
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _, _, executions = local_runner.latest_run_executions(layout)
    versions = sorted(os.listdir(out / "serving_model"), key=int)
    indexes = sorted((n for n in os.listdir(out / "gallery_index") if (out / "gallery_index" / n / "meta.json").is_file()),
                     key=int)
    # What a user searching right now gets: with the index base alone, with both bases, and
    # with the newest index named beside the newest (unindexed) model.
    query = data / "landmark_000" / "landmark_000_00.jpg"
    searches = {"index base": _search(query, "--index", out / "gallery_index"),
                "both bases": _search(query, "--index", out / "gallery_index", "--model", out / "serving_model"),
                "crossed": _search(query, "--index", out / "gallery_index" / indexes[-1],
                                   "--model", out / "serving_model" / versions[-1])}
    return {"states": {k: local_runner._state(v) for k, v in executions.items()}, "versions": versions,
            "indexes": indexes, "searches": searches}


def _model_artifact(summary):
    return os.path.dirname(summary["model"])  # summary["model"] is its Format-Serving folder


def _gate(summary):
    """(candidate mAP, baseline mAP, the difference gated on), all as the Evaluator computed them."""
    maps = summary["maps"]
    return maps[("candidate", False)], maps[("baseline", False)], maps[("candidate", True)]


def test_first_model_is_blessed_without_a_baseline(runs):
    first = runs["weak"]
    assert first["components"]["Trainer"] == "COMPLETE"
    assert first["baseline"] == []  # nothing was blessed before
    assert first["blessed"] is True and first["pushed_to"] is not None
    assert first["versions"] == [pathlib.Path(first["pushed_to"]).name]


def test_better_model_is_blessed_against_the_baseline_and_pushed(runs):
    first, better = runs["weak"], runs["better"]
    assert better["components"]["Trainer"] == "COMPLETE"
    assert better["baseline"] == [_model_artifact(first)]  # the Resolver's pick
    candidate, baseline, diff = _gate(better)
    assert diff == pytest.approx(candidate - baseline, abs=1e-6)
    assert diff > MAX_DROP, (baseline, candidate)  # really better, not just within the tolerance
    assert better["blessed"] is True
    assert better["versions"] == sorted(first["versions"] + [pathlib.Path(better["pushed_to"]).name])


def test_worse_model_is_not_blessed_and_pushes_nothing(runs):
    first, better, worse = runs["weak"], runs["better"], runs["worse"]
    assert worse["components"]["Trainer"] == "CACHED"
    assert _model_artifact(worse) == _model_artifact(first)  # the candidate is the weak model
    # The baseline is now the latest blessed model, the 60-step one, not the first.
    assert worse["baseline"] == [_model_artifact(better)]
    candidate, baseline, diff = _gate(worse)
    assert baseline == pytest.approx(better["metrics"][MAP], abs=1e-6)  # the 60-step model's mAP
    assert diff == pytest.approx(candidate - baseline, abs=1e-6)
    assert diff < -MAX_DROP, (baseline, candidate)
    assert worse["blessed"] is False
    assert worse["pushed_to"] is None
    assert worse["versions"] == better["versions"]
    # ... and no index either: the indexer saw the refusal and wrote nothing.
    assert worse["gallery_index"]["indexed"] is False
    assert worse["indexes"] == better["indexes"] == better["versions"]


# ------------------------------------------------------------------ the gallery index -----

def _version(summary):
    return pathlib.Path(summary["pushed_to"]).name


def _search(*args):
    return CliRunner().invoke(cli_main, ["search", *map(str, args)])


def test_each_push_has_its_index_tagged_with_the_version(runs):
    for name in ("weak", "better"):
        summary, version = runs[name], _version(runs[name])
        built = summary["gallery_index"]
        assert built["indexed"] is True and built["model_version"] == int(version)
        assert built["index_dir"] == str(summary["out"] / "gallery_index" / version)
        index = GalleryIndex.load(built["index_dir"])
        assert index.model_version == int(version) and len(index) == GALLERY_IMAGES
        assert index.model == summary["pushed_to"]
        # A new model: its cache was empty, every image was embedded.
        assert (built["embedded"], built["reused"]) == (GALLERY_IMAGES, 0)
    assert runs["better"]["indexes"] == runs["better"]["versions"]  # one index per pushed version


def test_search_through_the_pushed_pair_is_brute_force_over_the_pushed_model(runs):
    better = runs["better"]
    index_dir = better["gallery_index"]["index_dir"]
    index = GalleryIndex.load(index_dir)
    loaded = tf.saved_model.load(better["pushed_to"])
    blobs = [pathlib.Path(p).read_bytes() for p in index.paths]
    gallery = loaded.signatures["serving_default"](images=tf.constant(blobs))["embedding"].numpy()
    query = better["data"] / "landmark_000" / "landmark_000_00.jpg"  # not in the gallery
    q = loaded.signatures["serving_default"](images=tf.constant([query.read_bytes()]))["embedding"].numpy()[0]
    scores = gallery @ q
    top = np.argsort(-scores, kind="stable")[:5]

    result = _search(query, "--index", index_dir, "--model", better["pushed_to"], "-k", 5)
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.output.splitlines() if line.count("\t") == 3]
    assert [r[2] for r in rows] == [index.ids[i] for i in top]
    np.testing.assert_allclose([float(r[1]) for r in rows], scores[top], atol=1e-4)


def test_the_old_index_is_refused_with_the_new_model(runs):
    old, new = _version(runs["weak"]), _version(runs["better"])
    old_index = runs["weak"]["gallery_index"]["index_dir"]
    query = runs["better"]["data"] / "landmark_000" / "landmark_000_00.jpg"
    for model in (runs["better"]["pushed_to"], runs["better"]["out"] / "serving_model" / new):
        result = _search(query, "--index", old_index, "--model", model)
        assert result.exit_code != 0
        assert f"built with model version {old}, but the model" in result.output
        assert f"is version {new}" in result.output


def test_a_rerun_with_one_more_gallery_image_embeds_only_that_image(runs):
    better, again = runs["better"], runs["again"]
    assert again["components"]["Trainer"] == "CACHED"
    assert _model_artifact(again) == _model_artifact(better)  # the same model ...
    assert again["blessed"] is True and _version(again) not in better["versions"]  # ... pushed anew
    built = again["gallery_index"]
    assert built["model_version"] == int(_version(again))
    assert built["model_digest"] == better["gallery_index"]["model_digest"]
    assert (built["images"], built["embedded"], built["reused"]) == (GALLERY_IMAGES + 1, 1, GALLERY_IMAGES)
    index = GalleryIndex.load(built["index_dir"])
    assert "added/added.jpg" in index.ids and again["indexes"] == again["versions"]


def test_a_push_whose_index_was_killed_is_never_paired_with_another_models_index(runs):
    """Run 4 was first SIGKILLed in its GalleryIndexer, after its Pusher pushed version V, so
    serving_model/V stood without gallery_index/V. Searches then used the newest complete pair
    (the 60-step model's), said which model they passed over, and refused the index of one
    model with the other; the rerun completed the pair under the same V (Pusher cached), and
    a search of the two bases then takes V without a note.

    Mutation that fails it: ``pairs.resolve_pair`` taking the newest index and the newest model
    each on its own (``latest_index_dir`` and ``resolve_model_dir``): the search of both bases
    is then refused as a version mismatch."""
    killed, better, again = runs["killed"], runs["better"], runs["again"]
    assert killed["states"]["Pusher"] == "COMPLETE" and killed["states"]["GalleryIndexer"] == "RUNNING", killed
    version, old = _version(again), _version(better)
    assert killed["versions"] == better["versions"] + [version]  # the push the rerun completed
    assert killed["indexes"] == better["indexes"] and killed["indexes"][-1] == old
    assert again["components"]["Pusher"] == "CACHED" and again["components"]["GalleryIndexer"] == "COMPLETE"
    note = f"model version {version} in {better['out'] / 'serving_model'} has no complete gallery index"
    for how in ("index base", "both bases"):
        result = killed["searches"][how]
        assert result.exit_code == 0, (how, result.output)
        assert note in result.stderr and f"newest complete pair, version {old}" in result.stderr, (how, result.stderr)
        assert result.stdout.count("\t") == 3 * GALLERY_IMAGES  # every image of the 60-step model's index
    crossed = killed["searches"]["crossed"]
    assert crossed.exit_code != 0 and f"built with model version {old}, but the model" in crossed.output
    assert f"is version {version}" in crossed.output

    query = better["data"] / "landmark_000" / "landmark_000_00.jpg"
    now = _search(query, "--index", again["out"] / "gallery_index", "--model", again["out"] / "serving_model")
    assert now.exit_code == 0 and "note:" not in now.stderr, now.output
    assert again["indexes"] == again["versions"] and again["versions"][-1] == version


# ------------------------------------------------------------------ the pushed model ------

@pytest.fixture(scope="module")
def pushed(runs):
    return runs["better"]["pushed_to"]


def test_pushed_model_loads_in_the_pinned_tf_serving(pushed):
    """Every op (and op attribute) of every function of the SavedModel exists in the TensorFlow
    of the pinned tensorflow/serving image (the list was generated from that TensorFlow's
    tf.raw_ops: see its header)."""
    used, _ = stand_in.saved_model_ops(pushed)
    assert {"DecodeImage", "Conv2D", "ParseExampleV2"} <= set(used)  # the real serving graph
    assert stand_in.runtime_problems(pushed, stand_in.pinned_ops_file()) == []


def test_stand_in_servers_serve_the_pushed_model(runs, pushed):
    from dolg_tfx import serving_client as sc

    loaded = tf.saved_model.load(pushed)
    images = sorted(runs["better"]["data"].glob("landmark_*/*.jpg"))[:5]
    blobs = sc.read_images(images)
    want = loaded.signatures["serving_default"](images=tf.constant(blobs))["embedding"].numpy()
    bad = b"<html>404 Not Found</html>"
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        loaded.signatures["serving_default"](images=tf.constant([bad]))
    model_error = err.value.message.splitlines()[0]

    rest = stand_in.serve_rest(loaded)
    try:
        got = sc.RestClient(rest.url).embed(blobs, batch_size=2)
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert got.shape == (5, BASE.model.embedding_dim)
        with pytest.raises(sc.ServingError, match="HTTP 400") as refused:
            sc.RestClient(rest.url).embed([blobs[0], bad])
        assert model_error in str(refused.value)
    finally:
        rest.shutdown()
        rest.server_close()
    server, target, _ = stand_in.serve_grpc(loaded)
    try:
        with sc.GrpcClient(target) as client:
            np.testing.assert_allclose(client.embed(blobs, batch_size=3), want, atol=1e-6)
            with pytest.raises(sc.ServingError, match="INVALID_ARGUMENT") as refused:
                client.embed([bad])
        assert model_error in str(refused.value)
    finally:
        server.stop(0)
