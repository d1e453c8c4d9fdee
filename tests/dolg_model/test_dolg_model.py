"""The assembled DOLG network: any input size, unit-norm embeddings, save/load, multi-scale."""
import numpy as np
import pytest
import tensorflow as tf

from dolg_model import model as dolg_lib
from dolg_model.config import DOLGConfig

SMALL = dict(backbone="mobilenetv3small", image_size=64, embedding_dim=32, local_dim=48,
             atrous_branch_dim=16)


@pytest.fixture(scope="module")
def r50_atrous():
    return dolg_lib.build_dolg(DOLGConfig(backbone="resnet50", multi_atrous="authors"))


def test_one_model_embeds_any_size_with_unit_norm(r50_atrous):
    rng = np.random.default_rng(0)
    for h, w in [(224, 224), (320, 240), (257, 389)]:
        e = r50_atrous(rng.uniform(0, 255, size=(2, h, w, 3)).astype(np.float32)).numpy()
        assert e.shape == (2, 512)
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)


def test_taps_and_widths_follow_the_paper(r50_atrous):
    att_in = r50_atrous.get_layer("multi_atrous").input
    assert att_in.shape[-1] == 1024          # res4 -> local branch
    assert r50_atrous.get_layer("gem").input.shape[-1] == 2048  # res5 -> global branch
    assert r50_atrous.get_layer("global_fc").output.shape[-1] == 1024
    assert r50_atrous.get_layer("fuse").output.shape[-1] == 2048


def test_local_features_vary_across_space(r50_atrous):
    # The unofficial port's local map was spatially constant; ours must not be.
    probe = tf.keras.Model(r50_atrous.inputs, r50_atrous.get_layer("multi_atrous").output)
    x = np.random.default_rng(1).uniform(0, 255, size=(1, 224, 224, 3)).astype(np.float32)
    assert probe(x).numpy().std(axis=(1, 2)).mean() > 1e-3


def test_attention_map_is_stride_16_and_positive():
    dolg = dolg_lib.build_dolg(DOLGConfig(**SMALL))
    att = dolg_lib.attention_model(dolg)(np.zeros((2, 96, 160, 3), np.float32)).numpy()
    assert att.shape == (2, 6, 10) and np.all(att > 0)


@pytest.mark.parametrize("variant", ["none", "kaggle"])
def test_save_and_load_give_identical_embeddings(tmp_path, variant):
    dolg = dolg_lib.build_dolg(DOLGConfig(**SMALL, multi_atrous=variant, atrous_rates=(1, 2)))
    x = np.random.default_rng(2).uniform(0, 255, size=(2, 80, 72, 3)).astype(np.float32)
    want = dolg(x, training=False).numpy()
    for target in (tmp_path / "savedmodel", tmp_path / "model.keras", tmp_path / "model.h5"):
        dolg.save(str(target))
        again = tf.keras.models.load_model(str(target))
        got = again(x, training=False).numpy()
        assert np.abs(got - want).max() < 1e-6, target.name


def test_multi_scale_descriptor_matches_manual_average_in_a_tf_function():
    dolg = dolg_lib.build_dolg(DOLGConfig(**SMALL))
    x = np.random.default_rng(3).uniform(0, 255, size=(2, 90, 70, 3)).astype(np.float32)
    scales = (0.7071, 1.0, 1.4142)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def serve(images):
        return dolg_lib.multi_scale_embedding(dolg, images, scales)

    got = serve(x).numpy()
    manual = 0
    for s in scales:
        size = [max(int(round(90 * s)), 1), max(int(round(70 * s)), 1)]
        xs = x if s == 1.0 else tf.image.resize(x, size, antialias=True)
        e = dolg(xs, training=False).numpy()
        manual = manual + e / np.linalg.norm(e, axis=1, keepdims=True)
    manual /= np.linalg.norm(manual, axis=1, keepdims=True)
    np.testing.assert_allclose(got, manual, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    single = dolg(x, training=False).numpy()
    assert np.abs(single - got).max() > 1e-4  # the scales really were used


def test_mixed_precision_model_is_finite_and_unit_norm():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        dolg = dolg_lib.build_dolg(DOLGConfig(**SMALL, multi_atrous="authors", atrous_rates=(1, 2)))
        e = dolg(np.random.default_rng(4).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert e.dtype == tf.float32
    assert np.all(np.isfinite(e.numpy()))
    np.testing.assert_allclose(np.linalg.norm(e.numpy(), axis=1), 1.0, rtol=1e-4)
