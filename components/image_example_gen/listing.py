"""ImageExampleGen's listing as Beam transforms: candidates are found by workers, not the launcher.

``ListCandidates`` turns ``input_base`` into a PCollection of ``inputs.Candidate`` with the
same verdicts ``inputs.scan_inputs`` gives, without the launcher ever holding a list that
grows with the data, and with a pipeline graph of the same size for ten files or ten million.

* A CSV manifest is cut into byte ranges (``CHUNK_BYTES``) by a worker that stats it; each
  range is read by whichever worker gets it, a line belonging to the range its first byte is
  in (Beam's text reading splits files the same way). A first cheap pass counts the lines of
  every range, so each row knows its row number, which the report's details and the
  first-listed-wins duplicate rule need and which Beam's ``ReadFromText`` does not give.
  Rows sharing an id meet in ``HashOrder`` (below), where ``inputs.first_listed`` rules on them.
  Rows are lines: a quoted field holding a line break cannot be found from a byte offset,
  so such a row is reported ``bad_manifest_row`` (``scan_inputs``, which reads the file from
  the start, still accepts it). GLDv2's manifests have none.
* A folder tree is listed at its root by one worker (``inputs.folder_top``); every label
  folder is then walked by whichever worker gets it (``inputs.walk_label``). Beam's own
  file matching (``fileio.MatchAll``) is not used: on local disks it drops broken symlinks
  silently and cannot see symlinked folders (which must be reported ``not_followed``), and
  it knows only Beam's file systems, not the TensorFlow ones (``ram://`` and plug-ins) that
  TFX's fileio reaches.

Both end in ``hash_order.HashOrder``: the workers put the candidates in the order of their
id's hash through files under ``scratch``, which spreads them over workers and mixes labels
(every stretch of the written examples is a sample of all labels, for the Trainer's shuffle
buffer), and brings a manifest's duplicate ids together for the first-listed rule, without
a grouping that the DirectRunner would hold in the launcher.
"""
from __future__ import annotations

import codecs
import csv
import os
from typing import Iterator, Optional

import apache_beam as beam

from components.image_example_gen import hash_order, inputs, storage

CHUNK_BYTES = 16 << 20  # 4.1 M GLDv2 rows (~170 MB) make 11 ranges: enough to spread, few to count


def _size(path: str) -> int:
    if storage.is_uri(path):
        from tfx.dsl.io import fileio

        return fileio.stat(path).length
    return os.path.getsize(path)


def chunk_ranges(path: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """[start, end) byte ranges covering the file."""
    size = _size(path)
    for start in range(0, size, chunk_bytes):
        yield start, min(start + chunk_bytes, size)


def lines_in(path: str, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of every line whose first byte is in [start, end), ending included."""
    opener = storage.open_binary if storage.is_uri(path) else _open_local
    with opener(path, max(start - 1, 0)) as f:
        pos = max(start - 1, 0)
        if start > 0:
            pos += len(f.readline())  # the line that began before the range, or just its "\n"
        while pos < end:
            line = f.readline()
            if not line:
                break
            yield pos, line
            pos += len(line)


class _open_local:
    def __init__(self, path: str, offset: int):
        self._f = open(path, "rb", buffering=1 << 20)
        self._f.seek(offset)

    def __enter__(self):
        return self._f

    def __exit__(self, *exc):
        self._f.close()


def read_columns(path: str, labels_required: bool) -> list[str]:
    """The manifest's header (its first line), checked: the launcher's one read of the file."""
    for _, line in lines_in(path, 0, 1):
        return inputs.check_columns(path, next(csv.reader([_text(line)]), []), labels_required)
    return inputs.check_columns(path, [], labels_required)


def _text(line: bytes) -> str:
    text = codecs.decode(line, "utf-8")
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def parse_row(row_no: int, line: bytes, columns: list[str], root: str,
              labels_required: bool) -> Optional[inputs.Candidate]:
    """One manifest line as a Candidate (``inputs.manifest_candidate``); None for a blank line
    (skipped, as ``csv.DictReader`` skips it)."""
    try:
        text = _text(line)
    except UnicodeDecodeError as e:
        return inputs.Candidate(f"<row {row_no}>", "", root, "",
                                ("bad_manifest_row", f"row {row_no}: not UTF-8 ({e.reason} at byte {e.start})"))
    if text.count('"') % 2:  # quotes pair up in a whole CSV record; an odd count spans lines
        return inputs.Candidate(f"<row {row_no}>", "", root, "",
                                ("bad_manifest_row", f"row {row_no}: a quoted field holds a line break "
                                                     "(not supported: the manifest is read in parallel, by lines)"))
    fields = next(csv.reader([text]), [])
    if not fields:
        return None
    return inputs.manifest_candidate(row_no, dict(zip(columns, fields)), root, labels_required)


class _CountLines(beam.DoFn):
    def __init__(self, path: str):
        self._path = path

    def process(self, chunk):
        yield chunk[0], sum(1 for _ in lines_in(self._path, *chunk))


class _ReadRows(beam.DoFn):
    """The rows of one byte range, keyed by image id, with their row numbers."""

    def __init__(self, path: str, columns: list[str], root: str, labels_required: bool):
        self._path, self._columns, self._root, self._labels_required = path, columns, root, labels_required

    def process(self, chunk, counts):
        row_no = sum(n for start, n in counts.items() if start < chunk[0])  # lines before the range
        for offset, line in lines_in(self._path, *chunk):
            row_no += 1
            if offset == 0:
                continue  # the header, row 1
            c = parse_row(row_no, line, self._columns, self._root, self._labels_required)
            if c is not None:
                yield c.image_id, (row_no, c)


class ListCandidates(beam.PTransform):
    """Every candidate of ``input_base``, as ``scan_inputs`` would list it, found by workers.

    Args:
      input_base, images_subdir, labels_required: as for ``inputs.scan_inputs``.
      scratch: a folder every worker reaches, for ``HashOrder``'s files (the caller removes it).
      chunk_bytes: manifest byte range per work item.

    Raises (when applied, in the launcher: the only reads it does there):
      FileNotFoundError: ``input_base`` does not exist.
      ValueError: the manifest lacks the required columns.
    """

    def __init__(self, input_base: str, scratch: str, images_subdir: Optional[str] = None,
                 labels_required: bool = True, chunk_bytes: int = CHUNK_BYTES):
        super().__init__()
        self._input_base, self._scratch, self._images_subdir = input_base, scratch, images_subdir
        self._labels_required, self._chunk_bytes = labels_required, chunk_bytes

    def expand(self, pbegin):
        location = storage.canonical(self._input_base)
        uri = storage.is_uri(location)
        if not (storage.exists(location) if uri else os.path.exists(location)):
            raise FileNotFoundError(f"input_base {self._input_base!r} does not exist")
        start = pbegin | "Start" >> beam.Create([None])
        if inputs.is_manifest(location):
            return self._manifest(start, location)
        return self._folder(start, location if uri else os.path.abspath(location))

    def _manifest(self, start, path):
        columns = read_columns(path, self._labels_required)
        root = inputs.manifest_image_root(path, self._images_subdir)
        chunks = (start
                  | "ByteRanges" >> beam.FlatMap(lambda _, p, n: chunk_ranges(p, n), path, self._chunk_bytes)
                  | "SpreadRanges" >> beam.Reshuffle())
        counts = chunks | "CountLines" >> beam.ParDo(_CountLines(path))
        return (chunks
                | "ReadRows" >> beam.ParDo(_ReadRows(path, columns, root, self._labels_required),
                                           counts=beam.pvalue.AsDict(counts))
                | "HashOrder" >> hash_order.HashOrder(self._scratch, per_id=inputs.first_listed))

    def _folder(self, start, root):
        labels_required = self._labels_required
        # A label folder travels as bytes: its name may not be UTF-8 (surrogate-escaped),
        # which Beam's str coder refuses.
        return (start
                | "ListRoot" >> beam.FlatMap(lambda _: (os.fsencode(i) if isinstance(i, str) else i
                                                        for i in inputs.folder_top(root, labels_required)))
                | "SpreadLabels" >> beam.Reshuffle()
                | "WalkLabels" >> beam.FlatMap(
                    lambda i: inputs.walk_label(root, os.fsdecode(i)) if isinstance(i, bytes) else [i])
                | "ById" >> beam.Map(lambda c: (c.image_id, c))
                | "HashOrder" >> hash_order.HashOrder(self._scratch))
