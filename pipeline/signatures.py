"""The exported SavedModel's signatures.

- serving_default: encoded image bytes [None] -> {"embedding": [None, D]} (TF Serving, clients)
- serving_examples: serialized tf.Examples [None] -> {"embedding"} (the Evaluator, batch jobs)
- serving_scales: encoded image bytes [None] + scales [None] -> {"embedding"}: the multi-scale
  descriptor at scales chosen per request (`dolg-tfx evaluate --scales`)
- transform_features: serialized tf.Examples -> the Transform graph's outputs
- attention: one encoded image -> {"attention": [H, W]}, the local attention map laid over
  the original image's pixels (explanations: `dolg-tfx explain`)

Every image path goes through the Transform graph, so serving decodes exactly as training did;
bad bytes raise InvalidArgumentError from its decoder (see pipeline/image_ops.py).
"""
import tensorflow as tf

from dolg_model.model import attention_model, multi_scale_embedding
from pipeline import features as F
from pipeline import image_ops


def _image_only_spec():
    return {F.IMAGE: tf.io.FixedLenFeature([1], tf.string)}


def _content_box(height, width, size):
    """Where tf.image.resize_with_pad puts an height x width image in a size x size frame:
    (top, left, content height, content width), the same arithmetic as TF's own."""
    h, w, s = (tf.cast(v, tf.float32) for v in (height, width, size))
    ratio = tf.maximum(w / s, h / s)
    ch, cw = h / ratio, w / ratio
    top = tf.cast(tf.maximum(0.0, tf.floor((s - ch) / 2)), tf.int32)
    left = tf.cast(tf.maximum(0.0, tf.floor((s - cw) / 2)), tf.int32)
    return top, left, tf.cast(tf.floor(ch), tf.int32), tf.cast(tf.floor(cw), tf.int32)


def build_signatures(dolg, tft_layer, raw_feature_spec, scales, resize_mode="pad"):
    """Concrete functions for model.save(signatures=...).

    Args:
      dolg: the trained descriptor model.
      tft_layer: tf_transform_output.transform_features_layer(), attached to the model by the
        caller so its assets are saved with it.
      raw_feature_spec: the raw data's feature spec (for transform_features).
      scales: the multi-scale descriptor's scales.
      resize_mode: the Transform's resize mode, to lay the attention map back on the image.
    """
    attention = attention_model(dolg)

    def decode(encoded):
        out = tft_layer({F.IMAGE: tf.reshape(encoded, [-1, 1])})
        return tf.ensure_shape(out[F.IMAGE], [None, None, None, 3])

    def embed(encoded):
        return {F.EMBEDDING: multi_scale_embedding(dolg, decode(encoded), scales)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.IMAGES_INPUT)])
    def serve_images(images):
        return embed(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.EXAMPLES_INPUT)])
    def serve_examples(examples):
        parsed = tf.io.parse_example(examples, _image_only_spec())
        return embed(parsed[F.IMAGE])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.IMAGES_INPUT),
                                  tf.TensorSpec([None], tf.float32, name="scales")])
    def serve_scales(images, scales):
        frames = decode(images)
        size = tf.cast(tf.shape(frames)[1:3], tf.float32)
        dim = dolg.output_shape[-1]

        def add_scale(i, total):
            # The same arithmetic as multi_scale_embedding, with the scales as a tensor.
            s = scales[i]
            scaled = tf.cond(tf.equal(s, 1.0), lambda: frames, lambda: tf.image.resize(
                frames, tf.maximum(tf.cast(tf.round(size * s), tf.int32), 1), method="bilinear", antialias=True))
            e = tf.math.l2_normalize(tf.cast(dolg(scaled, training=False), tf.float32), axis=-1)
            return i + 1, total + e

        _, total = tf.while_loop(lambda i, _: i < tf.size(scales), add_scale,
                                 [tf.constant(0), tf.zeros([tf.shape(frames)[0], dim], tf.float32)])
        return {F.EMBEDDING: tf.math.l2_normalize(total, axis=-1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.EXAMPLES_INPUT)])
    def transform_features(examples):
        return tft_layer(tf.io.parse_example(examples, raw_feature_spec))

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="image")])
    def serve_attention(image):
        frame = decode(tf.reshape(image, [1]))
        size = tf.shape(frame)[1]
        att = attention(frame, training=False)[0][..., tf.newaxis]       # (size/16, size/16, 1)
        height, width = (tf.cast(v, tf.int32) for v in image_ops.header_size(image))
        att = tf.image.resize(att, [size, size], method="bilinear")
        if resize_mode == "pad":
            top, left, ch, cw = _content_box(height, width, size)
            att = att[top:top + ch, left:left + cw]
        return {"attention": tf.image.resize(att, [height, width], method="bilinear")[..., 0]}

    return {
        "serving_default": serve_images.get_concrete_function(),
        "serving_examples": serve_examples.get_concrete_function(),
        "serving_scales": serve_scales.get_concrete_function(),
        "transform_features": transform_features.get_concrete_function(),
        "attention": serve_attention.get_concrete_function(),
    }


def export(dolg, tf_transform_output, scales, export_dir, resize_mode="pad"):
    """Saves `dolg` with its signatures to `export_dir` (a Keras SavedModel, so the network
    also reloads with tf.keras.models.load_model for fine-tuning)."""
    dolg.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    raw_spec.pop(F.LABEL, None)  # a serving request carries no label
    signatures = build_signatures(dolg, dolg.tft_layer, raw_spec, scales, resize_mode)
    dolg.save(export_dir, save_format="tf", signatures=signatures)
