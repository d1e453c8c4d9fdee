"""Building the gallery index of one pushed model version, incrementally.

Layout (``index_base`` is a sibling of the Pusher's serving folder, chosen by the runner)::

    serving_model/<V>/saved_model.pb       the model TF Serving loads (the Pusher's)
    gallery_index/<V>/meta.json ...        its gallery index (GalleryIndex, model_version V)
    gallery_index/_cache/<model digest>/   that model's embeddings of the gallery, one part
                                           per listing unit (``retrieval.gallery_parts``)

Same name, same model: a reader pairs ``serving_model/<V>`` with ``gallery_index/<V>``
(``pairs``).

The cache makes a rebuild cost only what changed: an embedding is reused when the model's
digest (``model_versions.model_digest``: the same bytes, whatever version folder they were
pushed to) and the file's fingerprint (path, size, modification time) are unchanged; a unit
(a label folder, say) whose listing is unchanged is not even read. A new model has a new
digest, so its cache starts empty and every image is embedded again. The workers list, embed
and write the parts (``retrieval.gallery_embedding``); this process reads their names and
counts, then maps the parts to build the index. Everything goes through ``tf.io.gfile``, so
both folders may be on gs:// (``GalleryIndex.save`` writes locally; the folder is then copied,
``meta.json`` last, which marks it complete).
"""
from __future__ import annotations

import dataclasses
import tempfile
from typing import List, Optional, Sequence

from components.retrieval.index_files import publish

CACHE_DIR = "_cache"
SUMMARY_FILE = "summary.json"  # what a build did, in the GalleryIndexer's artifact


def _join(base: str, *names: str) -> str:
    return "/".join([base.rstrip("/"), *names])


def index_version_dir(index_base: str, version) -> str:
    """Where the index of model version ``version`` is pushed: ``<index_base>/<version>``."""
    return _join(index_base, str(version))


def cache_dir(index_base: str, digest: str) -> str:
    return _join(index_base, CACHE_DIR, digest)


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


class NothingToIndex(ValueError):
    """No image of the gallery was embedded: none was found (``failures`` empty), or every one
    failed (the first three are named)."""

    def __init__(self, failures):
        self.failures = list(failures)
        super().__init__("no images found" if not failures else "no gallery image could be embedded: "
                         + "; ".join(f"{f.path}: {f.reason}" for f in failures[:3]))


@dataclasses.dataclass
class IndexBuilt:
    """What ``index_from_parts`` wrote."""
    count: int
    dim: int
    backend: str
    dba: Optional[dict]
    failures: List


def index_from_parts(parts_dir: str, names: Sequence[str], destination: str, model: str,
                     model_version: Optional[int] = None, backend: str = "auto",
                     memory_budget: Optional[int] = None, dba: int = 0, dba_alpha: float = 3.0,
                     say=lambda text: None) -> IndexBuilt:
    """The index of the parts ``names`` written to ``destination`` (any filesystem).

    The parts are streamed into an exact-search folder first (``assemble``); that folder is the
    index when exact search is the backend and no DBA is asked for, so a gallery of any size
    is indexed without this process holding its vectors or its ids. Otherwise the folder is
    loaded (mapped shards, ids in memory) to build the faiss structure or the augmentation.
    ``say``: where the steps are told (the CLI's console).
    Raises:
      NothingToIndex: no image in the parts.
      ImportError: a faiss backend asked for without faiss.
    """
    from components.retrieval.expansion import augment_index
    from components.retrieval.gallery_embedding import assemble
    from components.retrieval.index import DEFAULT_MEMORY_BUDGET, GalleryIndex, choose_backend, faiss_or_none

    with tempfile.TemporaryDirectory(prefix="dolg-tfx-gallery-index-") as local:
        done = assemble(parts_dir, names, local, model=model, model_version=model_version)
        if not done.count:
            raise NothingToIndex(done.failures)
        if backend == "auto":
            backend = choose_backend(done.count, done.dim, memory_budget or DEFAULT_MEMORY_BUDGET,
                                     faiss_or_none() is not None)
        augmented = None
        if backend != "exact" or dba:
            index = GalleryIndex.load(local, backend=backend)
            if dba:
                say(f"  database-side augmentation: top {dba} neighbours, alpha {dba_alpha:g} ...")
                index = augment_index(index, dba, dba_alpha)
            augmented = index.dba
            say(f"  writing the {index.backend} index to {destination} ...")
            index.save(destination)
        else:
            say(f"  writing the exact index to {destination} ...")
            publish(local, destination)
    return IndexBuilt(done.count, done.dim, backend, augmented, done.failures)


def build_index(gallery: str, model_dir: str, model_version, index_base: str, work_dir: str,
                pipeline_args: Sequence[str] = (), batch_size: int = 32, max_bytes: Optional[int] = None,
                dba: int = 0, dba_alpha: float = 3.0, images_subdir: Optional[str] = None) -> BuildResult:
    """Embeds what the cache lacks, writes the index of ``model_version`` to
    ``<index_base>/<model_version>`` and leaves the cache holding exactly this gallery.

    Args:
      gallery: the gallery folder or CSV (``embed_gallery``), local or gs://.
      model_dir: the pushed SavedModel version folder that embeds the gallery.
      work_dir: scratch for the Beam pipeline (on Dataflow: storage its workers write).
      pipeline_args: the pipeline's Beam arguments.
      dba, dba_alpha: database-side augmentation of the index (``expansion.augment_index``;
        recorded in its meta.json); 0: the raw embeddings. The cache keeps the raw embeddings.
    Raises:
      FileNotFoundError: no gallery there.
      ValueError: no gallery image could be embedded.
    """
    from components.retrieval import gallery_parts
    from components.retrieval.embedder import DEFAULT_MAX_BYTES
    from components.retrieval.gallery_embedding import embed_gallery
    from components.retrieval.model_versions import model_digest

    digest = model_digest(model_dir)
    cache = cache_dir(index_base, digest)
    units = embed_gallery(gallery, model_dir, cache, work_dir, cache_dir=cache, images_subdir=images_subdir,
                          batch_size=batch_size, max_bytes=max_bytes or DEFAULT_MAX_BYTES,
                          pipeline_args=pipeline_args)
    names = [u["part"] for u in units]
    for stale in set(gallery_parts.part_names(cache)) - set(names):  # units no longer in the gallery
        gallery_parts.remove_part(cache, stale)
    destination = index_version_dir(index_base, model_version)
    try:
        built = index_from_parts(cache, names, destination, model_dir, int(model_version), dba=dba,
                                 dba_alpha=dba_alpha)
    except NothingToIndex as err:
        raise ValueError(f"gallery {gallery}, model {model_dir}: {err}") from None
    done = sum(u["embedded"] for u in units)
    return BuildResult(index_dir=destination, model_version=int(model_version), model_digest=digest,
                       images=built.count, embedded=done, reused=built.count - done, failures=list(built.failures))
