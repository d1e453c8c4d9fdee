"""Gallery indexes on an object store: `index build -o`, `search --index` and the pipeline's
pushed indexes (with their embedding cache) on TensorFlow's ``ram://`` filesystem, which only
``tf.io.gfile`` reaches, exactly like gs:// (``os`` and ``open`` cannot see it).

The model is the stand-in SavedModel with the pushed model's serving contract
(tests/fixtures/stand_in_model.py); the gallery is generated JPEGs; the embedding is the real
Beam pipeline.
"""
import shutil

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from components.gallery_index.build import build_index
from components.gallery_index.pairs import latest_index_dir, resolve_pair
from components.retrieval.index import GalleryIndex
from components.retrieval.model_versions import VersionMismatch, check_index_matches_model
from conftest import load_fixture
from dolg_tfx.cli import main

ram_fs = load_fixture("ram_fs")
stand_in = load_fixture("stand_in_model")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("index_ram")
    serving, gallery = stand_in.pushed_model_and_gallery(root, n_landmarks=3, seed=7)
    ram = ram_fs.fresh_prefix("index")
    yield root, serving, gallery, ram
    ram_fs.remove(ram)


def _rows(output):
    return [line.split("\t") for line in output.splitlines() if line.count("\t") == 3]


def test_index_build_and_search_on_an_object_store_match_the_local_ones(setup):
    """Mutation that fails it: ``GalleryIndex.save`` without its remote branch (numpy and
    ``open`` then write a local folder named ``ram:/...``, and ram:// holds no meta.json)."""
    root, serving, gallery, ram = setup
    runner = CliRunner()
    local, remote = str(root / "local_index"), f"{ram}/cli_index"
    for out in (local, remote):
        built = runner.invoke(main, ["index", "build", "--model", str(serving), "--images", str(gallery),
                                     "-o", out, "--batch-size", "4"])
        assert built.exit_code == 0, built.output
    assert tf.io.gfile.exists(f"{remote}/meta.json") and not (root / "ram:").exists()
    query = sorted(gallery.glob("*/*.jpg"))[4]
    answers = {}
    for where in (local, remote):
        run = runner.invoke(main, ["search", str(query), "--index", where, "-k", "5"])
        assert run.exit_code == 0, run.output
        answers[where] = _rows(run.stdout)
        assert ("through a local copy" in run.stderr) == (where == remote), run.stderr
    assert answers[local] == answers[remote] and answers[local][0][2] == f"{query.parent.name}/{query.name}"


def test_faiss_index_reads_back_from_an_object_store(setup):
    """An HNSW index (its faiss graph a file faiss can only read locally) saved to ram://
    answers like the one in memory; a folder without meta.json is refused by name."""
    _, _, _, ram = setup
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = GalleryIndex([f"g{i}" for i in range(300)], vectors, backend="hnsw")
    index.save(f"{ram}/hnsw", shard_rows=128)  # three shards
    loaded = GalleryIndex.load(f"{ram}/hnsw")
    assert loaded.backend == "hnsw" and loaded.local_copy and len(loaded.shards) == 3
    for got, want in zip(loaded.search(vectors[:20], 10), index.search(vectors[:20], 10)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    tf.io.gfile.makedirs(f"{ram}/half")
    with pytest.raises(FileNotFoundError, match=f"{ram}/half: no meta.json"):
        GalleryIndex.load(f"{ram}/half")


def test_pushed_indexes_and_their_cache_on_an_object_store(setup):
    """The pipeline's layout on ram://: gallery_index/<V> with the embedding cache beside it.
    Versions 1 and 10 exist, so listing gallery_index/1 also shows a phantom "0" (ram:// lists
    by name prefix): the newest is 10 by number, the copy of 1 takes only its own files, and
    the second build reuses the first one's embeddings from the object store's cache.

    Mutation that fails it: ``index_files.local_copy`` copying what ``listdir`` shows instead
    of the files meta.json names (the phantom "0" then fails the copy)."""
    root, serving, gallery, ram = setup
    shutil.copytree(serving / "1", serving / "10")
    base = f"{ram}/gallery_index"
    first = build_index(str(gallery), str(serving / "1"), 1, base, str(root / "work1"))
    second = build_index(str(gallery), str(serving / "10"), 10, base, str(root / "work10"))
    assert (first.embedded, first.reused, second.embedded, second.reused) == (9, 0, 0, 9)
    assert latest_index_dir(base) == f"{base}/10"
    old = GalleryIndex.load(f"{base}/1")
    new = GalleryIndex.load(latest_index_dir(base))
    assert (old.model_version, new.model_version) == (1, 10)
    np.testing.assert_array_equal(old.embeddings, new.embeddings)  # the same model's bytes

    pair = resolve_pair(base, str(serving))
    assert (pair.index_dir, pair.model_dir, pair.note) == (f"{base}/10", str(serving / "10"), None)
    query = sorted(gallery.glob("*/*.jpg"))[0]
    run = CliRunner().invoke(main, ["search", str(query), "--index", base, "--model", str(serving), "-k", "3"])
    assert run.exit_code == 0, run.output
    assert _rows(run.stdout)[0][2] == f"{query.parent.name}/{query.name}"

    # Model 11 pushed, its index not (a GalleryIndexer killed after the push): the pair
    # stays 10, and the user is told which model was passed over.
    shutil.copytree(serving / "1", serving / "11")
    pair = resolve_pair(base, str(serving))
    assert pair.index_dir == f"{base}/10" and pair.model_dir == str(serving / "10")
    assert "model version 11" in pair.note and "version 10" in pair.note
    with pytest.raises(VersionMismatch, match="version 10, but the model .*/11 is version 11"):
        check_index_matches_model(new.model_version, f"{base}/10", str(serving / "11"))
    shutil.rmtree(serving / "11")
