"""The exported SavedModel's signatures, as ``components.retrieval.serving_contract`` names
them: serving_default (encoded image bytes -> embedding, for TF Serving and the clients),
serving_examples (serialized tf.Examples, for the Evaluator), serving_scales (bytes and scales
of the request: `dolg-tfx evaluate --scales`), transform_features (the Transform graph) and
attention (one image -> its local attention map over the image's pixels: `dolg-tfx explain`).

Every image path goes through the Transform graph, so serving decodes exactly as training did;
bad bytes raise InvalidArgumentError from its decoder, refused ones before any pixel is
decoded, and EXIF-rotated photos are turned upright there (see components/images/image_ops.py).

``export`` also writes TF Serving's warmup requests into ``assets.extra/`` (``pipeline/warmup.py``).
"""
import numpy as np
import tensorflow as tf

from components.retrieval import serving_contract as contract
from dolg_model.model import attention_model, multi_scale_embedding
from pipeline import features as F
from pipeline import warmup
from components.images import image_ops


def _image_only_spec():
    return {F.IMAGE: tf.io.FixedLenFeature([1], tf.string)}


def _graph_function(*input_specs):
    """tf.function with a fixed signature and no AutoGraph: the exported code is plain TensorFlow
    (tf.cond, tf.while_loop), and AutoGraph re-transpiled it, the decoder's header probe
    included, in every exporting process."""
    return tf.function(input_signature=list(input_specs), autograph=False)


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

    # One traced function behind the three embedding signatures: tracing the decoder and the
    # network (twice each: multi_scale_embedding's first scale and its loop) is most of an
    # export's cost, and a SavedModel's every function is loaded and instantiated again by each
    # process that serves it (TF Serving, the Evaluator, `search`).
    @_graph_function(tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.float32))
    def embed_images(encoded, at_scales):
        return multi_scale_embedding(dolg, decode(encoded), at_scales)

    def embed(encoded, at_scales):
        return {contract.EMBEDDING_OUTPUT: embed_images(tf.reshape(encoded, [-1]), at_scales)}

    exported_scales = tf.constant(scales, tf.float32)

    @_graph_function(tf.TensorSpec([None], tf.string, name=contract.IMAGES_INPUT))
    def serve_images(images):
        return embed(images, exported_scales)

    @_graph_function(tf.TensorSpec([None], tf.string, name=contract.EXAMPLES_INPUT))
    def serve_examples(examples):
        parsed = tf.io.parse_example(examples, _image_only_spec())
        return embed(parsed[F.IMAGE], exported_scales)

    @_graph_function(tf.TensorSpec([None], tf.string, name=contract.IMAGES_INPUT),
                     tf.TensorSpec([None], tf.float32, name=contract.SCALES_INPUT))
    def serve_scales(images, scales):
        return embed(images, scales)

    @_graph_function(tf.TensorSpec([None], tf.string, name=contract.EXAMPLES_INPUT))
    def transform_features(examples):
        return tft_layer(tf.io.parse_example(examples, raw_feature_spec))

    @_graph_function(tf.TensorSpec([], tf.string, name=contract.ATTENTION_INPUT))
    def serve_attention(image):
        frame = decode(tf.reshape(image, [1]))
        size = tf.shape(frame)[1]
        att = attention(frame, training=False)[0][..., tf.newaxis]       # (size/16, size/16, 1)
        # The decoded image's size: upright (EXIF orientation applied), as the decoder gives it.
        width, height = (tf.cast(v, tf.int32) for v in image_ops.upright_size(image))
        att = tf.image.resize(att, [size, size], method="bilinear")
        if resize_mode == "pad":
            ch, cw, top, left = image_ops.pad_box(height, width, size)
            att = att[top:top + ch, left:left + cw]
        return {contract.ATTENTION_OUTPUT: tf.image.resize(att, [height, width], method="bilinear")[..., 0]}

    return {
        contract.IMAGES_SIGNATURE: serve_images.get_concrete_function(),
        contract.EXAMPLES_SIGNATURE: serve_examples.get_concrete_function(),
        contract.SCALES_SIGNATURE: serve_scales.get_concrete_function(),
        contract.TRANSFORM_SIGNATURE: transform_features.get_concrete_function(),
        contract.ATTENTION_SIGNATURE: serve_attention.get_concrete_function(),
    }


def _check_warmup(serve_images, logs):
    """Runs each warmup request through ``serving_default`` as built: TF Serving refuses to load
    a version whose warmup request fails, so a failing one must stop the export instead."""
    for i, log in enumerate(logs):
        count = len(log.predict_log.request.inputs[contract.IMAGES_INPUT].string_val)
        try:
            embedding = warmup.replay(serve_images, log)[contract.EMBEDDING_OUTPUT]
        except tf.errors.OpError as err:
            raise RuntimeError(f"warmup request {i} fails in {contract.IMAGES_SIGNATURE}, so TF Serving "
                               f"would not load the model: {err.message}") from err
        if embedding.shape[0] != count or not np.isfinite(embedding).all():
            raise RuntimeError(f"warmup request {i}: {count} images gave an embedding of shape "
                               f"{embedding.shape}, finite: {bool(np.isfinite(embedding).all())}")


def export(dolg, tf_transform_output, scales, export_dir, resize_mode="pad"):
    """Saves `dolg` with its signatures to `export_dir` (a Keras SavedModel, so the network
    also reloads with tf.keras.models.load_model for fine-tuning, its classes imported), with TF Serving's warmup
    requests in `assets.extra/` (``pipeline/warmup.py``), checked through `serving_default`
    first and written before the save, so `saved_model.pb` stays the last file written."""
    dolg.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    raw_spec.pop(F.LABEL, None)  # a serving request carries no label
    signatures = build_signatures(dolg, dolg.tft_layer, raw_spec, scales, resize_mode)
    logs = warmup.warmup_logs()
    _check_warmup(signatures[contract.IMAGES_SIGNATURE], logs)
    warmup.write_warmup_file(export_dir, logs)
    # save_traces=False: Keras would otherwise trace and save every layer's call function so
    # the model could be revived without its classes. The classes are registered
    # (dolg_model.layers and heads; importing dolg_model.model loads them), so load_model
    # rebuilds the network from its config instead, with the same weights; the signatures,
    # all that TF Serving, TFMA and the project's embedder load, are saved either way. Tracing
    # every layer cost 8 s of the tiny preset's 10 s save (and 3 s of a 5 s load_model).
    dolg.save(export_dir, save_format="tf", signatures=signatures, save_traces=False)
