"""Listed candidates put in the order of their id's hash by the workers, through files.

Why not a GroupByKey: the DirectRunner keeps every element of a grouping in its own process,
which is the launcher (in-memory and multi_processing alike), so grouping the candidates
there grows the launcher by about 1 KB a file (``benchmarks/ingest_grouping.py``). Here the
only elements that cross a stage boundary are one per bundle (a file name and offsets) and
one per hash range (a number): the launcher's memory does not depend on the number of files.

Why this order: listings come label by label (a folder tree's walk, a manifest sorted by
label), while the Trainer shuffles through a 10,000-example buffer. In hash order every
stretch of the written examples is a sample of the whole data set, so every label reaches
the buffer whatever the size of the data. A CSV's duplicate ids also end up next to each
other, so the first-listed rule runs without a grouping of its own.

How, a two-pass shuffle done by the workers:

1. ``_Spill``: a bundle appends each (id, value) to one of ``RANGES`` local temporary files,
   by the top bits of the id's hash (``id_hash``); at the bundle's end the sections are copied, one after
   the other, into one file under ``scratch`` (any path TFX's fileio reaches, so that every
   worker sees it), and the bundle emits the file's name and where each section starts.
2. ``_Gather``: one work item per hash range reads its section of every bundle's file,
   sorts it by (hash, id) and emits it. A range holds 1/``RANGES`` of the candidates
   (~16,000 for GLDv2's 4.1 M rows), which is what a worker holds at a time.

``scratch`` is left to the caller to remove once the candidates are used.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
import pickle
import shutil
import tempfile
import uuid
from typing import Any, Callable, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from components.image_example_gen import storage

RANGES = 256  # sections a bundle's file holds; also the number of gather work items


def id_hash(image_id: str) -> int:
    """64 bits of BLAKE2b of the id: the same on every worker and every run (unlike ``hash``).

    Not crc32: crc32 is linear over the id's bits, so the ids of a folder tree, which differ
    in a few characters, come out in a structured order (a third of the labels in the first
    third of test_ingest_order's tree, where a random order gives about four fifths)."""
    return int.from_bytes(hashlib.blake2b(image_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def hash_range(h: int) -> int:
    return (h * RANGES) >> 64


@contextlib.contextmanager
def _open(path: str, mode: str):
    if storage.is_uri(path):
        from tfx.dsl.io import fileio

        with fileio.open(path, mode) as f:
            yield f
    else:
        with open(path, mode) as f:
            yield f


class _Spill(beam.DoFn):
    """(id, value) pairs -> one file a bundle, its sections by hash range; emits (file, offsets)."""

    def __init__(self, scratch: str):
        self._scratch = scratch

    def start_bundle(self):
        self._spools: dict[int, Any] = {}

    def process(self, element):
        image_id, value = element
        h = id_hash(image_id)
        r = hash_range(h)
        spool = self._spools.get(r)
        if spool is None:
            spool = self._spools[r] = tempfile.TemporaryFile()
        pickle.dump((h, image_id, value), spool, protocol=pickle.HIGHEST_PROTOCOL)

    def finish_bundle(self):
        if not self._spools:
            return
        if storage.is_uri(self._scratch):
            from tfx.dsl.io import fileio

            fileio.makedirs(self._scratch)
        else:
            os.makedirs(self._scratch, exist_ok=True)
        # A retried bundle writes a new file; only the attempt that succeeds is emitted.
        path = os.path.join(self._scratch, f"spill-{uuid.uuid4().hex}.pkl")  # posixpath: URIs too
        offsets = [0]
        with _open(path, "wb") as out:
            for r in range(RANGES):
                spool = self._spools.pop(r, None)
                if spool is not None:
                    spool.seek(0)
                    shutil.copyfileobj(spool, out, 1 << 20)
                    offsets.append(offsets[-1] + spool.tell())
                    spool.close()
                else:
                    offsets.append(offsets[-1])
        yield GlobalWindows.windowed_value((path, offsets))


def _read_section(path: str, start: int, end: int) -> Iterator[tuple]:
    if end <= start:
        return
    with _open(path, "rb") as f:
        f.seek(start)
        data = io.BytesIO(f.read(end - start))
    while data.tell() < end - start:
        yield pickle.load(data)


class _Gather(beam.DoFn):
    """One hash range: its section of every spilled file, in (hash, id) order."""

    def __init__(self, per_id: Optional[Callable[[list], Iterable]]):
        self._per_id = per_id

    def process(self, r: int, spilled: list):
        records = [rec for path, offsets in spilled for rec in _read_section(path, offsets[r], offsets[r + 1])]
        records.sort(key=lambda rec: (rec[0], rec[1]))  # stable: one id's values keep their listing order
        for image_id, group in itertools.groupby(records, key=lambda rec: rec[1]):
            values = [rec[2] for rec in group]
            if self._per_id is None:
                yield from values
            else:
                yield from self._per_id(values)


class HashOrder(beam.PTransform):
    """(id, value) pairs -> the values in the order of ``id_hash(id)``, spread over workers.

    Args:
      scratch: a folder (local or a URI) for the spilled files; every worker must reach it.
      per_id: called with the values that share one id (in listing order within a bundle);
        its results are emitted instead of them. None: every value as it is.
    """

    def __init__(self, scratch: str, per_id: Optional[Callable[[list], Iterable]] = None):
        super().__init__()
        self._scratch, self._per_id = scratch, per_id

    def expand(self, pairs):
        spilled = pairs | "Spill" >> beam.ParDo(_Spill(self._scratch))
        return (pairs.pipeline
                | "Start" >> beam.Create([None])
                | "Ranges" >> beam.FlatMap(lambda _: range(RANGES))
                | "SpreadRanges" >> beam.Reshuffle()
                | "Gather" >> beam.ParDo(_Gather(self._per_id), spilled=beam.pvalue.AsList(spilled)))
