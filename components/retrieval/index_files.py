"""Index folders on any filesystem TensorFlow opens: local paths, gs://, ram:// (tests).

faiss reads and writes local files only, and numpy memory-maps only local files, so an index
on an object store is written to a local folder first and copied up (``publish``: ``meta.json``
last, so a reader never loads a half-copied index), and read through a local copy
(``local_copy``: a fresh copy per load, removed when the process exits). Local
paths are used in place: no copy.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

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
    """Copies an index folder to ``destination`` (any filesystem), replacing what was there;
    ``meta.json`` goes last, so a reader never loads a half-copied index."""
    import tensorflow as tf

    if tf.io.gfile.exists(destination):
        tf.io.gfile.rmtree(destination)
    tf.io.gfile.makedirs(destination)
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
