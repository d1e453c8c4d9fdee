"""ImageExampleGen's Beam executor: validate every file in parallel, split by label, report.

Why not a BaseExampleGenExecutor subclass: that base class splits by hashing each record
(or one feature) into buckets independently, so it cannot guarantee that both splits are
non-empty, and its Do() writes only the ``examples`` output, while this component must also
write a report of every file it refused. The parts that matter downstream are kept the same:
gzipped TFRecords of serialized tf.Examples under ``<uri>/Split-<name>/data_tfrecord-*.gz``,
``split_names``, and the ``payload_format`` / ``file_format`` custom properties that
StatisticsGen, Transform and Trainer read through tfx-bsl.

The pipeline (``build_ingestion``; nothing in it grows with the data, so the launcher
holds, and sends to a runner such as Dataflow, the same small graph for ten files or ten
million):

    input_base --ListCandidates (listing.py: workers list label folders / manifest byte ranges)
      --Inspect (ParDo)--> accepted (label, example, format, orientation)
                        \\-> rejected {path, image_id, label, reason, detail}
    accepted --Partition by the label's hash--> train, eval --> TFRecords (streamed: no
              step waits for all examples, so no runner buffers their bytes)
    accepted labels --Distinct--> LabelTally (a constant-size combiner) --> SplitRule (one
                                  small element: the salt, the threshold, the guard's move)
    rejected --WriteToText (sharded)--> merged into rejected.jsonl
    once the TFRecords are final: the guard's move, if any (guard_move.py), then
              summary.json from counts only (files seen, reasons, per-split stats, labels)

Every decision depends on one file's bytes, one manifest row's id group, or the SET of
accepted labels, never on bundle boundaries or element order, so the set of examples in
each split is the same whatever Beam's parallelism. The rejected lines come in no
particular order (they are written in parallel); sort them to compare.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import apache_beam as beam
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from components.image_example_gen import guard_move, inputs, listing, splits
from components.image_example_gen import features as F
from components.image_example_gen import spec as s
from components.images import checks

_REJECTED_TAG = "rejected"
_METRICS_NAMESPACE = "dolg_tfx.ImageExampleGen"
_TFRECORD_PREFIX = "data_tfrecord"  # the name TFX's own ExampleGens use
_SHARD_DIR = "_rejected_shards"  # the sink's output, merged into rejected.jsonl and removed
_LISTING_DIR = "_listing"  # ListCandidates' files (candidates in hash order), removed at the end


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(image: bytes, image_id: str, label: str, info: checks.ImageInfo) -> bytes:
    """The serialized tf.Example of one accepted file: original bytes, never pixels."""
    return tf.train.Example(features=tf.train.Features(feature={
        F.IMAGE: _bytes_feature(image),
        F.IMAGE_ID: _bytes_feature(image_id.encode("utf-8")),
        F.LABEL: _bytes_feature(label.encode("utf-8")),
        F.FORMAT: _bytes_feature(info.format.encode("ascii")),
        F.WIDTH: _int_feature(info.width),
        F.HEIGHT: _int_feature(info.height),
    })).SerializeToString()


class _InspectFile(beam.DoFn):
    """Reads and checks one candidate; emits an example or, on the side, a rejection."""

    def __init__(self, max_bytes: int, max_pixels: int, decode_size: Optional[int] = None):
        self._max_bytes, self._max_pixels, self._decode_size = max_bytes, max_pixels, decode_size
        self._accepted = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "accepted")
        self._rejected = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "rejected")

    def process(self, c: inputs.Candidate):
        try:
            data = inputs.read_candidate(c, self._max_bytes)
            info = checks.inspect_image(data, self._max_bytes, self._max_pixels, tf_check=True,
                                        min_size=self._decode_size)
        except checks.Rejected as r:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(_REJECTED_TAG, {
                "image_id": c.image_id, "label": c.label, "path": c.display_path,
                "reason": r.reason, "detail": r.detail})
            return
        self._accepted.inc()
        yield c.label, make_example(data, c.image_id, c.label, info), info.format, info.orientation


class _SplitStats(beam.CombineFn):
    """Examples, formats and EXIF-rotated files of one split."""

    def create_accumulator(self):
        return {"examples": 0, "formats": {}, "exif_rotated": 0}

    def add_input(self, acc, element):
        _, _, fmt, orientation = element
        acc["examples"] += 1
        acc["formats"][fmt] = acc["formats"].get(fmt, 0) + 1
        acc["exif_rotated"] += orientation != 1
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out["examples"] += a["examples"]
            out["exif_rotated"] += a["exif_rotated"]
            for k, v in a["formats"].items():
                out["formats"][k] = out["formats"].get(k, 0) + v
        return out

    def extract_output(self, acc):
        return acc


class _TallyLabels(beam.CombineFn):
    """Distinct labels -> splits.LabelTally: constant size, however many labels."""

    def __init__(self, salt: str, threshold: int):
        self._salt, self._threshold = salt, threshold

    def create_accumulator(self):
        return splits.LabelTally()

    def add_input(self, acc, label):
        return acc.merge(splits.LabelTally.of(label, self._salt, self._threshold))

    def merge_accumulators(self, accs):
        out = splits.LabelTally()
        for a in accs:
            out = out.merge(a)
        return out

    def extract_output(self, acc):
        return acc


class _CountReasons(beam.CombineFn):
    """Rejections -> {reason: count}: as many keys as there are reason codes, never more."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, rejection):
        acc[rejection["reason"]] = acc.get(rejection["reason"], 0) + 1
        return acc

    def merge_accumulators(self, accs):
        out: dict[str, int] = {}
        for a in accs:
            for k, v in a.items():
                out[k] = out.get(k, 0) + v
        return out

    def extract_output(self, acc):
        return acc


def _split_index(element, num_partitions: int, salt: str, threshold: int) -> int:
    del num_partitions
    return inputs.SPLITS.index(splits.hash_split(element[0], salt, threshold))


def _merge_shards(shards: list[str], target: str) -> None:
    """Concatenates the sink's shards into one file, streaming, then removes them.

    One file keeps every reader of the report (CLI, run report, tests) unchanged; the copy
    holds one block in memory, whatever the number of rejections. Written even when empty,
    so readers need no special case."""
    with fileio.open(target, "wb") as out:
        out.write(b"")
        for shard in sorted(shards):
            with fileio.open(shard, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    out.write(block)
    for shard in shards:
        fileio.remove(shard)


def _finish(_, examples_uri: str, report_uri: str, header: dict[str, Any], files_seen: int,
            reasons: dict[str, int], rule: splits.SplitRule, stats: dict[str, dict], shards: list[str],
            written: list[str]) -> None:
    """Runs once, after the TFRecords are final (``written``): applies the guard's move, then
    writes rejected.jsonl (from the shards) and summary.json (from counts)."""
    del written  # a side input only to run after the writes
    emitted = {split: stats[split]["examples"] for split in inputs.SPLITS}
    if rule.moved is not None:
        n = guard_move.move_label(examples_uri, rule.moved, rule.moved_from(), rule.moved_to, _TFRECORD_PREFIX)
        emitted[rule.moved_from()] -= n
        emitted[rule.moved_to] += n
    _merge_shards(shards, os.path.join(report_uri, s.REJECTED_FILE))
    for scratch in (_SHARD_DIR, _LISTING_DIR):
        if fileio.exists(os.path.join(report_uri, scratch)):
            fileio.rmtree(os.path.join(report_uri, scratch))
    formats: dict[str, int] = {}
    for st in stats.values():
        for k, v in st["formats"].items():
            formats[k] = formats.get(k, 0) + v
    summary = dict(header, files_seen=files_seen,
                   emitted=emitted, emitted_total=sum(emitted.values()),
                   labels=rule.label_counts(), rejected=sum(reasons.values()),
                   reasons=dict(sorted(reasons.items())), formats=dict(sorted(formats.items())),
                   exif_rotated=sum(st["exif_rotated"] for st in stats.values()))
    # The ingestion invariant. A mismatch is a bug in this component, never the data's fault.
    if summary["files_seen"] != summary["emitted_total"] + summary["rejected"]:
        raise RuntimeError(f"ImageExampleGen lost files: {summary}")
    with fileio.open(os.path.join(report_uri, s.SUMMARY_FILE), "w") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def build_ingestion(p: beam.Pipeline, input_base: str, images_subdir: Optional[str], examples_uri: str,
                    report_uri: str, eval_fraction: float, max_bytes: int, max_pixels: int,
                    salt: str, decode_size: Optional[int] = None) -> None:
    """Adds the whole ingestion to ``p``: listing, checks, splits, TFRecords and the report.

    Applying it reads only the manifest's header (to fail early on missing columns); the
    graph's size does not depend on the number of files (tests/components/test_ingest_scale).
    """
    threshold = splits.eval_threshold(eval_fraction)
    manifest = inputs.is_manifest(input_base)
    header = {
        "input_base": input_base, "layout": "manifest" if manifest else "folder",
        "image_root": inputs.image_root(input_base, images_subdir),
        "settings": {"eval_fraction": eval_fraction, "max_bytes": max_bytes,
                     "max_pixels": max_pixels, "decode_size": decode_size, "split_salt": salt},
    }
    candidates = p | "ListCandidates" >> listing.ListCandidates(
        input_base, os.path.join(report_uri, _LISTING_DIR), images_subdir)
    inspected = candidates | "InspectFiles" >> beam.ParDo(_InspectFile(max_bytes, max_pixels, decode_size)).with_outputs(
        _REJECTED_TAG, main="accepted")
    accepted, rejected = inspected.accepted, inspected[_REJECTED_TAG]
    rule = (accepted
            | "Labels" >> beam.Map(lambda a: a[0])
            | "DistinctLabels" >> beam.Distinct()
            | "TallyLabels" >> beam.CombineGlobally(_TallyLabels(salt, threshold))
            | "SplitRule" >> beam.Map(splits.SplitRule.from_tally, salt, threshold))
    # No side input and no shuffle on the examples' way to their files: either would make
    # the runner hold every example until the last file is read (the DirectRunner holds it
    # in this process). ListCandidates already spreads and mixes the candidates (HashOrder).
    parts = accepted | "SplitByLabel" >> beam.Partition(_split_index, len(inputs.SPLITS), salt, threshold)
    stats, written = [], []
    for split, part in zip(inputs.SPLITS, parts):
        written.append(part
                       | f"Serialized[{split}]" >> beam.Map(lambda a: a[1])
                       | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                           os.path.join(guard_move.split_dir(examples_uri, split), _TFRECORD_PREFIX),
                           file_name_suffix=".gz"))
        stats.append(part
                     | f"Stats[{split}]" >> beam.CombineGlobally(_SplitStats())
                     | f"KeyStats[{split}]" >> beam.Map(lambda v, k=split: (k, v)))
    shards = (rejected
              | "RejectedLines" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
              | "WriteRejected" >> beam.io.WriteToText(
                  os.path.join(report_uri, _SHARD_DIR, "rejected"), file_name_suffix=".jsonl"))
    _ = (
        p
        | "ReportTrigger" >> beam.Create([None])
        | "Finish" >> beam.Map(
            _finish, examples_uri, report_uri, header,
            files_seen=beam.pvalue.AsSingleton(candidates | "FilesSeen" >> beam.combiners.Count.Globally()),
            reasons=beam.pvalue.AsSingleton(rejected | "Reasons" >> beam.CombineGlobally(_CountReasons())),
            rule=beam.pvalue.AsSingleton(rule),
            stats=beam.pvalue.AsDict(tuple(stats) | "StatsBySplit" >> beam.Flatten()),
            shards=beam.pvalue.AsList(shards),
            written=beam.pvalue.AsList(tuple(written) | "Written" >> beam.Flatten())))


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as one readable block of text, for the log and the CLI."""
    e, lab = summary["emitted"], summary["labels"]
    lines = [
        f"ImageExampleGen: {summary['input_base']} ({summary['layout']} layout)",
        f"  files seen      {summary['files_seen']}",
        f"  emitted         {summary['emitted_total']}  (train {e['train']}, eval {e['eval']}; "
        f"labels train {lab['train']}, eval {lab['eval']}, disjoint)",
        f"  rejected        {summary['rejected']}  (details: {s.REJECTED_FILE})",
    ]
    lines += [f"    {reason:<18}{n}" for reason, n in summary["reasons"].items()]
    lines.append("  formats         " + (", ".join(f"{k} {v}" for k, v in summary["formats"].items()) or "-"))
    if summary["exif_rotated"]:
        lines.append(f"  EXIF-rotated    {summary['exif_rotated']} (stored as sent; the decoder turns them upright)")
    return "\n".join(lines)


def _get(exec_properties: dict[str, Any], key: str, default):
    # Explicit None test: an explicit 0 must reach the range checks, not become the default.
    value = exec_properties.get(key)
    return default if value is None else value


class Executor(base_beam_executor.BaseBeamExecutor):
    """Validates image files in a Beam pipeline and writes label-disjoint train/eval Examples."""

    def Do(self, input_dict: dict[str, list[types.Artifact]],
           output_dict: dict[str, list[types.Artifact]], exec_properties: dict[str, Any]) -> None:
        """Scans the inputs, validates every file with Beam, writes the splits and the report.

        Args:
          input_dict: unused (the component has no input channels).
          output_dict: ``examples`` (one Examples artifact: splits train and eval) and
            ``report`` (one IngestionReport artifact: rejected.jsonl and summary.json).
          exec_properties: ``input_base`` (required), ``images_subdir``, ``eval_fraction``,
            ``max_bytes``, ``max_pixels``, ``decode_size``, ``split_salt`` (see ImageExampleGen).

        Raises:
          ValueError: a setting is out of range.
          RuntimeError: no file was accepted (the report is written first, to say why).
        """
        self._log_startup(input_dict, output_dict, exec_properties)
        input_base = exec_properties[s.INPUT_BASE_KEY]
        images_subdir = _get(exec_properties, s.IMAGES_SUBDIR_KEY, "") or None
        eval_fraction = float(_get(exec_properties, s.EVAL_FRACTION_KEY, s.DEFAULT_EVAL_FRACTION))
        max_bytes = int(_get(exec_properties, s.MAX_BYTES_KEY, s.DEFAULT_MAX_BYTES))
        max_pixels = int(_get(exec_properties, s.MAX_PIXELS_KEY, s.DEFAULT_MAX_PIXELS))
        salt = str(_get(exec_properties, s.SPLIT_SALT_KEY, s.DEFAULT_SPLIT_SALT))
        decode_size = _get(exec_properties, s.DECODE_SIZE_KEY, None)
        decode_size = int(decode_size) if decode_size else None
        splits.eval_threshold(eval_fraction)  # fail on a bad fraction before any work
        if max_bytes <= 0 or max_pixels <= 0:
            raise ValueError(f"max_bytes and max_pixels must be positive, got {max_bytes}, {max_pixels}")

        examples = artifact_utils.get_single_instance(output_dict[s.EXAMPLES_KEY])
        report = artifact_utils.get_single_instance(output_dict[s.REPORT_KEY])
        examples.split_names = artifact_utils.encode_split_names(list(inputs.SPLITS))
        examples.span = 0
        fileio.makedirs(report.uri)

        with self._make_beam_pipeline() as p:
            build_ingestion(p, input_base, images_subdir, examples.uri, report.uri,
                            eval_fraction, max_bytes, max_pixels, salt, decode_size)

        with fileio.open(os.path.join(report.uri, s.SUMMARY_FILE)) as f:
            summary = json.loads(f.read())
        logging.info("%s", format_summary(summary))

        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, "tfrecords_gzip")
        counts = {"num_files_seen": summary["files_seen"], "num_rejected": summary["rejected"],
                  "num_train": summary["emitted"]["train"], "num_eval": summary["emitted"]["eval"],
                  "num_train_labels": summary["labels"]["train"], "num_eval_labels": summary["labels"]["eval"]}
        for artifact in (examples, report):
            for key, value in counts.items():
                artifact.set_int_custom_property(key, value)
        if summary["emitted_total"] == 0:
            raise RuntimeError(f"ImageExampleGen accepted no file under {input_base}; "
                               f"see {os.path.join(report.uri, s.REJECTED_FILE)}")
        if summary["emitted"]["eval"] == 0:
            logging.warning("ImageExampleGen: the eval split is empty (only one label was accepted)")
