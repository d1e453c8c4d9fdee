"""Every registered backbone's taps sit at stride 16 (local) and stride 32 (global)."""
import numpy as np
import pytest
import tensorflow as tf

from dolg_model import backbones


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_taps_are_at_stride_16_and_32(name):
    model, local, global_, preprocess = backbones.build_backbone(name)
    taps = tf.keras.Model(model.inputs, [model.get_layer(local).output, model.get_layer(global_).output])
    # 128 px: stride 16 -> 8x8, stride 32 -> 4x4. A non-square input checks both axes.
    a, b = taps(np.zeros((1, 128, 192, 3), np.float32))
    assert a.shape[1:3] == (8, 12), (name, local, a.shape)
    assert b.shape[1:3] == (4, 6), (name, global_, b.shape)
    assert preprocess in ("caffe", "torch", "tf", "none")
    tf.keras.backend.clear_session()


def test_custom_backbone_with_two_layer_names():
    inp = tf.keras.Input((None, None, 3))
    x = tf.keras.layers.Conv2D(4, 3, strides=16, padding="same", name="s16")(inp)
    y = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", name="s32")(x)
    model = tf.keras.Model(inp, y)
    built, local, global_, _ = backbones.build_backbone("custom", custom_model=model,
                                                        local_tap="s16", global_tap="s32")
    assert (local, global_) == ("s16", "s32")
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        backbones.build_backbone("custom", custom_model=model, local_tap="nope", global_tap="s32")


def test_prefix_tap_takes_the_last_matching_layer():
    inp = tf.keras.Input((None, None, 3))
    x = tf.keras.layers.Conv2D(2, 1, name="block5a")(inp)
    x = tf.keras.layers.Conv2D(2, 1, name="block5b")(x)
    x = tf.keras.layers.Conv2D(2, 1, name="block6a")(x)
    assert backbones.resolve_tap(tf.keras.Model(inp, x), "block5*") == "block5b"


def test_weights_file_is_loaded(tmp_path):
    model, *_ = backbones.build_backbone("mobilenetv3small")
    model.save_weights(tmp_path / "w.h5")
    again, *_ = backbones.build_backbone("mobilenetv3small", weights=str(tmp_path / "w.h5"))
    np.testing.assert_array_equal(model.get_weights()[0], again.get_weights()[0])
