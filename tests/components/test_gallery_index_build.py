"""The gallery index's incremental build (components.gallery_index.build) and the version check
of an index against a model (model_versions.check_index_matches_model), with real SavedModels
(the stand-in: tests/fixtures/stand_in_model.py) and the real Beam embedding.

The cache key is the model's digest plus each file's path, size and modification time: the same
model pushed again under a new version reuses every embedding; a new file, or a changed one, is
the only one embedded; another model embeds everything again.
"""
import os
import pathlib
import shutil

import numpy as np
import pytest

from components.gallery_index.build import build_index, cache_dir, index_version_dir
from components.retrieval.embedder import Embedder
from components.retrieval.index import GalleryIndex
from components.retrieval.model_versions import VersionMismatch, check_index_matches_model, model_digest
from conftest import load_fixture

stand_in = load_fixture("stand_in_model")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery_build")
    serving, gallery = stand_in.pushed_model_and_gallery(root, n_landmarks=2, seed=3)
    return root, serving, gallery


def _build(root, model_dir, version, gallery):
    return build_index(str(gallery), str(model_dir), version, str(root / "gallery_index"),
                       str(root / "work" / str(version)))


def _own_embeddings(model_dir, index):
    """The model's embeddings of the index's files, computed here without the cache or Beam."""
    embedder = Embedder(str(model_dir))
    return embedder.embed_bytes([open(p, "rb").read() for p in index.paths])


def test_incremental_builds_embed_only_what_changed(setup):
    root, serving, gallery = setup
    first = _build(root, serving / "1", 1, gallery)
    assert (first.images, first.embedded, first.reused) == (6, 6, 0)
    index = GalleryIndex.load(first.index_dir)
    assert first.index_dir == index_version_dir(str(root / "gallery_index"), 1)
    assert index.model_version == 1 and len(index) == 6
    np.testing.assert_allclose(index.embeddings, _own_embeddings(serving / "1", index), atol=1e-6)

    # The same model pushed again under version 2: same digest, nothing embedded.
    shutil.copytree(serving / "1", serving / "2")
    assert model_digest(str(serving / "2")) == first.model_digest
    again = _build(root, serving / "2", 2, gallery)
    assert (again.embedded, again.reused) == (0, 6)
    second = GalleryIndex.load(again.index_dir)
    assert second.model_version == 2
    np.testing.assert_array_equal(second.embeddings, index.embeddings)

    # One image added and one touched: exactly those two are embedded, and only their label
    # folder's part is rewritten (the other part's files are not even read: same bytes, same
    # modification time).
    cache = cache_dir(str(root / "gallery_index"), first.model_digest)
    before = {p.name: p.stat().st_mtime_ns for p in pathlib.Path(cache).iterdir()}
    assert len(before) == 4  # two label folders: two parts, .npy + .json each
    added = gallery / "landmark_000" / "added.jpg"
    shutil.copy(gallery / "landmark_001" / "landmark_001_00.jpg", added)
    touched = gallery / "landmark_000" / "landmark_000_00.jpg"
    os.utime(touched, ns=(10**9, 10**9))
    third = _build(root, serving / "2", 2, gallery)
    assert (third.images, third.embedded, third.reused) == (7, 2, 5)
    after = {p.name: p.stat().st_mtime_ns for p in pathlib.Path(cache).iterdir()}
    changed = sorted(name for name in after if after[name] != before.get(name))
    assert len(changed) == 2 and len({n.split(".")[0] for n in changed}) == 1, changed  # one part, both files
    index = GalleryIndex.load(third.index_dir)
    np.testing.assert_allclose(index.embeddings, _own_embeddings(serving / "2", index), atol=1e-6)

    # Another model (other weights and width): its cache is empty, everything is embedded.
    stand_in.save_stand_in_model(serving / "3", dim=8)
    assert model_digest(str(serving / "3")) != first.model_digest
    other = _build(root, serving / "3", 3, gallery)
    assert (other.embedded, other.reused) == (7, 0)
    index = GalleryIndex.load(other.index_dir)
    assert index.dim == 8 and index.model_version == 3
    np.testing.assert_allclose(index.embeddings, _own_embeddings(serving / "3", index), atol=1e-6)


def test_version_check_names_both_versions(tmp_path):
    serving = tmp_path / "serving_model"
    stand_in.save_stand_in_model(serving / "17", dim=4)
    check_index_matches_model(17, "idx", str(serving / "17"))  # a pair: no error
    check_index_matches_model(None, "idx", str(serving / "17"))  # a hand-built index: unchecked
    with pytest.raises(VersionMismatch, match=r"built with model version 16, but the model .*/17 is version 17"):
        check_index_matches_model(16, "idx", str(serving / "17"))
    with pytest.raises(VersionMismatch, match="not a version folder"):
        check_index_matches_model(16, "idx", str(tmp_path / "Format-Serving"))


def test_search_takes_the_pushed_base_as_its_newest_complete_version(setup, tmp_path):
    """`search --index gallery_index` (the base the pipeline pushes into) means the newest
    complete version, as `--model serving_model` does; an index folder is itself; a version
    whose meta.json is missing (a copy cut short) is never chosen."""
    from click.testing import CliRunner

    from components.gallery_index.pairs import latest_index_dir
    from dolg_tfx.cli import main

    base = tmp_path / "gallery_index"
    for version in (9, 10):  # 10 after 9 numerically, though "10" < "9" as text
        GalleryIndex([f"a{version}", "b"], np.eye(2, 4, dtype=np.float32), model_version=version).save(
            str(base / str(version)))
    (base / "11").mkdir()  # incomplete: no meta.json
    (base / "_cache").mkdir()
    assert latest_index_dir(str(base)) == str(base / "10")
    assert latest_index_dir(str(base / "9")) == str(base / "9")
    assert latest_index_dir(str(tmp_path / "none")) == str(tmp_path / "none")

    # Through the CLI, on real pushed pairs (the test above built versions 1 to 3; alone, build 1).
    root, serving, gallery = setup
    pushed = root / "gallery_index"
    if not pushed.exists():
        _build(root, serving / "1", 1, gallery)
    newest = latest_index_dir(str(pushed))
    assert os.path.basename(newest) == str(max(int(p.name) for p in pushed.iterdir() if p.name.isdigit()))
    index = GalleryIndex.load(newest)
    query = index.paths[0]  # a gallery image: its nearest neighbour is itself
    run = CliRunner().invoke(main, ["search", query, "--index", str(pushed), "-k", "2"])
    assert run.exit_code == 0, run.output
    hits = [line.split("\t") for line in run.output.splitlines() if line.startswith("1\t")]
    assert hits and hits[0][2] == index.ids[0], run.output


def test_a_manifest_gallery_read_in_ranges_gives_ingestions_verdicts(setup, tmp_path, monkeypatch):
    """A CSV gallery cut into many byte ranges (one unit each, read by whichever worker gets
    it): the index holds exactly the rows ``scan_inputs`` accepts, in row order, and every other
    row fails with the reason ``scan_inputs`` gives, duplicate ids included (the first listed
    wins even when the copies are in different ranges).

    Mutation that fails it: ``assemble`` keeping every copy of a duplicated id."""
    from components.image_example_gen import scan_inputs
    from components.retrieval import gallery_parts

    root, serving, gallery = setup
    images = sorted(gallery.glob("*/*.jpg"))
    lines = ["id,landmark_id,path"] + [f"{p.stem},{p.parent.name},{p.relative_to(gallery)}" for p in images]
    lines += [f"{images[0].stem},dup,{images[1].relative_to(gallery)}",  # a duplicate id, ranges later
              ",x,",  # no id nor path
              f"gone,x,{images[0].parent.name}/gone.jpg"]  # a missing file
    manifest = tmp_path / "gallery.csv"
    manifest.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(gallery_parts, "RANGE_BYTES", 64)  # a few rows a range
    result = build_index(str(manifest), str(serving / "1"), 1, str(tmp_path / "gi"), str(tmp_path / "w"),
                         images_subdir=str(gallery))
    index = GalleryIndex.load(result.index_dir)
    listed = scan_inputs(str(manifest), str(gallery), labels_required=False)
    accepted = [c for c in listed if c.problem is None and c.image_id != "gone"]
    assert index.ids == [c.image_id for c in accepted]
    assert index.paths == [c.path for c in accepted]
    reasons = sorted(f.reason.split(":")[0] for f in result.failures)
    assert reasons == ["bad_manifest_row", "duplicate_id", "missing"], result.failures
    dup = [f for f in result.failures if f.reason.startswith("duplicate_id")]
    assert dup[0].image_id == images[0].stem and f"row {len(images) + 2}" in dup[0].reason
