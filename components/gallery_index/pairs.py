"""Which gallery index goes with which model, read from the folders the pipeline pushes into.

The Pusher writes ``serving_model/<V>``, then the GalleryIndexer ``gallery_index/<V>``
(``meta.json`` last). Between the two, or when the GalleryIndexer failed or was killed, the
newest model has no index yet; the next pipeline run completes the pair (the Pusher's result
is cached, the GalleryIndexer runs again). A reader never pairs a model with another
model's index: embeddings of two models live in unrelated spaces. Given both bases, it
takes the newest version that has both halves and says which newer model it passed over;
given an index version and a model version that differ, it refuses
(``model_versions.check_index_matches_model``). Any filesystem TensorFlow opens.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import List, Optional

from components.retrieval import index_files
from components.retrieval.model_versions import (VersionMismatch, complete_versions, is_complete_version,
                                                 model_version, version_dirs)


def complete_index_versions(base: str) -> List[str]:
    """The version folders under ``base`` that hold a complete index, oldest first ([] when
    ``base`` is itself an index or no folder)."""
    if index_files.is_index(base) or not index_files.is_folder(base):
        return []
    return [v for v in version_dirs(base) if index_files.is_index(v)]


def latest_index_dir(path: str) -> str:
    """``path`` when it is an index (it has ``meta.json``); for the pushed index base
    (``gallery_index/``), its newest complete version, the index of the newest pushed model
    that has one. Anything else comes back unchanged, for the loader to refuse with its own
    message."""
    complete = complete_index_versions(path)
    return complete[-1] if complete else path


@dataclasses.dataclass
class Pair:
    """What to search: an index folder, the model to embed queries with (None: the one the
    index records) and a note for the user when a newer model was passed over."""
    index_dir: str
    model_dir: Optional[str]
    note: Optional[str] = None


def _passed_over(serving_base: str, version: int, index_base: str) -> Optional[str]:
    newer = [v for v in complete_versions(serving_base) if (model_version(v) or 0) > version]
    if not newer:
        return None
    return (f"model version {model_version(newer[-1])} in {serving_base} has no complete gallery index in "
            f"{index_base} yet (its GalleryIndexer did not finish; the next pipeline run completes the pair): "
            f"searching the newest complete pair, version {version}")


def _recorded_model(index_dir: str) -> Optional[str]:
    import tensorflow as tf

    with tf.io.gfile.GFile(index_files.join(index_dir, index_files.META_FILE)) as f:
        return json.loads(f.read()).get("model")


def resolve_pair(index_path: str, model_path: Optional[str] = None) -> Pair:
    """The index and model a search uses.

    Args:
      index_path: an index folder, or the base the pipeline pushes indexes into.
      model_path: None (the model the index records), a model version folder, or a serving
        base (``serving_model/``).
    Returns:
      A ``Pair``. With two bases, the newest version complete in both; with an index base
      alone, its newest complete index and the model it records.
    Raises:
      VersionMismatch: two bases with no version in common.
      FileNotFoundError: ``model_path`` holds no complete model.
    """
    from components.retrieval.serving_contract import resolve_model_dir

    indexes = complete_index_versions(index_path)
    if not indexes:  # an index folder (or nothing: the loader says what is wrong)
        return Pair(index_path, None if model_path is None else resolve_model_dir(model_path))
    by_version = {int(os.path.basename(v.rstrip("/"))): v for v in indexes}
    if model_path is None:
        newest = indexes[-1]
        recorded = _recorded_model(newest)
        base = os.path.dirname(recorded.rstrip("/")) if recorded and model_version(recorded) is not None else None
        note = _passed_over(base, model_version(recorded), index_path) if base else None
        return Pair(newest, None, note)
    model_dir = resolve_model_dir(model_path)
    if model_version(model_dir) is None or is_complete_version(str(model_path)):
        return Pair(indexes[-1], model_dir)  # one model folder: checked against the index by the caller
    models = {model_version(v): v for v in complete_versions(model_path)}
    common = sorted(set(models) & set(by_version))
    if not common:
        raise VersionMismatch(
            f"no model version in {model_path} (versions {sorted(models)}) has a complete gallery index in "
            f"{index_path} (versions {sorted(by_version)}): nothing can be searched with a matching model")
    version = common[-1]
    return Pair(by_version[version], models[version], _passed_over(model_path, version, index_path))
