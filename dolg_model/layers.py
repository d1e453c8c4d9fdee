"""The layers DOLG adds to a backbone: GeM, multi-atrous, local self-attention, orthogonal fusion.

Every layer works for any batch size, height and width, serialises through get_config, and
does its numerically delicate part (powers, norms, divisions) in float32 so that a
mixed_float16 policy can never turn it into NaN or Inf.
"""
import tensorflow as tf

keras = tf.keras
_PACKAGE = "dolg"


def _l2_normalize_f32(x, axis=-1, epsilon=1e-12):
    """L2-normalise along `axis` in float32 (a float16 sum of squares overflows at 256)."""
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=axis, epsilon=epsilon)


@keras.utils.register_keras_serializable(package=_PACKAGE)
class GeMPooling(keras.layers.Layer):
    """Generalised-mean pooling over height and width with one trainable exponent p.

    y = (mean_hw max(x, eps)^p)^(1/p). p=1 is average pooling; p -> inf tends to max pooling.
    Inputs are clamped at eps before the power, so negative or zero activations never reach
    a fractional power. Runs in float32 whatever the global dtype policy.

    Args:
      p: initial exponent (the paper's 3.0).
      eps: the clamp.
      trainable_p: learn p with the rest of the network.
    """

    def __init__(self, p=3.0, eps=1e-6, trainable_p=True, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.p_init = float(p)
        self.eps = float(eps)
        self.trainable_p = bool(trainable_p)

    def build(self, input_shape):
        self.p = self.add_weight(
            name="p", shape=(), initializer=keras.initializers.Constant(self.p_init),
            trainable=self.trainable_p, dtype=tf.float32)
        super().build(input_shape)

    def call(self, inputs):
        x = tf.maximum(tf.cast(inputs, tf.float32), self.eps)
        return tf.pow(tf.reduce_mean(tf.pow(x, self.p), axis=[1, 2]), 1.0 / self.p)

    def get_config(self):
        return {**super().get_config(), "p": self.p_init, "eps": self.eps, "trainable_p": self.trainable_p}


@keras.utils.register_keras_serializable(package=_PACKAGE)
class DilatedConv3x3(keras.layers.Layer):
    """A 3x3 convolution with dilation `rate` and "same" zero padding, computed tap by tap.

    Exactly Conv2D(filters, 3, dilation_rate=rate, padding="same"), but each of the nine taps
    is a 1x1 matmul over the region where its shifted input is inside the map; the rest of the
    output gets zeros from that tap, as padding would give. Why: on the small stride-16 maps
    DOLG works on (14x14 at 224 px), rates 12 and 18 put most taps in the padding, and TF's
    space-to-batch dilated convolution pays for all of them. Here the cost follows the overlap
    (about a quarter of the work for rates 6/12/18 at 224 px), for any height and width.

    Args:
      filters: output channels.
      rate: the dilation rate.
      activation: applied to the result.
    """

    def __init__(self, filters, rate, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.rate = int(rate)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(3, 3, channels, self.filters),
                                      initializer="glorot_uniform", trainable=True)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros", trainable=True)
        super().build(input_shape)

    def call(self, inputs):
        kernel = tf.cast(self.kernel, self.compute_dtype)
        height, width = tf.shape(inputs)[1], tf.shape(inputs)[2]
        out = tf.einsum("bhwc,cf->bhwf", inputs, kernel[1, 1])
        for i in range(3):
            for j in range(3):
                if i == 1 and j == 1:
                    continue
                dy, dx = (i - 1) * self.rate, (j - 1) * self.rate
                # Output (y, x) reads input (y + dy, x + dx): the rows/columns where that exists.
                # (Ends clamped at 0: a negative end would count from the far side.)
                src = inputs[:, max(dy, 0):tf.maximum(height + min(dy, 0), 0),
                             max(dx, 0):tf.maximum(width + min(dx, 0), 0), :]
                part = tf.einsum("bhwc,cf->bhwf", src, kernel[i, j])
                pads = [[0, 0],
                        [tf.minimum(max(-dy, 0), height), tf.minimum(max(dy, 0), height)],
                        [tf.minimum(max(-dx, 0), width), tf.minimum(max(dx, 0), width)],
                        [0, 0]]
                out = out + tf.pad(part, pads)
        return self.activation(out + tf.cast(self.bias, self.compute_dtype))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "rate": self.rate,
                "activation": keras.activations.serialize(self.activation)}


@keras.utils.register_keras_serializable(package=_PACKAGE)
class MultiAtrous(keras.layers.Layer):
    """Multi-atrous block: parallel dilated 3x3 convolutions enlarging the local receptive field.

    Args:
      filters: output channels (the local branch width, 1024 in the paper).
      variant: "authors" -- dilated 3x3 branches + a 1x1 branch + an image-pool branch,
        concatenated, 1x1 conv to `filters`, ReLU; "kaggle" -- the dilated branches only.
      rates: dilation rates of the 3x3 branches.
      branch_filters: channels of each branch.
    """

    def __init__(self, filters=1024, variant="authors", rates=(6, 12, 18), branch_filters=512, **kwargs):
        super().__init__(**kwargs)
        if variant not in ("authors", "kaggle"):
            raise ValueError(f"MultiAtrous variant must be 'authors' or 'kaggle', not {variant!r}")
        self.filters = int(filters)
        self.variant = variant
        self.rates = tuple(int(r) for r in rates)
        self.branch_filters = int(branch_filters)
        self.dilated = [DilatedConv3x3(self.branch_filters, r, activation="relu", name=f"dilated_{r}")
                        for r in self.rates]
        if variant == "authors":
            self.pointwise = keras.layers.Conv2D(self.branch_filters, 1, activation="relu", name="pointwise")
            self.image_pool = keras.layers.Conv2D(self.branch_filters, 1, activation="relu", name="image_pool")
        self.fuse = keras.layers.Conv2D(self.filters, 1, activation="relu", name="fuse")

    def call(self, inputs):
        branches = [conv(inputs) for conv in self.dilated]
        if self.variant == "authors":
            branches.append(self.pointwise(inputs))
            pooled = self.image_pool(tf.reduce_mean(inputs, axis=[1, 2], keepdims=True))
            # Broadcast the image-level branch back to every location (dynamic H, W).
            branches.append(pooled * tf.ones_like(branches[0][..., :1]))
        return self.fuse(tf.concat(branches, axis=-1))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "variant": self.variant,
                "rates": list(self.rates), "branch_filters": self.branch_filters}


@keras.utils.register_keras_serializable(package=_PACKAGE)
class LocalSelfAttention(keras.layers.Layer):
    """DOLG's local self-attention: which locations of the local map matter.

    h = BN(conv1x1(x)); features = h / ||h||_2 per location (over channels);
    attention = softplus(conv1x1_to_1(relu(h))); output = attention * features.

    Returns [output, attention] (attention has one channel), so explanations can reach the map.

    Args:
      filters: channels of the output features.
    """

    def __init__(self, filters=1024, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.conv = keras.layers.Conv2D(self.filters, 1, name="conv")
        self.bn = keras.layers.BatchNormalization(name="bn")
        self.score = keras.layers.Conv2D(1, 1, name="score")

    def call(self, inputs, training=None):
        h = self.bn(self.conv(inputs), training=training)
        features = _l2_normalize_f32(h, axis=-1)
        attention = tf.nn.softplus(tf.cast(self.score(tf.nn.relu(h)), tf.float32))
        return [tf.cast(attention * features, self.compute_dtype), attention]

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape)
        return [shape[:-1].concatenate([self.filters]), shape[:-1].concatenate([1])]

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.utils.register_keras_serializable(package=_PACKAGE)
class OrthogonalFusion(keras.layers.Layer):
    """The component of each local feature orthogonal to the global descriptor.

    Per location: proj = (f_l . f_g) f_g / ||f_g||^2 ; f_orth = f_l - proj.
    (Divided by the SQUARED norm: dividing by ||f_g|| leaves a residual along f_g.)

    Inputs: [f_l of shape (B, H, W, C), f_g of shape (B, C)]. Output: f_orth, (B, H, W, C).

    Args:
      eps: added to ||f_g||^2 so an all-zero global vector gives f_orth = f_l, not NaN.
    """

    def __init__(self, eps=1e-6, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.eps = float(eps)

    def call(self, inputs):
        local, global_ = (tf.cast(t, tf.float32) for t in inputs)
        g = global_[:, tf.newaxis, tf.newaxis, :]                       # (B, 1, 1, C)
        dot = tf.reduce_sum(local * g, axis=-1, keepdims=True)          # (B, H, W, 1)
        norm_sq = tf.reduce_sum(tf.square(g), axis=-1, keepdims=True)  # (B, 1, 1, 1)
        return local - dot / (norm_sq + self.eps) * g

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


@keras.utils.register_keras_serializable(package=_PACKAGE)
class L2Normalize(keras.layers.Layer):
    """L2-normalise along the last axis, in float32.

    Args:
      epsilon: floor under the squared norm.
    """

    def __init__(self, epsilon=1e-12, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, inputs):
        return _l2_normalize_f32(inputs, axis=-1, epsilon=self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.utils.register_keras_serializable(package=_PACKAGE)
class BackbonePreprocess(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to what a backbone was trained on, inside the model.

    Keeping this in the graph means serving, evaluation and training all feed raw pixels.

    Args:
      mode: "caffe" (RGB->BGR, ImageNet mean subtracted: ResNet), "torch" (scaled to [0, 1],
        ImageNet mean/std: DenseNet), "tf" (scaled to [-1, 1]) or "none" (the backbone
        normalises itself: EfficientNet, MobileNetV3).
    """

    _MEAN = (0.485, 0.456, 0.406)
    _STD = (0.229, 0.224, 0.225)

    def __init__(self, mode="none", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch", "tf", "none"):
            raise ValueError(f"BackbonePreprocess mode must be caffe, torch, tf or none, not {mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            return x[..., ::-1] - tf.constant([103.939, 116.779, 123.68], self.compute_dtype)
        if self.mode == "torch":
            return (x / 255.0 - tf.constant(self._MEAN, self.compute_dtype)) / tf.constant(self._STD, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
