"""Index folders on any filesystem TensorFlow opens: local paths, gs://, ram:// (tests).

faiss reads and writes local files only, and numpy memory-maps only local files, so an index
on an object store is written to a local folder first and copied up (``publish``: ``meta.json``
last, so a reader never loads a half-copied index), and read through a local copy
(``local_copy``: a fresh copy per load, removed when the process exits). Local
paths are used in place: no copy.
"""
from __future__ import annotations

import atexit
import glob
import json
import math
import os
import shutil
import tempfile
from typing import Iterable

from components.image_example_gen import storage

META_FILE = "meta.json"  # an index folder's completeness marker: written, and copied, last
FAISS_FILE = "faiss.index"


def is_remote(path: str) -> bool:
    """True for a location only ``tf.io.gfile`` reaches (a URI that is not ``file://``)."""
    return storage.is_uri(str(path))


def local_path(path: str) -> str:
    """``path`` as ``os`` and ``open`` take it (a ``file://`` URI becomes its path)."""
    return storage.canonical(str(path))


def join(base: str, *names: str) -> str:
    return "/".join([str(base).rstrip("/"), *names])


def is_index(path: str) -> bool:
    """True when ``path`` holds a complete index (its ``meta.json``), on any filesystem."""
    import tensorflow as tf

    return tf.io.gfile.exists(join(path, META_FILE))


def is_folder(path: str) -> bool:
    import tensorflow as tf

    return tf.io.gfile.isdir(str(path))


def publish(local_dir: str, destination: str) -> None:
    """Copies an index folder to ``destination`` (any filesystem), replacing the index there:
    its ``meta.json`` goes first (the folder is incomplete from then on), an earlier build's
    shards and graph next, and the new ``meta.json`` is copied last, so a reader never loads
    a half-copied index. Other files (the CLI's ``logs/``) stay."""
    import tensorflow as tf

    tf.io.gfile.makedirs(destination)
    if tf.io.gfile.exists(join(destination, META_FILE)):
        tf.io.gfile.remove(join(destination, META_FILE))
    for name in (n.rstrip("/") for n in tf.io.gfile.listdir(destination)):
        stale = (name.startswith("embeddings") and name.endswith(".npy")) or name == FAISS_FILE
        if stale and tf.io.gfile.exists(join(destination, name)):  # exists: an object store's listing may hold phantoms
            tf.io.gfile.remove(join(destination, name))
    for name in sorted(os.listdir(local_dir), key=lambda n: n == META_FILE):
        tf.io.gfile.copy(os.path.join(local_dir, name), join(destination, name), overwrite=True)


def local_copy(directory: str) -> str:
    """A local folder holding the files of the remote index ``directory`` (``meta.json``
    required, so an incomplete index is refused before anything is copied).

    Raises:
      FileNotFoundError: ``directory`` has no ``meta.json``.
    """
    import tensorflow as tf

    key = str(directory).rstrip("/")
    if not is_index(key):
        raise FileNotFoundError(f"{directory}: no {META_FILE} (not an index, or incomplete)")
    local = tempfile.mkdtemp(prefix="dolg-tfx-index-copy-")
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    # The files meta.json names, not a listing: an object store lists by name prefix (ram://
    # lists a phantom "0" in gallery_index/1 beside gallery_index/10), and meta.json first,
    # so a build publishing to the same folder meanwhile cannot slip files in unnoticed (load
    # checks every file against it).
    tf.io.gfile.copy(join(key, META_FILE), os.path.join(local, META_FILE), overwrite=True)
    with open(os.path.join(local, META_FILE), encoding="utf-8") as f:
        meta = json.load(f)
    names = ["ids.json", *(meta.get("shards") or ["embeddings.npy"])]
    if meta.get("backend") in ("hnsw", "ivfpq") and tf.io.gfile.exists(join(key, FAISS_FILE)):
        names.append(FAISS_FILE)
    for name in names:
        tf.io.gfile.copy(join(key, name), os.path.join(local, name), overwrite=True)
    return local


# ------------------------------------------------------------------ writing a local index folder

def shard_names(count: int, shard_rows: int) -> list:
    """``embeddings-SSSSS-of-NNNNN.npy`` for ``count`` rows in shards of ``shard_rows``."""
    n_shards = max(1, math.ceil(count / shard_rows))
    return [f"embeddings-{i:05d}-of-{n_shards:05d}.npy" for i in range(n_shards)]


def clear_for_write(directory: str) -> None:
    """Makes the local ``directory`` ready for a new index: ``meta.json`` removed first (the
    folder is incomplete until it is back), then an earlier build's shards and graph."""
    os.makedirs(directory, exist_ok=True)
    meta_path = os.path.join(directory, META_FILE)
    if os.path.exists(meta_path):
        os.remove(meta_path)
    stale = glob.glob(os.path.join(directory, "embeddings*.npy")) + [os.path.join(directory, FAISS_FILE)]
    for path in stale:
        if os.path.exists(path):
            os.remove(path)


def write_json_array(path: str, items: Iterable) -> None:
    """A JSON array written item by item: a million ids never need to be one string."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("[")
        for i, item in enumerate(items):
            f.write((", " if i else "") + json.dumps(item))
        f.write("]")


def write_meta(directory: str, meta: dict, arrays: dict) -> None:
    """``meta.json``, written last and renamed into place: ``meta`` plus one JSON array (or
    null) per key of ``arrays``, each streamed from its iterable (labels and paths of a large
    gallery are never held as one list or one string)."""
    path = os.path.join(directory, META_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(json.dumps(meta)[:-1])
        for key, items in arrays.items():
            f.write(f", {json.dumps(key)}: ")
            if items is None:
                f.write("null")
                continue
            f.write("[")
            for i, item in enumerate(items):
                f.write((", " if i else "") + json.dumps(item))
            f.write("]")
        f.write("}")
    os.replace(path + ".tmp", path)
