"""The Pusher's destination, TF Serving's layout ``<base>/<version>/saved_model.pb``: which
version folders are complete, and removing the ones a killed push left behind.

TFX's Pusher copies the exported model file by file into ``<base>/<version>/``, so a push
killed part-way leaves a version folder with some files and no (or a truncated)
``saved_model.pb``. TF Serving skips such a folder, but the project's own readers would pick
the highest number; the next push gets a new version number and never finishes the old one.
So the local runner removes incomplete version folders before each run (under the run lock,
so no push is in progress then), and readers of a serving folder (``resolve_model_dir``) only
ever pick a complete version. Everything goes through ``tf.io.gfile`` (what TFX's fileio
uses for TensorFlow's filesystems): local paths, gs://, ram://, any filesystem TF opens.
"""
from __future__ import annotations

import os
from typing import List, Optional

SAVED_MODEL_FILE = "saved_model.pb"


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def is_complete_version(version_dir: str) -> bool:
    """True when ``saved_model.pb`` is there and parses as a SavedModel with a graph.

    Parsing, not just existence: a copy killed inside the file leaves a truncated protobuf,
    which fails to parse (its length-prefixed MetaGraphDef runs past the end).
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = _join(version_dir, SAVED_MODEL_FILE)
    if not tf.io.gfile.exists(path):
        return False
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(data)
    except DecodeError:
        return False
    return len(proto.meta_graphs) > 0


def version_dirs(base: str) -> List[str]:
    """The integer-named folders under ``base`` (what TF Serving treats as versions), oldest first."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(base):
        return []
    names = [n.strip("/") for n in tf.io.gfile.listdir(base)]  # object stores list "name/"
    return [_join(base, n) for n in sorted((n for n in names if n.isdigit()), key=int)
            if tf.io.gfile.isdir(_join(base, n))]


def complete_versions(base: str) -> List[str]:
    return [v for v in version_dirs(base) if is_complete_version(v)]


def remove_incomplete_versions(base: str) -> List[str]:
    """Deletes every incomplete version folder under ``base``; returns what it removed.

    Only safe while no push into ``base`` is running (the local runner holds the run lock).
    """
    import tensorflow as tf

    removed = []
    for version in version_dirs(base):
        if not is_complete_version(version):
            tf.io.gfile.rmtree(version)
            removed.append(version)
    return removed


def model_digest(model_dir: str) -> str:
    """A SHA-256 over every file of a SavedModel folder (relative names and bytes, in sorted
    order): the model's identity whatever folder or version number it was copied to.

    The Pusher copies the Trainer's files byte for byte, so a model pushed again under a new
    version has the same digest, and a retrained one (new weights) a different one. The
    gallery's embedding cache is keyed by it (``components.gallery_index``).
    """
    import hashlib

    import tensorflow as tf

    base = model_dir.rstrip("/")
    names = []
    for folder, _, files in tf.io.gfile.walk(base):
        rel = folder[len(base):].strip("/")
        names += [f"{rel}/{name}" if rel else name for name in files]
    if SAVED_MODEL_FILE not in names:
        raise FileNotFoundError(f"{model_dir}: no {SAVED_MODEL_FILE} (not a SavedModel folder)")
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode("utf-8") + b"\0")
        with tf.io.gfile.GFile(_join(base, name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def model_version(model_dir: str) -> Optional[int]:
    """The version number of a resolved model folder (its integer name), or None."""
    name = os.path.basename(str(model_dir).rstrip("/"))
    return int(name) if name.isdigit() else None


class VersionMismatch(ValueError):
    """A gallery index and a model that are not a pair (the message names both versions)."""


def check_index_matches_model(index_version, index_dir: str, model_dir: str) -> None:
    """Refuses to search an index with a model of another version.

    An index pushed by the pipeline records the version of the model that embedded it
    (``GalleryIndex.model_version``); the model's version is its folder's integer name (TF
    Serving's layout). Embeddings of two models live in unrelated spaces, so a mismatch would
    return confident nonsense; an index that records no version (built by hand from an
    unversioned folder) is not checked.

    Raises:
      VersionMismatch: the versions differ, or the model is not in a version folder.
    """
    if index_version is None:
        return
    given = model_version(model_dir)
    if given is None:
        raise VersionMismatch(
            f"the index {index_dir} was built with model version {index_version}, but the model "
            f"{model_dir} is not a version folder <base>/<version>/, so the pair cannot be checked; "
            f"give the pushed model of version {index_version}")
    if int(given) != int(index_version):
        raise VersionMismatch(
            f"the index {index_dir} was built with model version {index_version}, but the model "
            f"{model_dir} is version {given}: their embeddings are not comparable. Search the index "
            f"of version {given} (the pipeline pushes it beside the model) or use model version "
            f"{index_version}")
