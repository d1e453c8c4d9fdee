"""``hash_order.HashOrder``: listed candidates put in the order of their id's hash by the workers, through
files, so that the launcher holds no per-file element (issue 24) while the written examples
still mix every label for the Trainer's shuffle buffer and a manifest's duplicate ids meet.

Run on Beam's DirectRunner, as the Executor runs it; the scratch folder is local or, as on an
object store, TensorFlow's ``ram://`` file system. Ingestion end to end: test_ingest_order.py
(the written order), test_ingest_scale.py (the same verdicts as the sequential scan).
"""
import os

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from components.image_example_gen import hash_order, inputs

N, PER_LABEL, WINDOW = 20_000, 400, 10_000  # 50 labels; the Trainer's shuffle buffer


def _listed():
    """20,000 candidates label by label, as a folder tree is walked: 25 labels in the first 10,000."""
    return [inputs.Candidate(f"{i:06d}", f"label{i // PER_LABEL:02d}", "/r", f"{i}.jpg", None) for i in range(N)]


def _labels_in_window(want):
    def check(gathered):
        got = len({c.label for c in gathered[0][:WINDOW]})
        assert got == want, got
    return check


@pytest.mark.parametrize("ranges", [hash_order.RANGES, 1])
def test_every_label_reaches_the_shuffle_buffer(tmp_path, monkeypatch, ranges):
    """Two things mix: the hash ranges (each a sample of the whole) and the sort within a
    range, which alone mixes when a range holds more than the buffer (~2.5 M files at 256
    ranges; here: one range). Mutation: ``_Gather`` emitting its records unsorted -> 25 labels
    in the first 10,000 with one range (fails); sorted, all 50. The listing order is the
    control (a Reshuffle keeps nearly that order on the DirectRunner)."""
    monkeypatch.setattr(hash_order, "RANGES", ranges)  # read in this process (in-memory DirectRunner)
    listed = _listed()
    with beam.Pipeline() as p:
        start = p | beam.Create(listed, reshuffle=False)
        ordered = (start
                   | beam.Map(lambda c: (c.image_id, c))
                   | hash_order.HashOrder(str(tmp_path / "scratch")))
        for kind, pcoll, want in (("hash order", ordered, 50), ("listed", start, 25)):
            gathered = pcoll | f"Gather[{kind}]" >> beam.combiners.ToList()
            assert_that(gathered, _labels_in_window(want), label=f"Check[{kind}]")
        assert_that(ordered | beam.Map(lambda c: c.image_id), equal_to([c.image_id for c in listed]),
                    label="NothingLostOrRepeated")
    spilled = os.listdir(tmp_path / "scratch")
    assert spilled and all(name.startswith("spill-") for name in spilled)  # the files went through disk


@pytest.mark.parametrize("scratch", ["local", "ram"])
def test_duplicate_ids_from_different_bundles_meet_once(tmp_path, scratch):
    """Rows of one id listed by different work items (a manifest's byte ranges) reach ``per_id``
    together, once: the first listed keeps its verdict, the later ones are duplicates."""
    folder = str(tmp_path / "scratch") if scratch == "local" else f"ram://hash-order-{os.getpid()}/scratch"
    rows = [(row_no, inputs.Candidate(image_id, "1", "/r", f"{row_no}.jpg", None))
            for row_no, image_id in enumerate(["a", "b", "a", "c", "a", "b"] + [f"u{i}" for i in range(300)], start=2)]
    chunks = [rows[0:2], rows[2:4], rows[4:]]  # "a" in all three chunks, "b" in the first and last
    with beam.Pipeline() as p:
        out = (p
               | beam.Create(chunks)
               | beam.Reshuffle()  # every chunk its own bundle at most
               | beam.FlatMap(lambda chunk: [(c.image_id, (row_no, c)) for row_no, c in chunk])
               | hash_order.HashOrder(folder, per_id=inputs.first_listed)
               | beam.Map(lambda c: (c.image_id, c.relpath, c.problem[0] if c.problem else None)))
        want = ([("a", "2.jpg", None), ("b", "3.jpg", None), ("a", "4.jpg", "duplicate_id"), ("c", "5.jpg", None),
                 ("a", "6.jpg", "duplicate_id"), ("b", "7.jpg", "duplicate_id")]
                + [(f"u{i}", f"{i + 8}.jpg", None) for i in range(300)])
        assert_that(out, equal_to(want))
    assert tf.io.gfile.listdir(folder)  # the spilled files are where the caller said


def test_hash_ranges_cover_every_hash_once():
    assert hash_order.hash_range(0) == 0
    assert hash_order.hash_range(2 ** 64 - 1) == hash_order.RANGES - 1
    assert hash_order.hash_range(2 ** 64 // hash_order.RANGES) == 1
