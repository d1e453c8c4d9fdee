"""`dolg-tfx index build` and `search` on unlabelled galleries: a flat folder of images (the
usual gallery) and a CSV with only an id or path column."""
import csv
import json
import os
import pathlib

import pytest
from click.testing import CliRunner

from components.retrieval.index import GalleryIndex
from conftest import load_fixture
from dolg_tfx.cli import main

bad_images = load_fixture("bad_images")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model"
    load_fixture("stand_in_model").save_stand_in_model(path / "1", dim=16)
    return path


def _flat_gallery(root: pathlib.Path) -> list:
    """Images directly in ``root`` (JPEG, PNG, WebP, one with a non-UTF-8 name) and one broken file."""
    root.mkdir(parents=True)
    names = []
    for k, fmt in enumerate(("JPEG", "JPEG", "PNG", "WEBP", "PNG")):
        name = f"img{k}.{fmt.lower()}"
        (root / name).write_bytes(bad_images._encode(bad_images._scene(48, 40, 80 + k), fmt))
        names.append(name)
    odd = os.path.join(os.fsencode(str(root)), b"caf\xe9.jpg")
    with open(odd, "wb") as f:
        f.write(bad_images._encode(bad_images._scene(48, 40, 90), "JPEG"))
    names.append("caf\\xe9.jpg")
    (root / "zz_broken.jpg").write_bytes(b"<html>404</html>")
    return names


def _build(model, images, out, *extra):
    return CliRunner().invoke(main, ["index", "build", "--model", str(model), "--images", str(images),
                                     "-o", str(out), *extra])


def test_flat_folder_indexes_every_image_and_searches(model, tmp_path):
    names = _flat_gallery(tmp_path / "gallery")
    result = _build(model, tmp_path / "gallery", tmp_path / "index")
    assert result.exit_code == 0, result.output
    assert f"indexed {len(names)} of {len(names) + 1} images (1 skipped)" in result.output
    index = GalleryIndex.load(str(tmp_path / "index"))
    assert sorted(index.ids) == sorted(names) and index.labels is None
    json.loads((tmp_path / "index" / "meta.json").read_bytes().decode("utf-8"))
    found = CliRunner().invoke(main, ["search", "--index", str(tmp_path / "index"),
                                      str(tmp_path / "gallery" / "img3.webp"), "-k", "3",
                                      "--grid", str(tmp_path / "grid.png")])
    assert found.exit_code == 0, found.output
    rows = [line.split("\t") for line in found.output.splitlines() if line.count("\t") == 3]
    assert rows[0][2] == "img3.webp" and rows[0][3] == "" and len(rows) == 3
    assert (tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.parametrize("column", ["path", "id"])
def test_csv_without_labels(model, tmp_path, column):
    root = tmp_path / "gallery"
    rows = []
    for k in range(4):
        iid = f"abc{k}"
        rel = f"a/b/c/{iid}.jpg" if column == "id" else f"{iid}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(bad_images._encode(bad_images._scene(48, 40, 100 + k), "JPEG"))
        rows.append({column: iid if column == "id" else rel})
    with open(tmp_path / "gallery.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[column])
        writer.writeheader()
        writer.writerows(rows)
    result = _build(model, tmp_path / "gallery.csv", tmp_path / "index")
    assert result.exit_code == 0, result.output
    assert "indexed 4 of 4 images" in result.output
    assert GalleryIndex.load(str(tmp_path / "index")).labels is None


def test_labelled_folder_keeps_its_labels(model, tmp_path):
    bad_images.write_awkward_names(tmp_path / "gallery")
    result = _build(model, tmp_path / "gallery", tmp_path / "index")
    assert result.exit_code == 0, result.output
    index = GalleryIndex.load(str(tmp_path / "index"))
    assert set(index.labels) == {"names", "lab\\xffel"} and len(index) == len(bad_images.AWKWARD_NAMES)
    for path in index.paths:  # the real paths, to open the files for the grid
        assert os.path.isfile(path)
