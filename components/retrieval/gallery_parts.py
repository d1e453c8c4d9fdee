"""A gallery's embeddings as part files, one per listing unit; the parts are also the cache.

A unit is what one worker lists and embeds on its own, so no step ever holds the gallery's
files together: a label folder; a slice of the files directly under the root (those whose name
hashes to it, ``ROOT_SLICE_FILES`` a slice); or a byte range of a CSV manifest. Its part is two
files in the parts folder (any filesystem TensorFlow opens)::

    part-<H>.npy    float32 [rows, D]: the unit's embedded images, in listing order
    part-<H>.json   what the rows are (ids, labels, paths, the files' keys, CSV row numbers),
                    the unit's failures and its listing's signature; written last: a part
                    without it is incomplete and ignored

``<H>`` is a digest of the unit, so the next build with the same model finds the unit's part
by name: a file whose key (``file_key``: path, size, modification time) is unchanged takes its
vector from there, and a unit whose listing is unchanged is reused without reading its vectors.
Adding one image embeds that image and rewrites its unit's part only.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zlib
from typing import Iterator, Optional

import numpy as np

from components.image_example_gen import inputs, listing, storage

ROOT_SLICE_FILES = 5_000  # files directly under the root: one unit per this many (by name hash)
# A manifest range per unit: ~25,000 GLDv2 rows, whose vectors (50 MB at 512-d) a worker holds
# until it writes the part (ingestion's 16 MB ranges would be 800 MB).
RANGE_BYTES = 1 << 20


def join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


# ----------------------------------------------------------------------------------- units

def list_units(location: str, images_subdir: Optional[str] = None) -> Iterator[tuple]:
    """The units of a gallery, in listing order (run by a worker: one listing of the root, or
    one stat of a CSV); the index keeps this order.

    Yields ``("label", root, name)`` per label folder, ``("slice", root, i, n)`` for the files
    directly under the root, ``("range", csv, root, columns, start, end)`` per manifest range.
    """
    if inputs.is_manifest(location):
        columns = listing.read_columns(location, labels_required=False)
        root = inputs.manifest_image_root(location, images_subdir)
        for start, end in listing.chunk_ranges(location, RANGE_BYTES):
            yield ("range", location, root, columns, start, end)
        return
    root = location if storage.is_uri(location) else os.path.abspath(location)
    labels, files = [], 0
    for item in inputs.folder_top(root, labels_required=False):
        if isinstance(item, str):
            labels.append(os.fsencode(item))  # bytes: a name may not be UTF-8
        else:
            files += 1
    slices = math.ceil(files / ROOT_SLICE_FILES)
    for i in range(slices):  # the root's own files first, as scan_inputs lists them
        yield ("slice", root, i, slices)
    for name in labels:
        yield ("label", root, name)


def unit_lines(unit: tuple) -> Iterator[tuple[int, bytes]]:
    """A range unit's (offset, line) pairs (for counting its rows)."""
    _, path, _, _, start, end = unit
    return listing.lines_in(path, start, end)


def unit_candidates(unit: tuple, rows_before: int = 0) -> Iterator[tuple[Optional[int], inputs.Candidate]]:
    """(CSV row number or None, Candidate) of every file or row of the unit, in listing order,
    with the verdicts ``scan_inputs`` gives (except ``duplicate_id``, which needs every row:
    ``assemble`` applies it)."""
    kind = unit[0]
    if kind == "label":
        for c in inputs.walk_label(unit[1], os.fsdecode(unit[2])):
            yield None, c
    elif kind == "slice":
        _, root, i, n = unit
        for item in inputs.folder_top(root, labels_required=False):
            if not isinstance(item, str) and zlib.crc32(item.relpath.encode("utf-8", "surrogateescape")) % n == i:
                yield None, item
    else:
        _, path, root, columns, start, end = unit
        row_no = rows_before
        for offset, line in listing.lines_in(path, start, end):
            row_no += 1
            if offset == 0:
                continue  # the header, row 1
            c = listing.parse_row(row_no, line, columns, root, labels_required=False)
            if c is not None:
                yield row_no, c


def part_name(unit: tuple) -> str:
    """``part-<H>``: the same unit of the same gallery always gets the same name."""
    identity = (unit[0], unit[1], unit[4], unit[5]) if unit[0] == "range" else unit
    return "part-" + hashlib.sha256(repr(identity).encode("utf-8", "surrogateescape")).hexdigest()[:20]


def listing_signature(entries) -> str:
    """A digest of a unit's listing: ids, labels, paths, keys, row numbers and verdicts."""
    digest = hashlib.sha256()
    for row_no, c, key in entries:
        digest.update(json.dumps([row_no, c.image_id, c.label, c.relpath, key, c.problem],
                                 ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def file_key(candidate) -> Optional[str]:
    """A gallery file's fingerprint: path, size and modification time (None when the listing
    already refused it or it cannot be stat'ed: such a file is never taken from the cache)."""
    import tensorflow as tf

    if candidate.problem is not None:
        return None
    path = candidate.path
    try:  # os for local paths: a name that is not UTF-8 (surrogate-escaped) is no str TF takes
        if storage.is_uri(path):
            st = tf.io.gfile.stat(path)
            size, mtime = st.length, st.mtime_nsec
        else:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
    except (OSError, tf.errors.OpError):
        return None
    return json.dumps([os.fsdecode(path), int(size), int(mtime)], ensure_ascii=False)


# ------------------------------------------------------------------------------ part files

def read_meta(folder: str, name: str) -> Optional[dict]:
    """A complete part's json, or None (no part, or one a killed worker left half written)."""
    import tensorflow as tf

    path = join(folder, name + ".json")
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        return json.loads(f.read().decode("utf-8", "surrogateescape"))


def read_vectors(folder: str, name: str, mmap: bool = True) -> np.ndarray:
    """A part's vectors: memory-mapped when local, read whole from an object store."""
    import tensorflow as tf

    path = join(folder, name + ".npy")
    if mmap and not storage.is_uri(path):
        return np.load(storage.canonical(path), mmap_mode="r", allow_pickle=False)
    with tf.io.gfile.GFile(path, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def write_part(folder: str, name: str, vectors: np.ndarray, meta: dict) -> None:
    """Writes (or replaces) a part: vectors, then the json that marks it complete, each under a
    temporary name renamed into place, so a reader sees the old part or the new one."""
    import tensorflow as tf

    tf.io.gfile.makedirs(folder)
    json_path = join(folder, name + ".json")
    if tf.io.gfile.exists(json_path):
        tf.io.gfile.remove(json_path)  # incomplete from here until the new json is in place
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float32))
    for path, data in ((join(folder, name + ".npy"), buffer.getvalue()),
                       (json_path, json.dumps(meta, ensure_ascii=False).encode("utf-8", "surrogateescape"))):
        with tf.io.gfile.GFile(path + ".tmp", "wb") as f:
            f.write(data)
        tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def copy_part(source: str, destination: str, name: str) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(destination)
    for suffix in (".npy", ".json"):  # the json last: it marks the copy complete
        tf.io.gfile.copy(join(source, name + suffix), join(destination, name + suffix), overwrite=True)


def remove_part(folder: str, name: str) -> None:
    import tensorflow as tf

    for suffix in (".json", ".npy"):  # the json first: the part is incomplete from then on
        if tf.io.gfile.exists(join(folder, name + suffix)):
            tf.io.gfile.remove(join(folder, name + suffix))


def part_names(folder: str) -> list[str]:
    """The complete parts in ``folder`` (those with their json), sorted."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(folder):
        return []
    names = {n.rstrip("/") for n in tf.io.gfile.listdir(folder)}
    return sorted(n[:-5] for n in names if n.startswith("part-") and n.endswith(".json")
                  and n[:-5] + ".npy" in names)
