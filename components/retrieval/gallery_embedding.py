"""Embedding a gallery with a pushed DOLG SavedModel in a Beam pipeline, so it runs on the
DirectRunner here and on Dataflow with the pipeline's Beam arguments. Each worker loads the
model once (``Embedder``) and isolates bad files the same way; a file ImageExampleGen's checks
refuse is a failure with its reason, never an abort.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf

from components.image_example_gen import inputs as gen_inputs
from components.images.checks import Rejected
from components.progress import ProgressReporter
from components.retrieval.embedder import DEFAULT_MAX_BYTES, Embedder, EmbedResult, Failure


class EmbedCandidatesDoFn(beam.DoFn):
    """Embeds batches of (order, Candidate); loads the model once per DoFn instance (setup).

    Main output: serialized tf.train.Example per embedded image (order, id, label, path,
    embedding). Tagged output ``failures``: one JSON line per skipped candidate.
    """
    FAILURES = "failures"

    def __init__(self, model_dir: str, max_bytes: int = DEFAULT_MAX_BYTES,
                 total: Optional[int] = None, progress: Optional[bool] = None):
        self._model_dir, self._max_bytes = model_dir, max_bytes
        self._total, self._progress = total, progress
        self._embedder, self._reporter, self._done = None, None, 0

    def setup(self):
        self._embedder = Embedder(self._model_dir)
        # Counts this worker's images: with one worker (the CLI's default), the gallery's.
        if self._progress is not False and self._total:
            self._reporter = ProgressReporter(self._total, "images", "embedding")

    def process(self, batch):
        blobs, kept = [], []
        for order, cand in batch:
            try:  # read_candidate applies ImageExampleGen's file checks (root escape, size)
                blobs.append(gen_inputs.read_candidate(cand, self._max_bytes))
                kept.append((order, cand))
            except Rejected as err:
                yield beam.pvalue.TaggedOutput(self.FAILURES, _failure_json(
                    order, cand, f"{err.reason}: {err.detail}"))
        ok, embs, errors = self._embedder.embed_blobs(blobs)
        for j, reason in errors.items():
            yield beam.pvalue.TaggedOutput(self.FAILURES, _failure_json(*kept[j], reason))
        for j, emb in zip(ok, embs):
            order, cand = kept[j]
            yield _example(order, cand, emb)
        self._done += len(batch)
        if self._reporter is not None:
            self._reporter.update(self._done)


def _failure_json(order: int, cand, reason: str) -> str:
    return json.dumps({"order": order, "id": cand.image_id, "path": cand.display_path, "reason": reason})


def _example(order: int, cand, emb: np.ndarray) -> bytes:
    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode("utf-8")]))
    return tf.train.Example(features=tf.train.Features(feature={
        "order": tf.train.Feature(int64_list=tf.train.Int64List(value=[order])),
        "id": b(cand.image_id), "label": b(cand.label),
        # The real path, as bytes: a name that is not UTF-8 must still open for the grid.
        "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[os.fsencode(cand.path)])),
        "embedding": tf.train.Feature(float_list=tf.train.FloatList(value=emb.tolist())),
    })).SerializeToString()


def embed_candidates_with_beam(candidates: Sequence, model_dir: str, work_dir: str,
                               batch_size: int = 32, max_bytes: int = DEFAULT_MAX_BYTES,
                               progress: Optional[bool] = None,
                               pipeline_args: Iterable[str] = ()) -> EmbedResult:
    """Embeds ``scan_inputs`` candidates with a Beam pipeline (DirectRunner by default).

    The pipeline writes embeddings as TFRecord shards of tf.train.Example and failures as JSON
    lines under ``work_dir``; they are read back here and ordered like ``candidates``.
    ``pipeline_args`` are Beam's (the pipeline's ``--beam-arg``s): with
    ``--runner=DataflowRunner`` the workers embed, ``work_dir`` must be on storage they write
    (gs://) and the image paths must be readable there too.
    A custom DoFn rather than tfx_bsl's RunInference: RunInference feeds serialized
    tf.Examples to the model, while this model takes raw image bytes, and per-image failure
    isolation needs the batch-then-singles retry above.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    tf.io.gfile.makedirs(work_dir)  # any TensorFlow file system: on Dataflow, gs://
    emb_prefix, fail_prefix = os.path.join(work_dir, "embeddings"), os.path.join(work_dir, "failures")
    options = PipelineOptions(list(pipeline_args) or ["--runner=DirectRunner",
                                                      "--direct_num_workers=1"])
    with beam.Pipeline(options=options) as p:
        results = (p
                   | "Candidates" >> beam.Create(list(enumerate(candidates)))
                   | "Batch" >> beam.BatchElements(min_batch_size=batch_size,
                                                   max_batch_size=batch_size)
                   | "Embed" >> beam.ParDo(EmbedCandidatesDoFn(
                       model_dir, max_bytes, len(candidates), progress)).with_outputs(
                           EmbedCandidatesDoFn.FAILURES, main="embedded"))
        _ = results.embedded | "WriteEmbeddings" >> beam.io.WriteToTFRecord(
            emb_prefix, file_name_suffix=".tfrecord")
        _ = results[EmbedCandidatesDoFn.FAILURES] | "WriteFailures" >> beam.io.WriteToText(
            fail_prefix, file_name_suffix=".jsonl")

    rows = []
    for name in sorted(tf.io.gfile.glob(emb_prefix + "*.tfrecord")):
        for rec in tf.data.TFRecordDataset(name):
            f = tf.train.Example.FromString(rec.numpy()).features.feature
            rows.append((f["order"].int64_list.value[0], f["id"].bytes_list.value[0].decode(),
                         f["label"].bytes_list.value[0].decode(),
                         os.fsdecode(f["path"].bytes_list.value[0]),
                         np.asarray(f["embedding"].float_list.value, np.float32)))
    rows.sort(key=lambda r: r[0])
    failures = []
    for name in sorted(tf.io.gfile.glob(fail_prefix + "*.jsonl")):
        with tf.io.gfile.GFile(name) as fh:
            failures.extend(json.loads(line) for line in fh if line.strip())
    failures.sort(key=lambda d: d["order"])
    dim = len(rows[0][4]) if rows else 0
    return EmbedResult(
        ids=[r[1] for r in rows], labels=[r[2] for r in rows], paths=[r[3] for r in rows],
        embeddings=np.stack([r[4] for r in rows]) if rows else np.zeros((0, dim), np.float32),
        positions=np.asarray([r[0] for r in rows], dtype=np.int64),
        failures=[Failure(d["id"], d["path"], d["reason"]) for d in failures])
