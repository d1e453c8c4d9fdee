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


@pytest.mark.parametrize("variant", ["kaggle", "authors"])
def test_local_features_vary_across_space(variant):
    """The unofficial port pooled every dilated branch over space, so its "local" map was
    constant. Only the dilated branches may carry spatial variation here: "kaggle" has nothing
    else, and in "authors" the 1x1 branch is zeroed (the image-pool branch is constant over
    space by design), so the block's output varies over space only through them."""
    dolg = dolg_lib.build_dolg(DOLGConfig(**dict(SMALL, image_size=224), multi_atrous=variant))
    block = dolg.get_layer("multi_atrous")
    if variant == "authors":
        block.pointwise.set_weights([np.zeros_like(w) for w in block.pointwise.get_weights()])
    probe = tf.keras.Model(dolg.inputs, [block.input, block.output])
    x = np.random.default_rng(1).uniform(0, 255, size=(1, 224, 224, 3)).astype(np.float32)
    stride16, local = (t.numpy() for t in probe(x))
    assert stride16.shape[1:3] == (14, 14)  # the paper's map size at 224 px

    def spatial_variation(m):  # relative: an untrained MobileNetV3's maps are ~1e-7 in size
        return m.std(axis=(1, 2)).mean() / (np.sqrt((m ** 2).mean()) + 1e-30)

    assert spatial_variation(stride16) > 0.1  # what the block gets does vary
    assert spatial_variation(local) > 0.05, spatial_variation(local)


def test_attention_map_is_stride_16_and_positive():
    dolg = dolg_lib.build_dolg(DOLGConfig(**SMALL))
    att = dolg_lib.attention_model(dolg)(np.zeros((2, 96, 160, 3), np.float32)).numpy()
    assert att.shape == (2, 6, 10) and np.all(att > 0)


# "authors" has every layer "kaggle" has (the dilated branches) plus the 1x1 and image-pool
# branches; a minute per variant under load, so "kaggle" is not repeated.
@pytest.mark.parametrize("variant", ["none", "authors"])
def test_save_and_load_give_identical_embeddings(tmp_path, variant):
    dolg = dolg_lib.build_dolg(DOLGConfig(**SMALL, multi_atrous=variant, atrous_rates=(1, 2)))
    x = np.random.default_rng(2).uniform(0, 255, size=(2, 80, 72, 3)).astype(np.float32)
    want = dolg(x, training=False).numpy()
    for target in (tmp_path / "savedmodel", tmp_path / "model.keras", tmp_path / "model.h5"):
        # The SavedModel as pipeline/signatures.export writes it: rebuilt from the layers'
        # configs on load (tracing every layer's call would add ~8 s and test nothing more here).
        dolg.save(str(target), **({"save_traces": False} if target.name == "savedmodel" else {}))
        again = tf.keras.models.load_model(str(target))
        got = again(x, training=False).numpy()
        assert np.abs(got - want).max() < 1e-6, target.name


def test_training_model_with_its_heads_saves_and_loads(tmp_path):
    """DOLG with every margin head (one model, so DOLG is built and reloaded once), e.g. to
    fine-tune from: identical logits and head state (centres, per-class margins,
    CurricularFace's running t) after a reload in both config-based formats (the SavedModel
    path of the same layers is tested above on the descriptor)."""
    from dolg_model import heads

    base = DOLGConfig(**SMALL)
    dolg = dolg_lib.build_dolg(base)
    images = tf.keras.Input(shape=(None, None, 3), name="image")
    labels = tf.keras.Input(shape=(), dtype=tf.int32, name="label")
    configs = [base.replace(head="arcface", easy_margin=True),
               base.replace(head="subcenter_arcface", subcenters=3, dynamic_margins=True),
               base.replace(head="curricularface")]
    head_layers = [heads.build_head(c, 5, class_counts=[9, 1, 4, 2, 7]) for c in configs]
    for layer, c in zip(head_layers, configs):
        layer._name = c.head  # build_head names every head "margin_head"
    embedding = dolg(images)
    model = tf.keras.Model({"image": images, "label": labels}, [h([embedding, labels]) for h in head_layers])
    head_layers[2].t.assign(0.37)  # a trained value, not the initial zero
    inputs = {"image": np.random.default_rng(5).uniform(0, 255, size=(4, 64, 64, 3)).astype(np.float32),
              "label": np.array([0, 3, 1, 4], np.int32)}
    want = [t.numpy() for t in model(inputs, training=False)]
    for target in (tmp_path / "model.keras", tmp_path / "model.h5"):
        model.save(str(target))
        again = tf.keras.models.load_model(str(target))
        for got, expected in zip(again(inputs, training=False), want):
            np.testing.assert_allclose(got.numpy(), expected, atol=1e-4, err_msg=target.name)
        for layer in head_layers:
            assert again.get_layer(layer.name).get_config() == layer.get_config(), (target.name, layer.name)
        assert float(again.get_layer("curricularface").t.numpy()) == pytest.approx(0.37), target.name


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
