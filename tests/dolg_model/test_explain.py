"""Attention maps and `dolg-tfx explain`."""
import numpy as np

from dolg_model import explain, model as dolg_lib
from dolg_model.config import DOLGConfig


def test_attention_map_has_image_size_and_unit_range():
    dolg = dolg_lib.build_dolg(DOLGConfig(backbone="mobilenetv3small", embedding_dim=16, local_dim=24))
    img = np.random.default_rng(0).uniform(0, 255, (96, 128, 3))
    heat = explain.attention_map(dolg, img)
    assert heat.shape == (96, 128)
    assert heat.min() == 0.0 and heat.max() == 1.0


def test_overlay_blends_colour_by_heat():
    img = np.full((4, 4, 3), 128, np.uint8)
    heat = np.zeros((4, 4)); heat[0, 0] = 1.0
    out = np.asarray(explain.overlay(img, heat, alpha=1.0))
    assert tuple(out[0, 0]) == (255, 255, 96) and tuple(out[3, 3]) == (0, 0, 96)


def test_colour_bar_runs_from_the_low_to_the_high_colour_beside_the_picture():
    from PIL import Image

    picture = Image.new("RGB", (40, 80), (0, 255, 0))
    out = np.asarray(explain.with_colour_bar(picture, bar_width=10))
    assert out.shape[0] == 80 and out.shape[1] > 50
    assert (out[:, :40] == [0, 255, 0]).all()  # the picture itself is untouched
    bar = out[:, 46]                            # a column inside the bar (margin 6)
    high, low = explain.colour_map(np.array(1.0)), explain.colour_map(np.array(0.0))
    assert np.abs(bar[6].astype(float) - high).max() <= 2
    assert np.abs(bar[80 - 7].astype(float) - low).max() <= 2
