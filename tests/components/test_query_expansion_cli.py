"""αQE and DBA through the commands: `index build --dba`, `search --qe`, `evaluate --qe`, and the
pipeline's index builder (build_index). The model is the stand-in SavedModel
(tests/fixtures/stand_in_model.py); expected numbers come from its signature called directly
and the dense formula written out here, never from the code under test.
"""
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from components.gallery_index.build import build_index
from components.image_example_gen import scan_inputs
from components.retrieval import protocols
from components.retrieval.index import GalleryIndex
from conftest import load_fixture
from dolg_tfx.cli import main
from pipeline.demo_data import generate_landmarks

TOL = 1e-6


dense = load_fixture("vectors").dense_expansion


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qe_cli")
    load_fixture("stand_in_model").save_stand_in_model(root / "model" / "1", dim=16)
    generate_landmarks(root / "gallery", n_landmarks=3, views_per_landmark=4, size=48, seed=11)
    candidates = scan_inputs(str(root / "gallery"), labels_required=False)
    serve = tf.saved_model.load(str(root / "model" / "1")).signatures["serving_default"]
    paths = [c.path for c in candidates]
    raw = serve(images=tf.constant([open(p, "rb").read() for p in paths]))["embedding"].numpy()
    return {"root": root, "model": root / "model" / "1", "paths": paths, "raw": raw,
            "ids": [c.image_id for c in candidates]}


def _rows(stdout):
    rows = [line.split("\t") for line in stdout.splitlines() if line.count("\t") == 3]
    return [(int(r), float(s), i) for r, s, i, _ in rows]


def _search(index_dir, image, *extra):
    return CliRunner().invoke(main, ["search", "--index", str(index_dir), str(image), "-k", "5", *extra])


def _expected_search(setup, vectors, query_row, k_qe, alpha):
    """Top-5 ids of the query (a gallery file) after αQE over ``vectors``, own row excluded."""
    q = setup["raw"][query_row:query_row + 1]
    q = dense(q, vectors, k_qe, alpha, exclude=[query_row]) if k_qe else q.astype(np.float64)
    scores = q @ np.asarray(vectors, np.float64).T
    return [setup["ids"][j] for j in np.argsort(-scores[0], kind="stable")[:5]], np.sort(scores[0])[::-1][:5]


def test_index_build_dba_and_search_uses_the_same_settings_for_queries(setup, tmp_path):
    """Fails if --dba does not augment the stored vectors by the formula, is not recorded in
    meta.json, or if search does not expand its query the same way (or does not say so)."""
    out = tmp_path / "idx"
    result = CliRunner().invoke(main, ["index", "build", "--model", str(setup["model"]), "--images",
                                       str(setup["root"] / "gallery"), "-o", str(out), "--dba", "2",
                                       "--dba-alpha", "2"])
    assert result.exit_code == 0, result.output
    assert "DBA top 2 alpha 2" in result.stdout
    assert json.loads((out / "meta.json").read_text())["dba"] == {"k": 2, "alpha": 2.0}
    index = GalleryIndex.load(str(out))
    want = dense(setup["raw"], setup["raw"], 2, 2.0, exclude=np.arange(len(setup["raw"])))
    np.testing.assert_allclose(index.embeddings, want, atol=TOL, rtol=0)

    result = _search(out, setup["paths"][5])
    assert result.exit_code == 0, result.output
    assert "gallery: DBA, top 2 neighbours, alpha 2; query: alpha QE, top 2, alpha 2" in result.stderr
    ids, scores = _expected_search(setup, index.embeddings, 5, 2, 2.0)
    got = _rows(result.stdout)
    assert [r[2] for r in got] == ids
    np.testing.assert_allclose([r[1] for r in got], scores, atol=1e-4)  # printed with 4 decimals
    raw = _search(out, setup["paths"][5], "--qe", "0")
    assert "query: not expanded (--qe 0)" in raw.stderr
    assert [r[2] for r in _rows(raw.stdout)] == _expected_search(setup, index.embeddings, 5, 0, 0)[0]


def test_search_qe_on_a_plain_index(setup, tmp_path):
    """--qe 0 prints exactly what search printed before; --qe 3 gives the dense formula's
    ranking with the query's own gallery entry left out of the expansion. Fails if the own
    entry is merged (it would count the query twice) or QE is not applied."""
    out = tmp_path / "plain"
    GalleryIndex(setup["ids"], setup["raw"], paths=setup["paths"], model=str(setup["model"])).save(str(out))
    query = setup["paths"][2]
    before, zero = _search(out, query), _search(out, query, "--qe", "0")
    assert before.exit_code == 0 and before.stdout == zero.stdout and "alpha QE" not in before.stderr
    result = _search(out, query, "--qe", "3")
    assert "gallery: not augmented; query: alpha QE, top 3, alpha 3" in result.stderr
    ids, scores = _expected_search(setup, setup["raw"], 2, 3, 3.0)
    got = _rows(result.stdout)
    assert [r[2] for r in got] == ids
    np.testing.assert_allclose([r[1] for r in got], scores, atol=1e-4)
    merged = dense(setup["raw"][2:3], setup["raw"], 3, 3.0)  # own row included: other scores
    assert np.abs(np.sort(merged @ setup["raw"].T.astype(np.float64))[0, ::-1][:5] - scores).max() > 1e-3


def test_evaluate_ukbench_with_qe(setup, tmp_path):
    """Fails if evaluate ignores --qe, merges a query's own entry into its expansion, or
    stops ranking the query itself (UKBench counts it)."""
    full = tmp_path / "ukbench" / "full"
    full.mkdir(parents=True)
    files = sorted(pathlib.Path(p) for p in setup["paths"])[:12]
    for i, p in enumerate(files):
        (full / f"ukbench{i:05d}.jpg").write_bytes(p.read_bytes())
    serve = tf.saved_model.load(str(setup["model"])).signatures["serving_default"]
    emb = serve(images=tf.constant([(full / f"ukbench{i:05d}.jpg").read_bytes() for i in range(12)]))["embedding"]
    emb = emb.numpy()
    reports = {}
    for qe in ("0", "2"):
        out = tmp_path / f"r{qe}.json"
        result = CliRunner().invoke(main, ["evaluate", "--protocol", "ukbench", "--data", str(tmp_path / "ukbench"),
                                           "--model", str(setup["model"]), "--json", str(out), "--qe", qe])
        assert result.exit_code == 0, result.output
        reports[qe] = json.loads(out.read_text())
    assert "query_expansion" not in reports["0"] and reports["2"]["query_expansion"] == {"k": 2, "alpha": 3.0}
    groups = np.arange(12) // 4
    for qe, queries in (("0", emb.astype(np.float64)), ("2", dense(emb, emb, 2, 3.0, exclude=np.arange(12)))):
        ranks = np.argsort(-(queries @ emb.T.astype(np.float64)), axis=1, kind="stable")
        want = protocols.ukbench_ns_score(ranks, groups)
        assert reports[qe]["results"]["ns_score"] == pytest.approx(want, abs=1e-9)
    assert reports["0"]["results"]["ns_score"] != reports["2"]["results"]["ns_score"]  # 3.17 vs 3.0 here


def test_pipeline_index_builder_applies_dba(setup, tmp_path):
    """The GalleryIndexer's build: fails if dba is not applied and recorded, or if the cache
    stores augmented vectors (a rebuild would then augment them twice)."""
    gallery = str(setup["root"] / "gallery")
    result = build_index(gallery, str(setup["model"]), 1, str(tmp_path / "gi"), str(tmp_path / "w"),
                         dba=2, dba_alpha=3.0)
    index = GalleryIndex.load(result.index_dir)
    assert index.dba == {"k": 2, "alpha": 3.0} and index.model_version == 1
    want = dense(setup["raw"], setup["raw"], 2, 3.0, exclude=np.arange(len(setup["raw"])))
    np.testing.assert_allclose(index.embeddings, want, atol=TOL, rtol=0)
    again = build_index(gallery, str(setup["model"]), 2, str(tmp_path / "gi"), str(tmp_path / "w2"),
                        dba=2, dba_alpha=3.0)
    assert again.reused == len(setup["ids"]) and again.embedded == 0
    np.testing.assert_allclose(GalleryIndex.load(again.index_dir).embeddings, want, atol=TOL, rtol=0)
