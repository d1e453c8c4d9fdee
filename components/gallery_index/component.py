"""GalleryIndexer: after the Pusher, the gallery index of the model it pushed, pushed beside it.

It acts only when the model was blessed AND pushed (the Pusher's ``pushed`` property): then it
embeds the gallery with the pushed SavedModel (a Beam pipeline with the pipeline's Beam
arguments; files the cache already holds for this model are not embedded again), writes the
index to ``<index_dir>/<pushed_version>`` (``build``'s layout) and records, on its output
artifact, the model version and digest it indexed, the index folder and the counts. Otherwise
it records ``indexed = 0`` and writes nothing, exactly as the Pusher records ``pushed = 0``.
Its inputs (Model, ModelBlessing, PushedModel) are its lineage in ML Metadata: the index
artifact points back to the model it belongs to.
"""
import json

from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.gallery_index.build import SUMMARY_FILE
COUNTS = ("images", "embedded", "reused")


class GalleryIndexArtifact(types.Artifact):
    """What GalleryIndexer did: ``summary.json`` in its uri; ``indexed`` (0/1), ``index_dir``,
    ``model_version``, ``model_digest``, ``model_uri`` and the counts as custom properties.
    ``<namespace>.<Title>``: the form KubeflowV2DagRunner requires of custom types."""
    TYPE_NAME = "dolg_tfx.GalleryIndex"


def _write_summary(artifact, summary: dict) -> None:
    from tfx.dsl.io import fileio

    fileio.makedirs(artifact.uri)
    with fileio.open(f"{artifact.uri.rstrip('/')}/{SUMMARY_FILE}", "w") as f:
        f.write(json.dumps(summary, indent=1))


@component
def GalleryIndexer(
        model: InputArtifact[standard_artifacts.Model],
        model_blessing: InputArtifact[standard_artifacts.ModelBlessing],
        pushed_model: InputArtifact[standard_artifacts.PushedModel],
        gallery_index: OutputArtifact[GalleryIndexArtifact],
        gallery: Parameter[str],
        index_dir: Parameter[str],
        beam_args: Parameter[str] = "[]",
        gallery_fingerprint: Parameter[str] = "",
        dba: Parameter[int] = 0,
        dba_alpha: Parameter[float] = 3.0):
    """Indexes ``gallery`` with the pushed model into ``index_dir/<version>``.

    ``beam_args``: the pipeline's Beam arguments as a JSON list. ``gallery_fingerprint``: not
    read here; the local runner sets it to a digest of the gallery's files so that a changed
    gallery changes this component's cache key (TFX would otherwise reuse the last result).
    ``dba``, ``dba_alpha``: database-side augmentation of the index (0: none); see ``build``.
    """
    import tensorflow as tf

    from components.gallery_index.build import build_index

    del gallery_fingerprint  # only part of the cache key
    blessed = model_blessing.get_int_custom_property("blessed") == 1
    pushed = pushed_model.get_int_custom_property("pushed") == 1
    if not (blessed and pushed):
        gallery_index.set_int_custom_property("indexed", 0)
        _write_summary(gallery_index, {"indexed": False, "reason": "the model was not blessed"
                                       if not blessed else "the Pusher pushed nothing"})
        return
    version = pushed_model.get_string_custom_property("pushed_version")
    model_dir = pushed_model.get_string_custom_property("pushed_destination")
    work = f"{gallery_index.uri.rstrip('/')}/beam_work"
    result = build_index(gallery, model_dir, version, index_dir, work, json.loads(beam_args),
                         dba=dba, dba_alpha=dba_alpha)
    if tf.io.gfile.exists(work):
        tf.io.gfile.rmtree(work)  # Beam's shards were scratch; the index is pushed
    summary = {"indexed": True, "gallery": gallery, "model_uri": model.uri, **result.as_dict()}
    _write_summary(gallery_index, summary)
    gallery_index.set_int_custom_property("indexed", 1)
    for key in ("index_dir", "model_digest"):
        gallery_index.set_string_custom_property(key, summary[key])
    gallery_index.set_string_custom_property("model_version", str(result.model_version))
    gallery_index.set_string_custom_property("model_uri", model.uri)
    for key in COUNTS:
        gallery_index.set_int_custom_property(key, summary[key])
    gallery_index.set_int_custom_property("failed", len(result.failures))
