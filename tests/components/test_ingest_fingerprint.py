"""ImageExampleGen's input fingerprint: TFX's cache reruns ingestion when the images change."""
import os

from components.image_example_gen import ImageExampleGen
from components.image_example_gen.inputs import fingerprint
from pipeline.demo_data import generate_landmarks, write_manifest_csv


def test_folder_fingerprint_follows_the_files(tmp_path):
    data = tmp_path / "data"
    generate_landmarks(data, n_landmarks=3, views_per_landmark=2, size=48, seed=1)
    first = fingerprint(str(data))
    assert first and fingerprint(str(data)) == first            # stable
    extra = data / "landmark_000" / "new.jpg"
    extra.write_bytes((data / "landmark_001" / "landmark_001_00.jpg").read_bytes())
    added = fingerprint(str(data))
    assert added != first                                         # an added image
    os.utime(extra, ns=(1, 1))
    assert fingerprint(str(data)) != added                        # an edited image (mtime)
    extra.unlink()
    assert fingerprint(str(data)) == first                        # back to the same files


def test_manifest_fingerprint_covers_csv_and_images(tmp_path):
    info = write_manifest_csv(tmp_path / "gld", n_landmarks=2, views_per_landmark=2, size=48, seed=2)
    csv_path = info["csv"]
    first = fingerprint(csv_path)
    with open(csv_path, "a") as f:
        f.write("ffffffffffffffff,123\n")
    assert fingerprint(csv_path) != first


def test_component_records_it_and_uris_get_none(tmp_path):
    data = tmp_path / "data"
    generate_landmarks(data, n_landmarks=2, views_per_landmark=2, size=48, seed=3)
    gen = ImageExampleGen(input_base=str(data))
    assert gen.exec_properties["input_fingerprint"] == fingerprint(str(data))
    assert fingerprint("gs://bucket/images") is None
    assert ImageExampleGen(input_base="gs://bucket/images").exec_properties["input_fingerprint"] is None
    # Above the limit (4 files here) no fingerprint is taken, rather than a walk per definition.
    assert ImageExampleGen(input_base=str(data), fingerprint_max_files=3).exec_properties["input_fingerprint"] is None
    assert ImageExampleGen(input_base=str(data), fingerprint_max_files=4).exec_properties["input_fingerprint"]


def test_tfx_cache_reruns_ingestion_for_an_added_image_and_only_then(tmp_path):
    """The fingerprint through TFX's real cache (LocalDagRunner, ML Metadata in SQLite): an
    unchanged folder is CACHED, one added image re-runs ingestion and is emitted. Only
    ImageExampleGen is in this pipeline: what re-runs downstream of a changed artifact is TFX's
    own rule, not ours (the full pipeline's caching is checked in test_pipeline_e2e)."""
    from tfx import v1 as tfx

    from pipeline import local_runner

    data = tmp_path / "data"
    generate_landmarks(data, n_landmarks=2, views_per_landmark=3, size=48, seed=4)
    layout = local_runner.Layout(str(tmp_path / "out"))

    def run():
        gen = ImageExampleGen(input_base=str(data), eval_fraction=0.34)
        tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
            pipeline_name="fingerprint", pipeline_root=layout.pipeline_root, components=[gen],
            enable_cache=True,
            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
                layout.metadata_path)))
        store, _, executions = local_runner.latest_run_executions(layout)
        [report] = local_runner._outputs(store, executions["ImageExampleGen"], "dolg_tfx.IngestionReport")
        summary = local_runner.read_json_artifact_file(report.uri, "summary.json")
        return local_runner._state(executions["ImageExampleGen"]), summary["emitted_total"]

    assert run() == ("COMPLETE", 6)
    assert run() == ("CACHED", 6)
    (data / "landmark_000" / "added.jpg").write_bytes((data / "landmark_001" / "landmark_001_00.jpg").read_bytes())
    assert run() == ("COMPLETE", 7)
