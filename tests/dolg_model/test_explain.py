"""Attention maps and `dolg-tfx explain`."""
import subprocess

import numpy as np
from PIL import Image

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


def test_explain_cli_writes_an_overlay(tmp_path):
    dolg = dolg_lib.build_dolg(DOLGConfig(backbone="mobilenetv3small", embedding_dim=16, local_dim=24))
    dolg.save(str(tmp_path / "model.keras"))
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (70, 90, 3), np.uint8)).save(tmp_path / "q.jpg")
    out = tmp_path / "heat.png"
    run = subprocess.run(["dolg-tfx", "explain", str(tmp_path / "q.jpg"), "--model", str(tmp_path / "model.keras"),
                          "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (90, 70)
    (tmp_path / "bad.jpg").write_text("not an image")
    run = subprocess.run(["dolg-tfx", "explain", str(tmp_path / "bad.jpg"), "--model", str(tmp_path / "model.keras"),
                          "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "bad.jpg" in run.stderr
