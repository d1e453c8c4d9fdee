"""Embedding a gallery with a pushed DOLG SavedModel in a Beam pipeline whose workers list,
embed and write: the launcher sees one element per unit (a label folder, a slice of the root's
files, a manifest range: ``gallery_parts``), never one per file, so a gallery of millions
costs it what one of thousands does. It runs on the DirectRunner here and on Dataflow with the
pipeline's Beam arguments. Each worker loads the model once (``Embedder``) and isolates bad
files the same way; a file ImageExampleGen's checks refuse is a failure with its reason,
never an abort.

``embed_gallery`` writes one part per unit (``gallery_parts``); with a cache folder (the
parts of an earlier build with the same model) unchanged files take their vectors from it.
``assemble`` streams the parts into an exact-search index folder, holding neither the vectors
nor the per-image text.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, List, Optional

import apache_beam as beam
import numpy as np

from components.image_example_gen import inputs as gen_inputs
from components.image_example_gen import listing, storage
from components.images.checks import Rejected
from components.retrieval import gallery_parts as parts
from components.progress import ProgressReporter
from components.retrieval.embedder import DEFAULT_MAX_BYTES, Embedder, Failure


class EmbedUnitDoFn(beam.DoFn):
    """Lists, embeds and writes one unit; yields one JSON line on what it did. Loads the model
    once per DoFn instance (setup), and only when some unit needs embedding."""

    def __init__(self, model_dir: str, parts_dir: str, cache_dir: Optional[str], batch_size: int,
                 max_bytes: int):
        self._model_dir, self._parts_dir, self._cache_dir = model_dir, parts_dir, cache_dir
        self._batch_size, self._max_bytes = batch_size, max_bytes
        self._embedder, self._reporter, self._units, self._images = None, None, 0, 0

    def process(self, element, counts):
        order, total, unit = element
        for line in self._unit(order, unit, counts):
            self._units += 1
            self._images += json.loads(line)["rows"]
            if self._reporter is None:  # counts this worker's units: with one worker, the gallery's
                self._reporter = ProgressReporter(total, "parts", "embedding")
            self._reporter.update(self._units, images=self._images)
            yield line

    def _unit(self, order, unit, counts):
        rows_before = sum(n for start, n in counts.items() if start < unit[4]) if unit[0] == "range" else 0
        entries = [(row_no, c, parts.file_key(c)) for row_no, c in parts.unit_candidates(unit, rows_before)]
        name, signature = parts.part_name(unit), parts.listing_signature(entries)
        old = parts.read_meta(self._cache_dir, name) if self._cache_dir else None
        if old is not None and old["signature"] == signature:  # nothing changed: not even read
            if self._cache_dir != self._parts_dir:
                parts.copy_part(self._cache_dir, self._parts_dir, name)
            yield json.dumps({"part": name, "order": order, "rows": len(old["ids"]), "embedded": 0,
                              "reused": len(old["ids"])})
            return
        cached = {key: i for i, key in enumerate(old["keys"])} if old is not None else {}
        old_vectors = None
        rows, failures, vectors, pending = [], [], {}, []
        for position, (row_no, c, key) in enumerate(entries):
            if c.problem is not None:
                failures.append(_failure(row_no, c, f"{c.problem[0]}: {c.problem[1]}"))
                continue
            rows.append(position)
            if key is not None and key in cached:
                if old_vectors is None:
                    old_vectors = parts.read_vectors(self._cache_dir, name)
                vectors[position] = np.asarray(old_vectors[cached[key]])
            else:
                pending.append(position)
        for b in range(0, len(pending), self._batch_size):
            self._embed([(p, entries[p]) for p in pending[b:b + self._batch_size]], vectors, failures)
        rows = [p for p in rows if p in vectors]
        dim = next(iter(vectors.values())).shape[0] if vectors else 0
        meta = {"signature": signature, "dim": dim,
                "ids": [entries[p][1].image_id for p in rows], "labels": [entries[p][1].label for p in rows],
                "paths": [os.fsdecode(entries[p][1].path) for p in rows], "keys": [entries[p][2] for p in rows],
                "rows": [entries[p][0] for p in rows], "failures": failures}
        parts.write_part(self._parts_dir, name, np.stack([vectors[p] for p in rows]) if rows
                         else np.zeros((0, dim), np.float32), meta)
        embedded = sum(1 for p in pending if p in vectors)
        yield json.dumps({"part": name, "order": order, "rows": len(rows), "embedded": embedded,
                          "reused": len(rows) - embedded})

    def _embed(self, batch, vectors, failures):
        if self._embedder is None:
            self._embedder = Embedder(self._model_dir)
        blobs, kept = [], []
        for position, (row_no, c, _) in batch:
            try:  # read_candidate applies ImageExampleGen's file checks (root escape, size)
                blobs.append(gen_inputs.read_candidate(c, self._max_bytes))
                kept.append((position, row_no, c))
            except Rejected as err:
                failures.append(_failure(row_no, c, f"{err.reason}: {err.detail}"))
        ok, embs, errors = self._embedder.embed_blobs(blobs)
        for j, reason in errors.items():
            failures.append(_failure(kept[j][1], kept[j][2], reason))
        for j, emb in zip(ok, embs):
            vectors[kept[j][0]] = np.asarray(emb, np.float32)


def _failure(row_no, c, reason: str) -> dict:
    return {"row": row_no, "id": c.image_id, "path": c.display_path, "reason": reason}


def _numbered(units):
    """(order, how many, unit): the listing's order for the index, the count for the bar."""
    units = list(units)  # one element per label folder or range: the listing's own size
    return [(i, len(units), unit) for i, unit in enumerate(units)]


def _count_rows(element):
    unit = element[2]
    if unit[0] == "range":
        yield unit[4], sum(1 for _ in parts.unit_lines(unit))


def embed_gallery(gallery: str, model_dir: str, parts_dir: str, work_dir: str,
                  cache_dir: Optional[str] = None, images_subdir: Optional[str] = None,
                  batch_size: int = 32, max_bytes: int = DEFAULT_MAX_BYTES,
                  pipeline_args: Iterable[str] = ()) -> List[dict]:
    """Embeds the gallery into one part per unit in ``parts_dir``; returns one dict per unit
    (``part``, ``order``, ``rows``, ``embedded``, ``reused``), in listing order.

    Args:
      gallery: a folder (flat, or root/<label>/<image>) or a CSV ``id[,landmark_id][,path]``;
        a local path or gs://.
      cache_dir: the parts of an earlier build with the same model (may be ``parts_dir``
        itself: a unit's part is then replaced in place).
      work_dir: scratch for the units' JSON lines (on Dataflow: storage its workers write).
      pipeline_args: Beam's (the pipeline's ``--beam-arg``s): with ``--runner=DataflowRunner``
        the workers embed, and every folder must be storage they reach (gs://).
    Raises (in the launcher, before the pipeline; its only reads):
      FileNotFoundError: ``gallery`` does not exist.
      ValueError: the manifest lacks an id or path column.
    A custom DoFn rather than tfx_bsl's RunInference: RunInference feeds serialized
    tf.Examples to the model, while this model takes raw image bytes, and per-image failure
    isolation needs the batch-then-singles retry of ``Embedder.embed_blobs``.
    """
    import tensorflow as tf
    from apache_beam.options.pipeline_options import PipelineOptions

    location = storage.canonical(gallery)
    if not (storage.exists(location) if storage.is_uri(location) else os.path.exists(location)):
        raise FileNotFoundError(f"gallery {gallery!r} does not exist")
    if gen_inputs.is_manifest(location):
        listing.read_columns(location, labels_required=False)  # a bad header: one clear error, here
    tf.io.gfile.makedirs(work_dir)
    tf.io.gfile.makedirs(parts_dir)
    prefix = parts.join(work_dir, "units")
    from components.beam_runner import RUNNER

    options = PipelineOptions(list(pipeline_args) or [f"--runner={RUNNER}", "--direct_num_workers=1"])
    with beam.Pipeline(options=options) as p:
        units = (p | "Start" >> beam.Create([None])
                 | "ListUnits" >> beam.FlatMap(lambda _: _numbered(parts.list_units(location, images_subdir)))
                 | "Spread" >> beam.Reshuffle())
        counts = units | "CountRows" >> beam.FlatMap(_count_rows)
        _ = (units
             | "Embed" >> beam.ParDo(EmbedUnitDoFn(model_dir, parts_dir, cache_dir, batch_size, max_bytes),
                                     counts=beam.pvalue.AsDict(counts))
             | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))
    done = []
    for name in sorted(tf.io.gfile.glob(prefix + "*.jsonl")):
        with tf.io.gfile.GFile(name) as f:
            done.extend(json.loads(line) for line in f if line.strip())
    return sorted(done, key=lambda d: d["order"])


@dataclasses.dataclass
class Assembled:
    """What ``assemble`` wrote: an exact-search index folder of ``count`` x ``dim`` vectors."""
    count: int
    dim: int
    labelled: bool
    failures: List[Failure]


def _lines(path):
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            yield json.loads(line)


def assemble(parts_dir: str, names: Iterable[str], directory: str, model: Optional[str] = None,
             model_version: Optional[int] = None) -> Assembled:
    """Writes the parts ``names`` of ``parts_dir``, in that order, as an exact-search
    ``GalleryIndex`` folder at the local ``directory`` (``meta.json`` last).

    Streamed: the vectors go into the index's shards through mapped files, and the ids,
    labels and paths through files, one part at a time, so this process holds neither the
    vectors nor the per-image text, whatever the gallery's size (``GalleryIndex.load`` reads
    the folder back when another backend or DBA is wanted). Of the manifest rows that share an
    id, the first listed is kept and the others fail ``duplicate_id``, as ImageExampleGen
    decides (the one thing held per image: a manifest's ids and first rows).
    """
    from components.retrieval import index_files
    from components.retrieval.index import SHARD_ROWS, default_parameters, index_meta

    names = list(names)
    first_row, dim, files_rows, labelled = {}, 0, 0, False
    for n in names:  # pass 1: the sizes, and which copy of a repeated manifest id comes first
        meta = parts.read_meta(parts_dir, n)
        dim, labelled = max(dim, meta["dim"]), labelled or any(meta["labels"])
        for image_id, row in zip(meta["ids"], meta["rows"]):
            if row is None:
                files_rows += 1
            elif image_id not in first_row or row < first_row[image_id]:
                first_row[image_id] = row
    count = files_rows + len(first_row)
    index_files.clear_for_write(directory)
    shard_files = index_files.shard_names(count, SHARD_ROWS)
    shards = [np.lib.format.open_memmap(os.path.join(directory, name), mode="w+", dtype=np.float32,
                                        shape=(min(SHARD_ROWS, count - i * SHARD_ROWS), dim))
              for i, name in enumerate(shard_files)]
    text = {field: os.path.join(directory, f"{field}.lines") for field in ("ids", "labels", "paths")}
    outs = {field: open(path, "w", encoding="utf-8", errors="surrogateescape") for field, path in text.items()}
    failures, row = [], 0
    try:
        for n in names:  # pass 2: each part's kept rows, appended
            meta = parts.read_meta(parts_dir, n)
            failures += [Failure(f["id"], f["path"], f["reason"]) for f in meta["failures"]]
            keep = [i for i, (image_id, r) in enumerate(zip(meta["ids"], meta["rows"]))
                    if r is None or first_row[image_id] == r]
            for i in sorted(set(range(len(meta["ids"]))) - set(keep)):
                failures.append(Failure(meta["ids"][i], meta["paths"][i],
                                        f"duplicate_id: row {meta['rows'][i]}: id {meta['ids'][i]!r} already listed"))
            for field, out in outs.items():
                out.writelines(json.dumps(meta[field][i]) + "\n" for i in keep)
            if keep:
                vectors = parts.read_vectors(parts_dir, n)
                block = np.asarray(vectors if len(keep) == len(vectors) else vectors[keep])
                for start in range(0, len(block), 4096):  # across a shard boundary, piece by piece
                    piece = block[start:start + 4096]
                    shard, offset = divmod(row, SHARD_ROWS)
                    take = min(len(piece), SHARD_ROWS - offset)
                    shards[shard][offset:offset + take] = piece[:take]
                    if take < len(piece):
                        shards[shard + 1][:len(piece) - take] = piece[take:]
                    row += len(piece)
    finally:
        for out in outs.values():
            out.close()
    for shard in shards:
        shard.flush()
    del shards
    index_files.write_json_array(os.path.join(directory, "ids.json"), _lines(text["ids"]))
    meta = index_meta(model, model_version, dim, count, "exact", shard_files, default_parameters(count, dim))
    index_files.write_meta(directory, meta, {"labels": _lines(text["labels"]) if labelled else None,
                                             "paths": _lines(text["paths"])})
    for path in text.values():
        os.remove(path)
    return Assembled(count, dim, labelled, failures)
