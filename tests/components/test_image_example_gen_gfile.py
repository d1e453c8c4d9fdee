"""ImageExampleGen on a non-local file system: TensorFlow's in-memory ``ram://``.

``ram://`` goes through the same path as gs:// or s3:// (TFX fileio -> tf.io.gfile, no
symlinks, lexical escape check) but needs no network or credentials. The same files are
ingested from local disk and from ram:// and must give the same examples and report.
"""
import csv
import importlib.util
import io
import pathlib
import uuid

import pytest
import tensorflow as tf

from components.image_example_gen import inputs, storage
from components.images import checks
from pipeline import demo_data

REPO = pathlib.Path(__file__).resolve().parents[2]
MB = 50 * 1024 * 1024


def _load(name, path):
    # By file path, as the main test module does: no installed "tests" package may shadow ours.
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


main_tests = _load("dolg_tfx_tests_image_example_gen", REPO / "tests" / "components" / "test_image_example_gen.py")


_WRITTEN: set = set()


@pytest.fixture
def ram():
    """A fresh ram:// prefix (fixed length, so never a prefix of another), emptied afterwards.

    The in-memory file system is process-wide, so the files are removed one by one: its
    rmtree and listings match names by plain string prefix (``images`` also lists a sibling
    ``images2/x`` as a child ``2``), which the escape test provokes on purpose.
    """
    prefix = f"ram://dolg-{uuid.uuid4().hex[:12]}"
    yield prefix
    for uri in sorted(u for u in _WRITTEN if u.startswith(prefix + "/")):
        tf.io.gfile.remove(uri)
        _WRITTEN.discard(uri)


def _put(uri, data: bytes):
    tf.io.gfile.makedirs(storage.dirname(uri))
    with tf.io.gfile.GFile(uri, "wb") as f:
        f.write(data)
    _WRITTEN.add(uri)


def _copy_tree(local_root, uri_root):
    for path in sorted(pathlib.Path(local_root).rglob("*")):
        if path.is_file():
            _put(f"{uri_root}/{path.relative_to(local_root).as_posix()}", path.read_bytes())


def _comparable(result, root):
    """A run's outcome with the root location taken out, so disk and ram:// runs compare."""
    splits = {split: sorted((ex["image_id"], ex["label"], ex["format"], ex["width"], ex["height"], ex["image"])
                            for ex in exs) for split, exs in result["splits"].items()}
    rejected = [dict(r, path=r["path"][len(root):] if r["path"].startswith(root + "/") else r["path"])
                for r in result["rejected"]]
    summary = {k: v for k, v in result["summary"].items() if k not in ("input_base", "image_root")}
    return splits, rejected, summary


# --------------------------------------------------------------------------- plain helpers

def test_uri_helpers():
    assert storage.canonical("file:///data/x.csv") == "/data/x.csv"  # local: realpath check applies
    assert storage.canonical("file://localhost/data") == "/data"
    with pytest.raises(ValueError):
        storage.canonical("file://otherhost/data")
    assert storage.canonical("gs://b//data/./x/../train/") == "gs://b/data/train"
    assert storage.split("gs://b") == ("gs://b", "/")
    assert storage.is_uri("gs://b/x") and not storage.is_uri("/x") and not storage.is_uri("file:///x")
    assert storage.dirname("gs://b/data/train.csv") == "gs://b/data"
    assert storage.join("gs://b/data", "train") == "gs://b/data/train"
    assert storage.join("gs://b/data", "/images") == "gs://b/images"  # absolute: same bucket
    assert storage.join("gs://b/data", "s3://other/images") == "s3://other/images"
    assert inputs.manifest_image_root("gs://b/data/train.csv") == "gs://b/data/train"
    assert inputs.manifest_image_root("/d/train.csv", "gs://b/img") == "gs://b/img"


@pytest.mark.parametrize("relpath,expected", [
    ("a/b.jpg", "gs://b/root/a/b.jpg"),
    ("./a//c/../b.jpg", "gs://b/root/a/b.jpg"),  # lexically inside: allowed, read normalised
    ("../root/a.jpg", "gs://b/root/a.jpg"),  # leaves and comes back: inside
    ("../x.jpg", None), ("a/../../x.jpg", None), ("../root2/x.jpg", None),  # a sibling sharing the prefix
    ("/root/a.jpg", None), ("gs://other/root/a.jpg", None), ("s3://b/root/a.jpg", None),
    ("gs://b/root/a.jpg", None),  # even the same place: manifest paths are relative, always
    ("../" * 10 + "etc/passwd", None),
])
def test_lexical_containment(relpath, expected):
    if expected is None:
        with pytest.raises(checks.Rejected) as e:
            storage.contained("gs://b/root", relpath)
        assert e.value.reason == "outside_root"
    else:
        assert storage.contained("gs://b/root", relpath) == expected
    assert storage.contained("gs://b/", "../../x.jpg") == "gs://b/x.jpg"  # a bucket root holds it all


def test_read_candidate_on_ram(ram, monkeypatch):
    _put(f"{ram}/root/a/x.jpg", b"12345")
    _put(f"{ram}/outside.jpg", b"1")
    cand = lambda rel: inputs.Candidate(rel, "a", f"{ram}/root", rel)  # noqa: E731
    assert inputs.read_candidate(cand("a/x.jpg"), MB) == b"12345"
    reasons = {}
    for rel in ("../outside.jpg", "a", "a/missing.jpg"):
        with pytest.raises(checks.Rejected) as e:
            inputs.read_candidate(cand(rel), MB)
        reasons[rel] = e.value.reason
    assert reasons == {"../outside.jpg": "outside_root", "a": "unreadable", "a/missing.jpg": "missing"}
    # The byte cap is decided from stat: an oversized file is never opened.
    from tfx.dsl.io import fileio
    monkeypatch.setattr(fileio, "open", lambda *a, **k: pytest.fail("opened an oversized file"))
    with pytest.raises(checks.Rejected, match="too_many_bytes"):
        inputs.read_candidate(cand("a/x.jpg"), 4)


def test_manifest_text_is_read_as_local_open_reads_it(ram, tmp_path):
    # CRLF endings and a quoted field holding a line break: GFile's own readline drops "\r".
    text = 'id,landmark_id,path\r\n"odd\r\nid",1,a/x.jpg\r\nabc,2,\r\n'
    (tmp_path / "m.csv").write_bytes(text.encode())
    _put(f"{ram}/m.csv", text.encode())
    local = inputs.scan_inputs(str(tmp_path / "m.csv"))
    remote = inputs.scan_inputs(f"{ram}/m.csv")
    strip = lambda cs: [(c.image_id, c.label, c.relpath, c.problem) for c in cs]  # noqa: E731
    assert strip(remote) == strip(local) and remote[0].image_id == "odd\r\nid"
    assert {c.root for c in remote} == {f"{ram}/m"}
    with storage.open_text(f"{ram}/m.csv") as f:
        assert f.read() == io.StringIO(text, newline="").read()


# --------------------------------------------------------------------------- the executor

def test_folder_tree_on_ram_matches_local_disk(ram, tmp_path):
    local = tmp_path / "zoo"
    entries = main_tests.bad_images.write_image_zoo(local)
    good = pathlib.Path(next(e["path"] for e in entries.values() if e["expect"] == "ok")).read_bytes()
    (local / "alpha" / "deeper" / "sub").mkdir(parents=True)  # nested folders and a stray file
    (local / "alpha" / "deeper" / "sub" / "nested.jpg").write_bytes(good)
    (local / "stray.jpg").write_bytes(good)
    _copy_tree(local, f"{ram}/zoo")

    scanned = [c.image_id for c in inputs.scan_inputs(str(local))]
    assert [c.image_id for c in inputs.scan_inputs(f"{ram}/zoo")] == scanned  # same order, too
    on_disk = main_tests._run(local, tmp_path / "disk")
    on_ram = main_tests._run(f"{ram}/zoo", tmp_path / "ram")
    assert _comparable(on_ram, f"{ram}/zoo") == _comparable(on_disk, str(local))
    assert on_ram["summary"]["image_root"] == f"{ram}/zoo" and on_ram["summary"]["layout"] == "folder"
    main_tests._assert_invariant(on_ram, len(scanned))
    reasons = {r["image_id"]: r["reason"] for r in on_ram["rejected"]}
    assert reasons["stray.jpg"] == "no_label" and "alpha/deeper/sub/nested.jpg" not in reasons
    assert len(main_tests._emitted(on_ram)) == sum(e["expect"] == "ok" for e in entries.values()) + 1


def test_manifest_on_ram_matches_local_disk(ram, tmp_path):
    local = tmp_path / "gldv2"
    info = demo_data.write_manifest_csv(local, n_landmarks=4, views_per_landmark=2, size=32, seed=3)
    with open(info["csv"], "a", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow(["0123456789abcdef", "1", ""])  # listed, not there
    _copy_tree(local, f"{ram}/gldv2")

    on_disk = main_tests._run(info["csv"], tmp_path / "disk")
    on_ram = main_tests._run(f"{ram}/gldv2/train.csv", tmp_path / "ram")
    assert _comparable(on_ram, f"{ram}/gldv2/train") == _comparable(on_disk, info["image_root"])
    assert on_ram["summary"]["image_root"] == f"{ram}/gldv2/train"
    assert [(r["image_id"], r["reason"]) for r in on_ram["rejected"]] == [("0123456789abcdef", "missing")]
    assert len(main_tests._emitted(on_ram)) == info["n_images"]


def test_manifest_escapes_on_ram_are_reported_not_emitted(ram, tmp_path):
    info = demo_data.write_manifest_csv(tmp_path / "src", n_landmarks=2, views_per_landmark=2, size=32, seed=4)
    data = f"{ram}/bucket/data"
    _copy_tree(info["image_root"], f"{data}/images")
    image = pathlib.Path(next(iter(info["paths"].values()))).read_bytes()
    for target in (f"{data}/outside.jpg", f"{ram}/bucket/secret/x.jpg", f"{ram}/other/x.jpg",
                   f"{data}/images2/x.jpg"):
        _put(target, image)  # valid images everywhere a row tries to reach
    first_id, lid = info["rows"][0]
    first_rel = pathlib.Path(info["paths"][first_id]).relative_to(info["image_root"]).as_posix()
    escapes = {"dotdot": "../outside.jpg", "deep_dotdot": "a/b/../../../../secret/x.jpg",
               "sibling_prefix": "../images2/x.jpg", "absolute": "/bucket/data/outside.jpg",
               "other_bucket": f"{ram}/other/x.jpg", "other_scheme": "gs://bucket/data/outside.jpg"}
    rows = [[iid, lab, ""] for iid, lab in info["rows"]]
    rows += [[k, lid, rel] for k, rel in escapes.items()]
    rows += [["inside_dotdot", lid, f"x/../{first_rel}"]]  # lexically inside the root: fine
    body = io.StringIO()
    csv.writer(body, lineterminator="\n").writerows([["id", "landmark_id", "path"], *rows])
    _put(f"{data}/manifest.csv", body.getvalue().encode())

    result = main_tests._run(f"{data}/manifest.csv", tmp_path / "run", images_subdir="images")
    reasons = {r["image_id"]: r["reason"] for r in result["rejected"]}
    assert reasons == dict.fromkeys(escapes, "outside_root")
    emitted = {ex["image_id"] for ex in main_tests._emitted(result)}
    assert emitted == {r[0] for r in info["rows"]} | {"inside_dotdot"} and not emitted & set(escapes)
    assert result["summary"]["image_root"] == f"{data}/images"
    main_tests._assert_invariant(result, len(rows))
