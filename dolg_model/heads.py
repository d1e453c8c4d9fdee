"""Margin heads for training (never part of the served model) and their loss.

All heads take [embedding, label] and return logits scaled by s, in float32 whatever the
dtype policy: cosines near +-1 and the margin arithmetic lose too much in float16.
"""
import math

import numpy as np
import tensorflow as tf

keras = tf.keras
_PACKAGE = "dolg"
_COS_EPS = 1e-7


def dynamic_margins(class_counts, margin_min=0.05, margin_max=0.50):
    """Per-class margins of the GLR2021 winner: rarer classes get larger margins.

    tmp_c = count_c^(-1/4); margin_c = (tmp_c - min tmp) / (max tmp - min tmp) * (max - min) + min.
    When every class has the same count there is no rarer class and all get `margin_min`.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or np.any(counts <= 0):
        raise ValueError(f"class_counts must be a non-empty vector of positive counts, got {class_counts!r}")
    tmp = counts ** -0.25
    span = tmp.max() - tmp.min()
    if span == 0:
        return np.full_like(tmp, margin_min, dtype=np.float32)
    return ((tmp - tmp.min()) / span * (margin_max - margin_min) + margin_min).astype(np.float32)


class _CosineHead(keras.layers.Layer):
    """Shared part: class centres W and the clipped cosine between embeddings and centres."""

    def __init__(self, num_classes, scale=30.0, subcenters=1, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.scale = float(scale)
        self.subcenters = int(subcenters)

    def build(self, input_shape):
        dim = int(input_shape[0][-1])
        self.centres = self.add_weight(
            name="centres", shape=(dim, self.num_classes * self.subcenters),
            initializer=keras.initializers.GlorotNormal(), trainable=True, dtype=tf.float32)
        super().build(input_shape)

    def cosine(self, embeddings):
        """(B, num_classes) cosines, the max over each class's sub-centres, clipped off +-1."""
        e = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)
        w = tf.math.l2_normalize(self.centres, axis=0)
        cos = tf.matmul(e, w)
        if self.subcenters > 1:
            cos = tf.reduce_max(tf.reshape(cos, [-1, self.num_classes, self.subcenters]), axis=-1)
        return tf.clip_by_value(cos, -1.0 + _COS_EPS, 1.0 - _COS_EPS)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "scale": self.scale,
                "subcenters": self.subcenters}


def _with_margin(cos, m, easy_margin):
    """cos(theta + m), kept monotone in theta where theta + m would pass pi."""
    sin = tf.sqrt(tf.maximum(1.0 - tf.square(cos), 0.0))
    phi = cos * tf.cos(m) - sin * tf.sin(m)
    if easy_margin:
        return tf.where(cos > 0.0, phi, cos)
    return tf.where(cos > tf.cos(math.pi - m), phi, cos - tf.sin(math.pi - m) * m)


@keras.utils.register_keras_serializable(package=_PACKAGE)
class ArcMarginHead(_CosineHead):
    """ArcFace, and sub-centre ArcFace when subcenters > 1, with optional per-class margins.

    logit_j = s * cos(theta_j) for j != y, and s * cos(theta_y + m_y) for the true class.

    Args:
      num_classes: number of training classes.
      scale: s.
      margin: m, used for every class unless class_margins is given.
      subcenters: k sub-centres per class; the cosine to a class is the max over them.
      easy_margin: apply the margin only where cos(theta_y) > 0.
      class_margins: optional per-class margins (see dynamic_margins).
    """

    def __init__(self, num_classes, scale=30.0, margin=0.5, subcenters=1, easy_margin=False,
                 class_margins=None, **kwargs):
        super().__init__(num_classes, scale, subcenters, **kwargs)
        self.margin = float(margin)
        self.easy_margin = bool(easy_margin)
        self.class_margins = None if class_margins is None else [float(v) for v in class_margins]
        if self.class_margins is not None and len(self.class_margins) != self.num_classes:
            raise ValueError(f"class_margins has {len(self.class_margins)} entries for {self.num_classes} classes")

    def call(self, inputs):
        embeddings, labels = inputs
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        cos = self.cosine(embeddings)
        if self.class_margins is None:
            m = tf.fill(tf.shape(labels), self.margin)
        else:
            m = tf.gather(tf.constant(self.class_margins, tf.float32), labels)
        target = tf.gather(cos, labels, axis=1, batch_dims=1)
        phi = _with_margin(target, m, self.easy_margin)
        onehot = tf.one_hot(labels, self.num_classes, dtype=tf.float32)
        return self.scale * (cos + onehot * (phi - target)[:, tf.newaxis])

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "easy_margin": self.easy_margin,
                "class_margins": self.class_margins}


@keras.utils.register_keras_serializable(package=_PACKAGE)
class CurricularFaceHead(_CosineHead):
    """CurricularFace (the DOLG authors' head): hard negatives are re-weighted as training goes.

    True class: s * cos(theta_y + m). A negative j with cos_j > cos(theta_y + m) is "hard" and
    becomes s * cos_j * (t + cos_j), where t is a running mean (momentum 0.01) of the true-class
    cosines: early in training (t small) hard negatives are damped, later they are emphasised.

    Args:
      num_classes: number of training classes.
      scale: s.
      margin: m.
      momentum: update rate of t.
    """

    def __init__(self, num_classes, scale=30.0, margin=0.5, momentum=0.01, **kwargs):
        super().__init__(num_classes, scale, 1, **kwargs)
        self.margin = float(margin)
        self.momentum = float(momentum)

    def build(self, input_shape):
        # Per replica, like BatchNormalization's moving statistics.
        self.t = self.add_weight(
            name="t", shape=(), initializer="zeros", trainable=False, dtype=tf.float32,
            synchronization=tf.VariableSynchronization.ON_READ, aggregation=tf.VariableAggregation.MEAN)
        super().build(input_shape)

    def call(self, inputs, training=None):
        embeddings, labels = inputs
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        cos = self.cosine(embeddings)
        target = tf.gather(cos, labels, axis=1, batch_dims=1)
        target_m = _with_margin(target, tf.constant(self.margin), easy_margin=False)
        if training:
            self.t.assign(self.momentum * tf.reduce_mean(target) + (1.0 - self.momentum) * self.t)
        hard = cos > target_m[:, tf.newaxis]
        logits = tf.where(hard, cos * (self.t + cos), cos)
        onehot = tf.one_hot(labels, self.num_classes, dtype=tf.float32)
        logits = logits * (1.0 - onehot) + onehot * target_m[:, tf.newaxis]
        return self.scale * logits

    def get_config(self):
        config = {**super().get_config(), "margin": self.margin, "momentum": self.momentum}
        del config["subcenters"]  # always 1 here, and not an argument: from_config would fail on it
        return config


@keras.utils.register_keras_serializable(package=_PACKAGE)
class MarginCrossEntropy(keras.losses.Loss):
    """Cross-entropy on margin logits from integer labels, with optional label smoothing.

    Args:
      num_classes: size of the logits' last axis.
      label_smoothing: mass spread uniformly over all classes.
    """

    def __init__(self, num_classes, label_smoothing=0.0, name="margin_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        onehot = tf.one_hot(tf.reshape(tf.cast(y_true, tf.int32), [-1]), self.num_classes)
        return keras.losses.categorical_crossentropy(
            onehot, tf.cast(y_pred, tf.float32), from_logits=True, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "label_smoothing": self.label_smoothing}


def build_head(config, num_classes, class_counts=None):
    """The margin head a DOLGConfig asks for. class_counts feed dynamic margins when enabled."""
    if config.head == "curricularface":
        return CurricularFaceHead(num_classes, scale=config.scale, margin=config.margin, name="margin_head")
    margins = None
    if config.dynamic_margins:
        if class_counts is None:
            raise ValueError("dynamic_margins needs the per-class counts of the training data")
        margins = dynamic_margins(class_counts, config.margin_min, config.margin_max)
    return ArcMarginHead(num_classes, scale=config.scale, margin=config.margin,
                         subcenters=config.subcenters, easy_margin=config.easy_margin,
                         class_margins=margins, name="margin_head")
