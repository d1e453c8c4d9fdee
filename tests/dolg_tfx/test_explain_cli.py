"""`dolg-tfx explain` from a Keras save and from a TF Serving base folder."""
import subprocess

import numpy as np
from PIL import Image

from dolg_model import model as dolg_lib
from dolg_model.config import DOLGConfig


def _descriptor():
    return dolg_lib.build_dolg(DOLGConfig(backbone="mobilenetv3small", embedding_dim=16, local_dim=24))


def test_explain_cli_writes_an_overlay(tmp_path):
    dolg = _descriptor()
    dolg.save(str(tmp_path / "model.keras"))
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (70, 90, 3), np.uint8)).save(tmp_path / "q.jpg")
    out = tmp_path / "heat.png"
    run = subprocess.run(["dolg-tfx", "explain", str(tmp_path / "q.jpg"), "--model", str(tmp_path / "model.keras"),
                          "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with Image.open(out) as im:
        # the image at its own size, then the colour bar to its right
        assert im.format == "PNG" and im.size[1] == 70 and im.size[0] > 90
    (tmp_path / "bad.jpg").write_text("not an image")
    run = subprocess.run(["dolg-tfx", "explain", str(tmp_path / "bad.jpg"), "--model", str(tmp_path / "model.keras"),
                          "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "bad.jpg" in run.stderr


def test_explain_loads_the_resolved_version_of_a_base_folder(tmp_path):
    """A base folder whose newest version is a Keras SavedModel without the exported
    signatures: the descriptor is loaded from that version, not from the base folder."""
    _descriptor().save(str(tmp_path / "base" / "3"), save_format="tf", save_traces=False)
    (tmp_path / "base" / "1").mkdir()  # an older, empty (incomplete) version is ignored
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 60, 3), np.uint8)).save(tmp_path / "q.png")
    out = tmp_path / "heat.png"
    run = subprocess.run(["dolg-tfx", "explain", str(tmp_path / "q.png"), "--model", str(tmp_path / "base"),
                          "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with Image.open(out) as im:
        assert im.size[0] > 60 and im.size[1] >= 50
