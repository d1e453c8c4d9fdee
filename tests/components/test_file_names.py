"""Any file name a POSIX filesystem allows is ingested with a reversible, valid UTF-8 id, or
reported with a reason; never a crash, and the reports stay valid UTF-8 JSON."""
import glob
import json
import os
import pathlib

import numpy as np
import tensorflow as tf

from components.image_example_gen import inputs
from components.image_example_gen.inputs import display_name, from_display_name
from conftest import load_fixture

bad_images = load_fixture("bad_images")


def test_display_name_is_valid_utf8_and_reversible():
    rng = np.random.default_rng(0)
    samples = [bytes([b]) for b in range(1, 256) if b != ord("/")]
    samples += [bytes(rng.integers(1, 256, rng.integers(1, 40)).tolist()).replace(b"/", b"_") for _ in range(500)]
    samples += [b"\\x41", b"\\\\", b"a\\nb", "é€😀".encode()]
    for raw in samples:
        text = display_name(os.fsdecode(raw))
        text.encode("utf-8")  # strict: no lone surrogates
        assert text.isprintable() or "\\" in text, raw
        assert "\n" not in text and "\r" not in text and "\t" not in text
        assert os.fsencode(from_display_name(text)) == raw
    assert display_name(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert display_name("caf\u00e9.jpg") == "caf\u00e9.jpg"  # valid UTF-8 stays as it is


def test_fingerprint_and_scan_take_names_that_are_not_utf8(tmp_path):
    bad_images.write_awkward_names(tmp_path)
    before = inputs.fingerprint(str(tmp_path))  # crashed with UnicodeEncodeError on 0xFF
    candidates = inputs.scan_inputs(str(tmp_path))
    assert len(candidates) == len(bad_images.AWKWARD_NAMES)
    for c in candidates:
        assert c.problem is None
        c.image_id.encode("utf-8"), c.label.encode("utf-8"), c.display_path.encode("utf-8")
        assert os.path.isfile(c.path) and inputs.read_candidate(c, 1 << 20)
        assert os.fsencode(from_display_name(c.image_id)) == os.fsencode(c.relpath)
    assert {c.label for c in candidates} == {"names", "lab\\xffel"}
    (tmp_path / "names" / "added.jpg").write_bytes(b"x")
    assert inputs.fingerprint(str(tmp_path)) != before


def test_ingestion_of_awkward_names_runs_to_the_end(tmp_path):
    from tfx.types import standard_artifacts

    from components.image_example_gen.executor import Executor
    from components.image_example_gen.spec import IngestionReport

    data = tmp_path / "data"
    bad_images.write_awkward_names(data)
    broken = os.path.join(os.fsencode(str(data)), b"names", b"broken\xff\n.jpg")
    with open(broken, "wb") as f:
        f.write(b"<html>not an image</html>")
    examples, report = standard_artifacts.Examples(), IngestionReport()
    examples.uri, report.uri = str(tmp_path / "examples"), str(tmp_path / "report")
    Executor().Do({}, {"examples": [examples], "report": [report]}, {"input_base": str(data)})

    rejected = [json.loads(line.decode("utf-8"))  # strict UTF-8, valid JSON
                for line in pathlib.Path(report.uri, "rejected.jsonl").read_bytes().splitlines()]
    summary = json.loads(pathlib.Path(report.uri, "summary.json").read_bytes().decode("utf-8"))
    assert [(r["image_id"], r["reason"]) for r in rejected] == [("names/broken\\xff\\n.jpg", "not_an_image")]
    assert rejected[0]["path"].endswith("/names/broken\\xff\\n.jpg")
    assert summary["emitted_total"] == len(bad_images.AWKWARD_NAMES)
    ids = []
    for record in tf.data.TFRecordDataset(glob.glob(os.path.join(examples.uri, "Split-*", "*.gz")),
                                          compression_type="GZIP"):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        ids.append(feature["image_id"].bytes_list.value[0].decode("utf-8"))
    assert sorted(os.fsencode(from_display_name(i)) for i in ids) == sorted(
        label + b"/" + name for label, name in bad_images.AWKWARD_NAMES)
