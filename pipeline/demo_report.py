"""The demo's closing report: trained vs untrained held-out mAP, and one query through the
pushed model and the gallery index the pipeline pushed beside it, with its top-5 neighbours."""
import numpy as np
import tensorflow as tf

from components.retrieval.protocols import leave_one_out_retrieval
from pipeline import features as F


def read_split(examples_uri, split="eval"):
    """(image_ids, encoded images, labels) of one split of an Examples artifact at any URI
    TensorFlow opens (a local path, gs://, ram://): listed with ``tf.io.gfile``, not ``glob``,
    which sees local files only and would find nothing on an object store."""
    files = sorted(tf.io.gfile.glob(f"{str(examples_uri).rstrip('/')}/Split-{split}/*"))
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in (F.IMAGE, F.IMAGE_ID, F.LABEL)}
    ids, images, labels = [], [], []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.io.parse_single_example(record, spec)
        ids.append(ex[F.IMAGE_ID].numpy().decode())
        images.append(ex[F.IMAGE].numpy())
        labels.append(ex[F.LABEL].numpy().decode())
    return ids, images, labels


def report_model(summary: dict):
    """The model a run's report shows (the pushed one, else the Trainer's) loaded once as an
    Embedder, or None when the run has none. The demo's closing text shares it: a load and its
    first call cost seconds each."""
    from components.retrieval.embedder import Embedder

    model = summary.get("pushed_to") or summary.get("model")
    return Embedder(model) if model else None


def embed_saved_model(model_dir, images, batch_size=32, embedder=None):
    """The model's embeddings of encoded images, through its serving signature (``embedder``:
    that model already loaded)."""
    from components.retrieval.embedder import Embedder

    embedder = embedder or Embedder(model_dir)
    return np.concatenate([embedder.embed_bytes(images[i:i + batch_size])
                           for i in range(0, len(images), batch_size)])


def embed_untrained(config, images, batch_size=32, seed=0):
    """The same architecture with the weights it starts from (seeded), decoded like serving."""
    from dolg_model.model import build_dolg, multi_scale_embedding
    from components.images import image_ops

    tf.keras.utils.set_random_seed(seed)
    dolg = build_dolg(config.model)
    out = []
    for i in range(0, len(images), batch_size):
        x = image_ops.decode_batch(tf.constant(images[i:i + batch_size]), config.model.image_size,
                                   config.resize_mode, config.max_pixels, max_bytes=config.max_bytes)
        out.append(multi_scale_embedding(dolg, x, config.model.scales).numpy())
    return np.concatenate(out)


def query_pushed_index(summary, image: bytes, k: int, embedder=None):
    """(index folder, index, scores, rows) of one encoded image searched in the run's pushed
    gallery index with the pushed model (``embedder``: it, loaded), after the version check
    ``dolg-tfx search`` makes."""
    from components.retrieval.index import GalleryIndex
    from components.retrieval.model_versions import check_index_matches_model

    index_dir = summary["gallery_index"]["index_dir"]
    index = GalleryIndex.load(index_dir)
    check_index_matches_model(index.model_version, index_dir, summary["pushed_to"])
    scores, rows = index.search(embed_saved_model(summary["pushed_to"], [image], embedder=embedder), k)
    return index_dir, index, scores[0], rows[0]


def report(config, summary, embedder=None) -> str:
    """The closing text. ``embedder``: ``report_model(summary)``, the trained model
    (pushed, when it was) loaded once for the report and this text."""
    embedder = embedder or report_model(summary)
    ids, images, labels = read_split(summary["examples"])
    trained = embed_saved_model(summary["model"], images, embedder=embedder)  # the pushed copy, if pushed
    untrained = embed_untrained(config, images)
    map_trained = leave_one_out_retrieval(trained, labels).mAP
    map_untrained = leave_one_out_retrieval(untrained, labels).mAP
    lines = [f"Held-out mAP over {len(ids)} images of {len(set(labels))} landmarks never seen in training:",
             f"  trained   {map_trained:.4f}   (Evaluator: {summary.get('metrics', {}).get('retrieval_mAP', float('nan')):.4f})",
             f"  untrained {map_untrained:.4f}   (same network, initial weights)",
             f"Pushed model: {summary['pushed_to'] if summary.get('pushed_to') else 'not pushed (not blessed)'}"]
    q = 0
    if (summary.get("gallery_index") or {}).get("indexed"):
        # The gallery holds the query itself: ask for one more and leave it out.
        index_dir, index, scores, rows = query_pushed_index(summary, images[q], 6, embedder)
        found = [(index.ids[r], index.labels[r] if index.labels else "", s)
                 for s, r in zip(scores, rows) if index.ids[r] != ids[q]][:5]
        lines.append(f"Query {ids[q]} (landmark {labels[q]}), embedded by the pushed model (version "
                     f"{index.model_version}) and searched in its gallery index ({len(index)} images, "
                     f"{index_dir}); top 5:")
    else:  # nothing pushed, so no index: the held-out images, embedded by the trained model
        scores = trained @ trained[q]
        scores[q] = -np.inf
        top = np.argsort(-scores, kind="stable")[:5]
        found = [(ids[j], labels[j], scores[j]) for j in top]
        lines.append(f"Query {ids[q]} (landmark {labels[q]}) among the held-out images, embedded by the "
                     "trained SavedModel (no gallery index was pushed); top 5:")
    for rank, (image_id, label, score) in enumerate(found, 1):
        mark = "same landmark" if label == labels[q] else "other"
        lines.append(f"  {rank}. {image_id:<40} score {score:.4f}  {mark}")
    return "\n".join(lines)
