"""The Transform module: preprocessing_fn.

Decodes and resizes images (the graph is applied on the fly by the Trainer and the serving
signatures; with materialize=False no decoded pixel is ever written) and builds the label
vocabulary plus per-class counts, which the Trainer turns into dynamic margins.
"""
import tensorflow as tf
import tensorflow_transform as tft

from pipeline import features as F
from components.images import image_ops
from pipeline.config import PipelineConfig


def preprocessing_fn(inputs, custom_config):
    """Args:
      inputs: raw features, dense [B, 1]: image (bytes), label (bytes), ...
      custom_config: transform_config(): the image size, resize mode and the byte and pixel
        caps only, so that changing a training parameter does not invalidate the cached
        Transform.
    """
    images = image_ops.decode_batch(inputs[F.IMAGE], custom_config["image_size"],
                                    custom_config["resize_mode"], custom_config["max_pixels"],
                                    max_bytes=custom_config["max_bytes"])
    labels = tf.reshape(inputs[F.LABEL], [-1])
    # Eval labels are unseen in training by design: they map to -1 and are never trained on.
    label_ids = tft.compute_and_apply_vocabulary(labels, vocab_filename=F.LABEL_VOCAB, default_value=-1)
    tft.vocabulary(labels, vocab_filename=F.LABEL_COUNTS, store_frequency=True)
    return {F.IMAGE: images, F.LABEL: label_ids}


def transform_config(config: PipelineConfig) -> dict:
    """What preprocessing_fn reads from the PipelineConfig."""
    return {"image_size": config.model.image_size, "resize_mode": config.resize_mode,
            "max_pixels": config.max_pixels, "max_bytes": config.max_bytes}


def class_counts(tf_transform_output) -> list:
    """Training images per class, in vocabulary-index order (for dynamic margins)."""
    labels = [v.decode() if isinstance(v, bytes) else v
              for v in tf_transform_output.vocabulary_by_name(F.LABEL_VOCAB)]
    counts = {}
    for line in tf_transform_output.vocabulary_by_name(F.LABEL_COUNTS):
        line = line.decode() if isinstance(line, bytes) else line
        count, label = line.split(" ", 1)
        counts[label] = int(count)
    return [counts[label] for label in labels]
