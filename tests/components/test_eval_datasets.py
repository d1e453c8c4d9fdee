"""Tests of the benchmark loaders, the embedder and `dolg-tfx evaluate`.

Each fake test set is a handful of tiny generated images in the real layout. The evaluate
numbers are checked against ``protocols.*`` applied to embeddings taken straight from the
SavedModel's signature, ranked here with a plain argsort: that verifies the glue (loading,
cropping, ordering, failure handling), never a second implementation of a metric.
"""
import csv
import io
import json
import os
import pathlib
import pickle

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from components.retrieval import datasets, protocols
from components.retrieval.embedder import Embedder, crop_to_png
from components.retrieval.serving_contract import resolve_model_dir
from dolg_tfx.cli import main
from conftest import load_fixture

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    """The stand-in model in TF Serving's layout; the base dir is what the CLI gets."""
    base = tmp_path_factory.mktemp("model")
    load_fixture("stand_in_model").save_stand_in_model(base / "1", dim=16)
    return base


@pytest.fixture(scope="module")
def signature(model_base):
    return tf.saved_model.load(str(model_base / "1")).signatures["serving_default"]


def _direct(signature, blobs):
    """Embeddings straight from the model, bypassing every line of the code under test."""
    return signature(images=tf.constant(blobs))["embedding"].numpy()


def _write_image(path, rng, base=None, size=(48, 40)):
    """A JPEG of 4x4 colour blocks (``base`` plus noise), so the stand-in tells images apart."""
    blocks = rng.integers(0, 255, (4, 4, 3)) if base is None else base + rng.integers(-40, 40, (4, 4, 3))
    img = Image.fromarray(np.clip(blocks, 0, 255).astype(np.uint8)).resize(size, Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=95)


def _crop_reference(path, box):
    """The query crop, written independently of crop_to_png: round, clip, PNG."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    out = io.BytesIO()
    rgb.crop((max(x1, 0), max(y1, 0), min(x2, rgb.width), min(y2, rgb.height))).save(out, "PNG")
    return out.getvalue()


def _evaluate(args, tmp_path):
    out = tmp_path / "result.json"
    result = CliRunner().invoke(main, ["evaluate", *args, "--json", str(out), "--batch-size", "3"])
    return result, (json.loads(out.read_text()) if out.exists() else None)


# ------------------------------------------------------------------ revisited Oxford/Paris --
def _blocks_image(blocks, size):
    return Image.fromarray(np.clip(blocks, 0, 255).astype(np.uint8)).resize(size, Image.NEAREST)


# Query boxes: they hold the query's landmark; the rest of the query image shows the OTHER
# landmark, so a query embedded without its crop ranks the wrong landmark first.
BOXES = [[24.4, 17.6, 71.6, 54.4], [8.0, 6.0, 56.0, 42.0]]


def _make_revisited(root, rng, name="roxford5k", broken_db=None):
    """6 database images in 2 landmarks, 2 queries (one per landmark) with boxes."""
    bases = [rng.integers(0, 255, (4, 4, 3)) for _ in range(2)]
    imlist = [f"{name}_db_{i}" for i in range(6)]
    qimlist = [f"{name}_q_{i}" for i in range(2)]
    for i, n in enumerate(imlist):
        _write_image(root / "jpg" / f"{n}.jpg", rng, bases[i % 2])
    for i, n in enumerate(qimlist):
        x1, y1, x2, y2 = (int(round(v)) for v in BOXES[i])
        canvas = _blocks_image(bases[1 - i], (96, 72))
        canvas.paste(_blocks_image(bases[i], (x2 - x1, y2 - y1)), (x1, y1))
        canvas.save(root / "jpg" / f"{n}.jpg", format="JPEG", quality=95)
    if broken_db is not None:
        (root / "jpg" / f"{imlist[broken_db]}.jpg").write_bytes(b"<html>404</html>")
    # numpy arrays and lists mixed, as in the real pickles
    gnd = [{"bbx": np.array(BOXES[0]), "easy": np.array([0, 2]), "hard": [4], "junk": []},
           {"bbx": list(BOXES[1]), "easy": [1], "hard": np.array([3]), "junk": [5]}]
    with open(root / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
    return imlist, qimlist, gnd


def _expected_revisited(signature, root, imlist, qimlist, gnd, broken_db=None, crop=True):
    db_blobs = [(root / "jpg" / f"{n}.jpg").read_bytes() for n in imlist]
    if broken_db is not None:
        db_blobs[broken_db] = db_blobs[(broken_db + 1) % len(db_blobs)]  # placeholder row
    db = _direct(signature, db_blobs)
    q = _direct(signature, [_crop_reference(root / "jpg" / f"{n}.jpg", g["bbx"]) if crop
                            else (root / "jpg" / f"{n}.jpg").read_bytes()
                            for n, g in zip(qimlist, gnd)])
    scores = q @ db.T
    if broken_db is not None:
        scores[:, broken_db] = -np.inf  # a skipped database image is ranked last
    ranks = np.argsort(-scores, axis=1, kind="stable")
    return {p: protocols.revisited_map(ranks, gnd, p, (1, 5, 10)) for p in protocols.PROTOCOLS}


def test_revisited_loader_reads_revisitop_layout(tmp_path):
    rng = np.random.default_rng(1)
    imlist, qimlist, gnd = _make_revisited(tmp_path / "roxford5k", rng)
    ds = datasets.load("roxford5k", str(tmp_path))  # parent folder: data/datasets/<name>/ layout
    assert ds.db_ids == imlist and ds.query_ids == qimlist
    assert ds.query_boxes == BOXES
    assert ds.gnd[0] == {"easy": [0, 2], "hard": [4], "junk": []}
    assert all(os.path.isfile(p) for p in ds.db_paths + ds.query_paths)
    assert datasets.load("roxford5k", str(tmp_path / "roxford5k")).db_paths == ds.db_paths
    os.remove(ds.db_paths[3])
    with pytest.raises(FileNotFoundError, match="roxford5k images under .*: 1 of 8 missing"):
        datasets.load("roxford5k", str(tmp_path))


def test_revisited_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    with open(tmp_path / "gnd_rparis6k.pkl", "wb") as f:
        pickle.dump({"imlist": [], "qimlist": [], "gnd": [Evil()]}, f)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        datasets.load("rparis6k", str(tmp_path))


@pytest.mark.parametrize("name", ["roxford5k", "rparis6k"])
def test_evaluate_revisited_matches_protocol(tmp_path, model_base, signature, name):
    rng = np.random.default_rng(2)
    root = tmp_path / "data"
    imlist, qimlist, gnd = _make_revisited(root, rng, name)
    result, report = _evaluate(["--protocol", name, "--data", str(root), "--model", str(model_base)],
                               tmp_path)
    assert result.exit_code == 0, result.output
    expected = _expected_revisited(signature, root, imlist, qimlist, gnd)
    for p, want in expected.items():
        got = report["results"][p]
        assert got["mAP"] == pytest.approx(want.mAP, abs=1e-9)
        assert got["mP_at_kappas"] == pytest.approx(want.mP_at_kappas, abs=1e-9)
        assert got["AP_per_query"] == pytest.approx(want.AP_per_query, abs=1e-9)
        row = [want.mAP] + want.mP_at_kappas
        line = f"{p.capitalize():8s}" + "".join(f"{100 * v:8.2f}" for v in row)
        assert line in result.stdout.splitlines()
    assert report["n_queries"] == 2 and report["n_database"] == 6 and report["n_failed"] == 0
    assert report["model"] == str(model_base / "1")  # the base dir resolved to its version
    # The data are built so that cropping matters: without it the numbers would differ.
    uncropped = _expected_revisited(signature, root, imlist, qimlist, gnd, crop=False)
    assert expected["medium"].mAP == pytest.approx(1.0) and uncropped["medium"].mAP < 0.9


def test_evaluate_revisited_ranks_a_broken_database_image_last(tmp_path, model_base, signature):
    rng = np.random.default_rng(3)
    root = tmp_path / "data"
    imlist, qimlist, gnd = _make_revisited(root, rng, broken_db=2)  # an 'easy' positive of q0
    result, report = _evaluate(["--protocol", "roxford5k", "--data", str(root),
                                "--model", str(model_base)], tmp_path)
    assert result.exit_code == 0, result.output
    assert report["n_failed"] == 1 and report["failures"][0]["id"] == imlist[2]
    assert "Unknown image file format" in report["failures"][0]["reason"]
    assert f"skipped {root / 'jpg' / (imlist[2] + '.jpg')}" in result.stderr
    expected = _expected_revisited(signature, root, imlist, qimlist, gnd, broken_db=2)
    for p, want in expected.items():
        assert report["results"][p]["mAP"] == pytest.approx(want.mAP, abs=1e-9)


def test_failed_database_rows_rank_below_negative_scores():
    from components.retrieval.evaluation import revisited_rankings
    query = np.array([[1.0, 0.0]], np.float32)
    db = np.array([[-1.0, 0.0], [0.0, 0.0], [0.5, 0.0], [0.5, 0.0]], np.float32)  # row 1 failed
    ok = np.array([True, False, True, True])
    assert revisited_rankings(query, db, ok).tolist() == [[2, 3, 0, 1]]  # ties: lower index first


def test_query_crop_changes_the_embedding(tmp_path, model_base, signature):
    rng = np.random.default_rng(4)
    path = tmp_path / "q.jpg"
    _write_image(path, rng, size=(64, 48))
    box = [8.4, 4.0, 40.6, 30.0]
    embedder = Embedder(str(model_base))
    whole = embedder.embed_files([str(path)]).embeddings[0]
    cropped = embedder.embed_files([str(path)], boxes=[box]).embeddings[0]
    assert np.linalg.norm(whole - cropped) > 1e-2
    np.testing.assert_allclose(cropped, _direct(signature, [_crop_reference(path, box)])[0], atol=1e-6)
    with Image.open(io.BytesIO(crop_to_png(path.read_bytes(), box))) as im:
        assert im.format == "PNG" and im.size == (33, 26)  # round(40.6)-round(8.4), 30-4
    with pytest.raises(ValueError, match="empty"):
        crop_to_png(path.read_bytes(), [70, 0, 90, 10])


# ------------------------------------------------------------------ GLDv2 ------------------
def _make_gldv2(root, rng):
    bases = [rng.integers(0, 255, (4, 4, 3)) for _ in range(3)]
    index_ids = [f"{c}{c}{i}0000000000000"[:16] for i, c in enumerate("abcdef12")]
    test_ids = [f"9{c}{i}f000000000000"[:16] for i, c in enumerate("abcd")]
    for i, iid in enumerate(index_ids):
        _write_image(pathlib.Path(datasets.gldv2_path(str(root), "index", iid)), rng, bases[i % 3])
    for i, tid in enumerate(test_ids):
        _write_image(pathlib.Path(datasets.gldv2_path(str(root), "test", tid)), rng, bases[i % 3])
    for name, ids in (("index.csv", index_ids), ("test.csv", test_ids)):
        with open(root / name, "w", newline="") as f:
            csv.writer(f).writerows([["id"]] + [[i] for i in ids])
    solution = {test_ids[0]: [index_ids[0], index_ids[3], index_ids[6]],
                test_ids[1]: [index_ids[1], index_ids[4]],
                test_ids[2]: [index_ids[2]]}
    with open(root / datasets.GLDV2_SOLUTION, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "images", "Usage"])
        for i, (q, rel) in enumerate(solution.items()):
            w.writerow([q, " ".join(rel), "Public" if i % 2 else "Private"])
        w.writerow([test_ids[3], "", "Ignored"])
    return index_ids, test_ids, solution


def test_evaluate_gldv2_matches_protocol(tmp_path, model_base, signature):
    rng = np.random.default_rng(5)
    root = tmp_path / "gldv2"
    index_ids, test_ids, solution = _make_gldv2(root, rng)
    ds = datasets.load("gldv2", str(root))
    assert ds.query_ids == test_ids[:3] and ds.solution == solution and ds.db_ids == index_ids
    result, report = _evaluate(["--protocol", "gldv2", "--data", str(root),
                                "--model", str(model_base)], tmp_path)
    assert result.exit_code == 0, result.output
    db = _direct(signature, [pathlib.Path(p).read_bytes() for p in ds.db_paths])
    q = _direct(signature, [pathlib.Path(p).read_bytes() for p in ds.query_paths])
    top = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :100]
    predictions = {qid: [index_ids[j] for j in row] for qid, row in zip(ds.query_ids, top)}
    want = protocols.gldv2_map_at_k(solution, predictions, 100)
    assert report["results"]["mAP@100"] == pytest.approx(want, abs=1e-9)
    assert f"mAP@100: {100 * want:.2f}" in result.stdout


def test_gldv2_loader_rejects_unknown_relevant_ids(tmp_path):
    rng = np.random.default_rng(6)
    root = tmp_path / "gldv2"
    _, test_ids, _ = _make_gldv2(root, rng)
    with open(root / datasets.GLDV2_SOLUTION, "a", newline="") as f:
        csv.writer(f).writerow([test_ids[3], "ffff000000000000", "Private"])
    with pytest.raises(ValueError, match="not in index.csv"):
        datasets.load("gldv2", str(root))


# ------------------------------------------------------------------ UKBench ----------------
def _make_ukbench(root, rng, n_groups=3):
    for g in range(n_groups):
        base = rng.integers(0, 255, (4, 4, 3))
        for j in range(4):
            _write_image(root / "full" / f"ukbench{4 * g + j:05d}.jpg", rng, base)


def test_evaluate_ukbench_matches_protocol(tmp_path, model_base, signature):
    rng = np.random.default_rng(7)
    root = tmp_path / "ukbench"
    _make_ukbench(root, rng)
    (root / "full" / "README.txt").write_text("not an image, not a ukbench name: ignored")
    result, report = _evaluate(["--protocol", "ukbench", "--data", str(root),
                                "--model", str(model_base)], tmp_path)
    assert result.exit_code == 0, result.output
    paths = sorted((root / "full").glob("ukbench*.jpg"))
    emb = _direct(signature, [p.read_bytes() for p in paths])
    ranks = np.argsort(-(emb @ emb.T), axis=1, kind="stable")
    want = protocols.ukbench_ns_score(ranks, np.arange(len(paths)) // 4)
    assert report["results"]["ns_score"] == pytest.approx(want, abs=1e-9)
    assert f"N-S score: {want:.3f} (of 4)" in result.stdout


def test_ukbench_incomplete_group_and_broken_image(tmp_path, model_base):
    rng = np.random.default_rng(8)
    root = tmp_path / "ukbench"
    _make_ukbench(root, rng, n_groups=2)
    (root / "full" / "ukbench00005.jpg").write_bytes(b"\xff\xd8garbage")  # a broken query
    result, _ = _evaluate(["--protocol", "ukbench", "--data", str(root),
                           "--model", str(model_base)], tmp_path)
    assert result.exit_code != 0 and "N-S score is undefined" in result.output
    assert "ukbench00005.jpg" in result.stderr
    os.remove(root / "full" / "ukbench00005.jpg")
    with pytest.raises(ValueError, match="incomplete groups"):
        datasets.load("ukbench", str(root))


# ------------------------------------------------------------------ the embedder -----------
def test_resolve_model_dir_picks_the_highest_integer_version(tmp_path):
    for name in ("2", "10", "9x", "11"):
        (tmp_path / name).mkdir()
    from tensorflow.core.protobuf import saved_model_pb2

    graph = saved_model_pb2.SavedModel(meta_graphs=[{}]).SerializeToString()
    for name in ("2", "10", "9x"):
        (tmp_path / name / "saved_model.pb").write_bytes(graph)
    (tmp_path / "12").mkdir()  # a push killed inside saved_model.pb: truncated, never chosen
    (tmp_path / "12" / "saved_model.pb").write_bytes(graph[:-1])
    assert resolve_model_dir(str(tmp_path)) == str(tmp_path / "10")  # 11 has no saved_model.pb
    assert resolve_model_dir(str(tmp_path / "2")) == str(tmp_path / "2")
    with pytest.raises(FileNotFoundError):
        resolve_model_dir(str(tmp_path / "11"))


def test_embed_files_skips_and_reports_bad_files(tmp_path, model_base, signature):
    rng = np.random.default_rng(9)
    good = [tmp_path / f"g{i}.jpg" for i in range(4)]
    for p in good:
        _write_image(p, rng)
    (tmp_path / "text.jpg").write_text("<html>not found</html>")
    paths = [good[0], tmp_path / "text.jpg", good[1], tmp_path / "missing.jpg", good[2], good[3]]
    res = Embedder(str(model_base)).embed_files([str(p) for p in paths], batch_size=3)
    assert res.ids == [str(p) for p in good] and list(res.positions) == [0, 2, 4, 5]
    np.testing.assert_allclose(res.embeddings, _direct(signature, [p.read_bytes() for p in good]),
                               atol=1e-6)
    assert [(f.path, f.reason.split(":")[0]) for f in res.failures] == [
        (str(tmp_path / "text.jpg"), "InvalidArgumentError"),
        (str(tmp_path / "missing.jpg"), "FileNotFoundError")]
    assert "Unknown image file format" in res.failures[0].reason
