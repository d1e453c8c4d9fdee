"""DOLG's layers: the maths they promise, for any shape, in float32 and mixed precision."""
import numpy as np
import pytest
import tensorflow as tf

from dolg_model import layers


@pytest.fixture
def mixed_precision():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    tf.keras.mixed_precision.set_global_policy("float32")


def test_orthogonal_fusion_is_orthogonal_at_every_location():
    rng = np.random.default_rng(0)
    f_l = rng.normal(size=(3, 5, 7, 64)).astype(np.float32)
    f_g = rng.normal(size=(3, 64)).astype(np.float32) * 4.0
    f_orth = layers.OrthogonalFusion()([f_l, f_g]).numpy()
    assert f_orth.shape == f_l.shape

    g = f_g[:, None, None, :]
    cos = (f_orth * g).sum(-1) / (np.linalg.norm(f_orth, axis=-1) * np.linalg.norm(g, axis=-1))
    assert np.abs(cos).max() < 1e-5
    # What was removed is exactly the projection of f_l on f_g (squared norm in the divisor).
    proj = (f_l * g).sum(-1, keepdims=True) / (g * g).sum(-1, keepdims=True) * g
    np.testing.assert_allclose(f_orth + proj, f_l, atol=1e-5)


def test_orthogonal_fusion_is_not_the_kaggle_divisor():
    """The Kaggle code divides by ||f_g|| instead of ||f_g||^2. Checked on the layer's output:
    the projection removed must not depend on the length of f_g (only on its direction), and
    the output must be far from what the first-power divisor gives."""
    rng = np.random.default_rng(1)
    f_l = rng.normal(size=(2, 4, 3, 32)).astype(np.float32)
    f_g = rng.normal(size=(2, 32)).astype(np.float32)
    fusion = layers.OrthogonalFusion()
    out = fusion([f_l, f_g]).numpy()
    for length in (0.25, 4.0, 30.0):
        np.testing.assert_allclose(fusion([f_l, f_g * length]).numpy(), out, rtol=1e-4, atol=1e-4)
    g = 4.0 * f_g[:, None, None, :]
    kaggle = f_l - (f_l * g).sum(-1, keepdims=True) / np.linalg.norm(g, axis=-1, keepdims=True) * g
    assert np.abs(fusion([f_l, 4.0 * f_g]).numpy() - kaggle).max() > 0.1


def test_orthogonal_fusion_zero_global_vector_is_finite():
    f_l = np.ones((1, 2, 2, 8), np.float32)
    out = layers.OrthogonalFusion()([f_l, np.zeros((1, 8), np.float32)]).numpy()
    np.testing.assert_allclose(out, f_l)


def test_gem_p1_is_average_and_large_p_tends_to_max():
    x = np.random.default_rng(1).uniform(0.1, 2.0, size=(2, 6, 5, 4)).astype(np.float32)
    avg = layers.GeMPooling(p=1.0)(x).numpy()
    np.testing.assert_allclose(avg, x.mean(axis=(1, 2)), rtol=1e-5)
    big = layers.GeMPooling(p=60.0)(x).numpy()
    mx = x.max(axis=(1, 2))
    assert np.all(big <= mx + 1e-5) and np.all(big > 0.9 * mx)
    mid = layers.GeMPooling(p=3.0)(x).numpy()
    assert np.all(mid > avg) and np.all(mid < mx)


def test_gem_p_gets_a_gradient_and_moves_after_one_step():
    gem = layers.GeMPooling(p=3.0)
    x = tf.random.uniform((4, 3, 3, 8), -1.0, 2.0, seed=3)
    opt = tf.keras.optimizers.SGD(0.5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(gem(x))
    [grad] = tape.gradient(loss, [gem.p])
    assert grad is not None and np.isfinite(grad.numpy()) and abs(grad.numpy()) > 0
    opt.apply_gradients([(grad, gem.p)])
    assert abs(gem.p.numpy() - 3.0) > 1e-4


def test_gem_negative_and_zero_inputs_stay_finite(mixed_precision):
    gem = layers.GeMPooling(p=3.0)
    x = tf.constant(np.stack([np.full((4, 4, 3), -5.0), np.zeros((4, 4, 3))]), tf.float16)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = gem(x)
    assert y.dtype == tf.float32
    assert np.all(np.isfinite(y.numpy()))
    assert np.all(np.isfinite(tape.gradient(y, gem.p).numpy()))


@pytest.mark.parametrize("variant", ["authors", "kaggle"])
def test_multi_atrous_keeps_spatial_detail_for_any_size(variant):
    block = layers.MultiAtrous(filters=16, variant=variant, rates=(1, 2, 3), branch_filters=8)
    for h, w in [(5, 7), (9, 4)]:
        x = tf.random.uniform((2, h, w, 6), seed=h)
        y = block(x).numpy()
        assert y.shape == (2, h, w, 16)
    # Unlike the unofficial port (every branch through one global pool), features vary in space.
    assert y.std(axis=(1, 2)).max() > 1e-4
    clone = layers.MultiAtrous.from_config(block.get_config())
    assert clone.variant == variant and clone.rates == (1, 2, 3)


def test_multi_atrous_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        layers.MultiAtrous(variant="wide")


def test_local_attention_outputs_normalised_features_times_attention():
    att = layers.LocalSelfAttention(filters=12)
    x = tf.random.normal((2, 5, 6, 7), seed=4)
    out, attention = att(x, training=False)
    assert out.shape == (2, 5, 6, 12) and attention.shape == (2, 5, 6, 1)
    a = attention.numpy()
    assert np.all(a > 0)  # softplus
    # Each location's output norm is its attention score: features were unit-norm per location.
    np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=-1), a[..., 0], rtol=1e-4)
    # The normalisation is per location, not across the batch (a bug of the unofficial port).
    scaled_out, _ = att(tf.concat([x[:1] * 100.0, x[1:]], 0), training=False)
    np.testing.assert_allclose(scaled_out.numpy()[1], out.numpy()[1], rtol=1e-4, atol=1e-5)


def test_layers_in_mixed_precision_are_finite(mixed_precision):
    att = layers.LocalSelfAttention(filters=8)
    out, attention = att(tf.random.normal((1, 4, 4, 8)) * 300.0)
    assert np.all(np.isfinite(out.numpy())) and np.all(np.isfinite(attention.numpy()))
    norm = layers.L2Normalize()(tf.cast(tf.fill((1, 1024), 300.0), tf.float16))
    np.testing.assert_allclose(np.linalg.norm(norm.numpy(), axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf", "none"])
def test_backbone_preprocess_modes(mode):
    px = np.full((1, 1, 1, 3), 255.0, np.float32)
    px[..., 0] = 0.0
    y = layers.BackbonePreprocess(mode)(px).numpy()[0, 0, 0]
    expected = {
        "caffe": [255 - 103.939, 255 - 116.779, 0 - 123.68],
        "torch": [(0 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225],
        "tf": [-1.0, 1.0, 1.0],
        "none": [0.0, 255.0, 255.0],
    }[mode]
    np.testing.assert_allclose(y, expected, rtol=1e-5)


@pytest.mark.parametrize("rate, size", [(1, (5, 7)), (2, (6, 6)), (6, (14, 14)), (12, (14, 9)), (18, (14, 14)),
                                        (4, (3, 2))])
def test_dilated_conv3x3_equals_keras_dilated_conv(rate, size):
    x = tf.random.normal((2, *size, 5), seed=rate)
    ours = layers.DilatedConv3x3(4, rate, activation="relu")
    ref = tf.keras.layers.Conv2D(4, 3, padding="same", dilation_rate=rate, activation="relu")
    ours.build(x.shape)
    ref.build(x.shape)
    kernel = np.random.default_rng(rate).normal(size=(3, 3, 5, 4)).astype(np.float32)
    bias = np.random.default_rng(rate + 1).normal(size=(4,)).astype(np.float32)
    ours.set_weights([kernel, bias])
    ref.set_weights([kernel, bias])
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), atol=1e-4)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        a, b = tf.reduce_sum(ours(x) ** 2), tf.reduce_sum(ref(x) ** 2)
    np.testing.assert_allclose(tape.gradient(a, x).numpy(), tape.gradient(b, x).numpy(), atol=1e-3)
    np.testing.assert_allclose(tape.gradient(a, ours.kernel).numpy(), tape.gradient(b, ref.kernel).numpy(),
                               rtol=1e-4, atol=1e-3)
