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
