"""Building the gallery index of one pushed model version, incrementally.

Layout (``index_base`` is a sibling of the Pusher's serving folder, chosen by the runner)::

    serving_model/<V>/saved_model.pb       the model TF Serving loads (the Pusher's)
    gallery_index/<V>/meta.json ...        its gallery index (GalleryIndex, model_version V)
    gallery_index/_cache/<model digest>/   embeddings of the gallery files by that model

Same name, same model: a reader pairs ``serving_model/<V>`` with ``gallery_index/<V>``.

The cache makes a rebuild cost only what changed: an embedding is reused when the model's
digest (``model_versions.model_digest``: the same bytes, whatever version folder they were
pushed to) and the file's fingerprint (path, size, modification time) are unchanged. A new
model has a new digest, so its cache starts empty and every image is embedded again.
Everything goes through ``tf.io.gfile``, so both folders may be on gs:// (``GalleryIndex.save``
writes locally; the folder is then copied, ``meta.json`` last, which marks it complete).
"""
from __future__ import annotations

import dataclasses
import io
import json
import tempfile
from typing import List, Optional, Sequence

import numpy as np

from components.retrieval.index_files import publish

CACHE_DIR = "_cache"
CACHE_KEYS, CACHE_VECTORS = "keys.json", "embeddings.npy"
SUMMARY_FILE = "summary.json"  # what a build did, in the GalleryIndexer's artifact


def _join(base: str, *names: str) -> str:
    return "/".join([base.rstrip("/"), *names])


def index_version_dir(index_base: str, version) -> str:
    """Where the index of model version ``version`` is pushed: ``<index_base>/<version>``."""
    return _join(index_base, str(version))


def file_key(candidate) -> Optional[str]:
    """A gallery file's fingerprint: path, size and modification time (None when the scan
    already refused it or it cannot be stat'ed: such a file is never taken from the cache)."""
    import tensorflow as tf

    if candidate.problem is not None:
        return None
    try:
        st = tf.io.gfile.stat(candidate.path)
    except tf.errors.OpError:
        return None
    return json.dumps([candidate.path, int(st.length), int(st.mtime_nsec)])


def cache_dir(index_base: str, digest: str) -> str:
    return _join(index_base, CACHE_DIR, digest)


def load_cache(index_base: str, digest: str) -> dict:
    """{file key: embedding} of this model's cache, or {} when there is none (or it is torn:
    the keys file is written last, so a cache without it is ignored)."""
    import tensorflow as tf

    folder = cache_dir(index_base, digest)
    keys_path, vectors_path = _join(folder, CACHE_KEYS), _join(folder, CACHE_VECTORS)
    if not (tf.io.gfile.exists(keys_path) and tf.io.gfile.exists(vectors_path)):
        return {}
    with tf.io.gfile.GFile(keys_path) as f:
        keys = json.loads(f.read())
    with tf.io.gfile.GFile(vectors_path, "rb") as f:
        vectors = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if len(keys) != len(vectors):
        return {}
    return dict(zip(keys, vectors))


def save_cache(index_base: str, digest: str, entries: dict) -> None:
    """Replaces this model's cache with ``entries`` (the current gallery's embeddings only, so
    files removed from the gallery do not accumulate)."""
    import tensorflow as tf

    folder = cache_dir(index_base, digest)
    tf.io.gfile.makedirs(folder)
    keys = sorted(entries)
    keys_path = _join(folder, CACHE_KEYS)
    if tf.io.gfile.exists(keys_path):
        tf.io.gfile.remove(keys_path)  # torn until the new keys are written
    buffer = io.BytesIO()
    np.save(buffer, np.stack([entries[k] for k in keys]).astype(np.float32) if keys
            else np.zeros((0, 0), np.float32))
    with tf.io.gfile.GFile(_join(folder, CACHE_VECTORS), "wb") as f:
        f.write(buffer.getvalue())
    with tf.io.gfile.GFile(keys_path, "w") as f:
        f.write(json.dumps(keys))


@dataclasses.dataclass
class BuildResult:
    """What a build did: the pushed index, and how many images were embedded, reused or skipped."""
    index_dir: str
    model_version: int
    model_digest: str
    images: int
    embedded: int
    reused: int
    failures: List = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["failures"] = [{"id": f.image_id, "path": f.path, "reason": f.reason} for f in self.failures]
        return out


def describe(summary: dict) -> str:
    """One line on a GalleryIndexer's ``summary.json``, for the console and the run summary."""
    if not summary.get("indexed"):
        return f"no index pushed ({summary.get('reason', 'nothing was pushed')})"
    return (f"index of model version {summary['model_version']} pushed to {summary['index_dir']}: "
            f"{summary['images']} images, {summary['embedded']} embedded, {summary['reused']} reused "
            f"from the cache, {len(summary['failures'])} skipped")


def build_index(candidates: Sequence, model_dir: str, model_version, index_base: str, work_dir: str,
                pipeline_args: Sequence[str] = (), batch_size: int = 32,
                max_bytes: Optional[int] = None, dba: int = 0, dba_alpha: float = 3.0) -> BuildResult:
    """Embeds what the cache lacks, writes the index of ``model_version`` to
    ``<index_base>/<model_version>`` and refreshes the cache.

    Args:
      candidates: the gallery (``scan_inputs(gallery, labels_required=False)``), in index order.
      model_dir: the pushed SavedModel version folder that embeds the gallery.
      work_dir: scratch for the Beam pipeline's shards (on Dataflow: storage its workers write).
      pipeline_args: the pipeline's Beam arguments.
      dba, dba_alpha: database-side augmentation of the index (``expansion.augment_index``;
        recorded in its meta.json); 0: the raw embeddings. The cache keeps the raw embeddings.
    Raises:
      ValueError: no gallery image could be embedded.
    """
    from components.retrieval.embedder import DEFAULT_MAX_BYTES
    from components.retrieval.expansion import augment_index
    from components.retrieval.gallery_embedding import embed_candidates_with_beam
    from components.retrieval.index import GalleryIndex
    from components.retrieval.model_versions import model_digest

    digest = model_digest(model_dir)
    cache = load_cache(index_base, digest)
    keys = [file_key(c) for c in candidates]
    missing = [i for i, key in enumerate(keys) if key is None or key not in cache]
    vectors = {i: cache[key] for i, key in enumerate(keys) if key is not None and key in cache}
    failures = []
    if missing:
        res = embed_candidates_with_beam([candidates[i] for i in missing], model_dir, work_dir,
                                         batch_size, max_bytes or DEFAULT_MAX_BYTES,
                                         pipeline_args=pipeline_args)
        for position, vector in zip(res.positions, res.embeddings):
            vectors[missing[int(position)]] = vector
        failures = res.failures
    rows = sorted(vectors)
    if not rows:
        raise ValueError(f"none of the {len(candidates)} gallery images could be embedded with {model_dir}"
                         + (f" (first failure: {failures[0]})" if failures else ""))
    labels = [candidates[i].label for i in rows]
    index = GalleryIndex([candidates[i].image_id for i in rows], np.stack([vectors[i] for i in rows]),
                         labels=labels if any(labels) else None,  # an unlabelled gallery
                         paths=[candidates[i].path for i in rows], model=model_dir,
                         model_version=int(model_version))
    index = augment_index(index, dba, dba_alpha)
    destination = index_version_dir(index_base, model_version)
    with tempfile.TemporaryDirectory(prefix="dolg-tfx-gallery-index-") as local:
        index.save(local)
        publish(local, destination)
    save_cache(index_base, digest, {keys[i]: vectors[i] for i in rows if keys[i] is not None})
    return BuildResult(index_dir=destination, model_version=int(model_version), model_digest=digest,
                       images=len(rows), embedded=len(rows) - (len(candidates) - len(missing)),
                       reused=len(candidates) - len(missing), failures=list(failures))
