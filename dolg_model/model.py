"""build_dolg(): the DOLG network; the training wrapper with a margin head; multi-scale descriptors.

The served model maps RGB pixels in [0, 255], any batch, height and width, to L2-normalised
descriptors. The margin head exists only in the training model that wraps it.
"""
import tensorflow as tf

from dolg_model import backbones, layers
from dolg_model.config import DOLGConfig

keras = tf.keras
ATTENTION_LAYER = "local_attention"
EMBEDDING_OUTPUT = "embedding"


def build_dolg(config: DOLGConfig, custom_backbone=None) -> keras.Model:
    """The DOLG descriptor network.

    image -> backbone -> stride-16 map (local) and stride-32 map (global)
      local:  [multi-atrous] -> self-attention -> f_l (B, H, W, local_dim)
      global: GeM -> FC local_dim -> f_g (B, local_dim)
      fusion: f_orth = f_l minus its projection on f_g, average-pooled -> (B, local_dim)
      concat [f_g, pooled f_orth] -> FC embedding_dim -> L2-normalise

    Args:
      config: the DOLGConfig.
      custom_backbone: a Keras model, when config.backbone == "custom".
    """
    backbone, local_name, global_name, preprocess = backbones.build_backbone(
        config.backbone, weights=config.weights, custom_model=custom_backbone,
        local_tap=config.custom_local_layer, global_tap=config.custom_global_layer)
    taps = keras.Model(backbone.inputs,
                       [backbone.get_layer(local_name).output, backbone.get_layer(global_name).output],
                       name=f"{backbone.name}_taps")

    images = keras.Input(shape=(None, None, 3), name="image")
    x = layers.BackbonePreprocess(preprocess, name="preprocess")(images)
    local_map, global_map = taps(x)

    if config.multi_atrous != "none":
        local_map = layers.MultiAtrous(config.local_dim, config.multi_atrous, config.atrous_rates,
                                       config.atrous_branch_dim, name="multi_atrous")(local_map)
    f_l, _ = layers.LocalSelfAttention(config.local_dim, name=ATTENTION_LAYER)(local_map)

    f_g = layers.GeMPooling(config.gem_p, name="gem")(global_map)
    f_g = keras.layers.Dense(config.local_dim, name="global_fc")(f_g)

    f_orth = layers.OrthogonalFusion(name="orthogonal_fusion")([f_l, f_g])
    pooled = keras.layers.GlobalAveragePooling2D(name="orthogonal_pool")(f_orth)
    fused = keras.layers.Concatenate(name="fuse")([f_g, pooled])
    embedding = keras.layers.Dense(config.embedding_dim, name="embedding_fc")(fused)
    embedding = layers.L2Normalize(name=EMBEDDING_OUTPUT)(embedding)
    dolg = keras.Model(images, embedding, name="dolg")
    if config.bn_momentum is not None:
        for layer in dolg.submodules:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = config.bn_momentum
    return dolg


def build_training_model(dolg: keras.Model, head: keras.layers.Layer) -> keras.Model:
    """(image, label) -> margin logits, sharing every weight with `dolg`. Fit with
    heads.MarginCrossEntropy and the label as the target; save and serve `dolg` alone."""
    images = keras.Input(shape=(None, None, 3), name="image")
    labels = keras.Input(shape=(), dtype=tf.int32, name="label")
    logits = head([dolg(images), labels])
    return keras.Model({"image": images, "label": labels}, logits, name="dolg_training")


def attention_model(dolg: keras.Model) -> keras.Model:
    """image -> (B, h, w) local attention map at stride 16 (the map DOLG weights local features by)."""
    _, attention = dolg.get_layer(ATTENTION_LAYER).output
    return keras.Model(dolg.inputs, attention[..., 0], name="dolg_attention")


def multi_scale_embedding(dolg, images, scales=(0.7071, 1.0, 1.4142)):
    """The test-time descriptor: embed at each scale, L2 each, sum, L2 again.

    One function for every caller: the exported signatures pass the scales they were exported
    with, or (``serving_scales``) the scales of the request, as a tensor. Works eagerly and
    inside a tf.function with unknown batch, height, width and number of scales.

    Args:
      dolg: the descriptor model (or any callable image batch -> embeddings [B, D]).
      images: float (B, H, W, 3) RGB in [0, 255].
      scales: resize factors, a 1-D float tensor or sequence with at least one element; 1.0
        skips the resize.
    Returns:
      float32 [B, D], L2-normalised.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    scales = tf.convert_to_tensor(scales, tf.float32)
    size = tf.cast(tf.shape(images)[1:3], tf.float32)

    def embed_at(s):
        scaled = tf.cond(tf.equal(s, 1.0), lambda: images, lambda: tf.image.resize(
            images, tf.maximum(tf.cast(tf.round(size * s), tf.int32), 1), method="bilinear", antialias=True))
        return tf.math.l2_normalize(tf.cast(dolg(scaled, training=False), tf.float32), axis=-1)

    # The first scale outside the loop: its result fixes the loop variable's shape [B, D].
    _, total = tf.while_loop(lambda i, _: i < tf.size(scales),
                             lambda i, acc: (i + 1, acc + embed_at(scales[i])),
                             [tf.constant(1), embed_at(scales[0])])
    return tf.math.l2_normalize(total, axis=-1)
