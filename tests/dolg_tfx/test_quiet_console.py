"""`index build` and `evaluate` on the quiet console, as a user's terminal sees them: a real
`dolg-tfx` process (its file descriptors 1 and 2 are what the console redirects, which an
in-process CliRunner would not show). Default: the steps, a bar over the images, the result and
the log's name, no third-party notices; `--verbose`: the whole stream as well. The run and demo
commands use the same Console (tests/pipeline/test_pipeline_e2e.py checks their default mode)."""
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import load_fixture

NOISE = ("WARNING", "cuInit", "deprecated", "oneDNN", "I0000", "W0000", "E0000")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quiet")
    load_fixture("stand_in_model").save_stand_in_model(tmp / "model" / "1", dim=16)
    rng = np.random.default_rng(0)
    for g in range(3):  # UKBench layout: groups of 4 views, here also a 2-label gallery
        base = rng.integers(0, 255, (4, 4, 3))
        for j in range(4):
            pixels = np.clip(base + rng.integers(-20, 20, (4, 4, 3)), 0, 255).astype(np.uint8)
            path = tmp / "ukbench" / "full" / f"ukbench{4 * g + j:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).resize((48, 40), Image.NEAREST).save(path)
    (tmp / "ukbench" / "full" / "ukbench00011.jpg").write_bytes(b"\xff\xd8 a truncated download")
    return tmp


def _cli(*args, cwd):
    """The CLI in its own process, as the launcher starts it; (exit status, console text)."""
    out = subprocess.run([sys.executable, "-m", "dolg_tfx.cli", *map(str, args)], cwd=cwd,
                         capture_output=True, text=True, timeout=600)
    return out.returncode, out.stdout + out.stderr


def _named_log(console: str) -> pathlib.Path:
    [path] = re.findall(r"^Full log: (\S+\.log)$", console, flags=re.M)
    return pathlib.Path(path)


def test_index_build_console_is_quiet_with_a_bar_and_the_log(setup):
    rc, console = _cli("index", "build", "--model", setup / "model", "--images", setup / "ukbench" / "full",
                       "-o", setup / "index", "--batch-size", "4", cwd=setup)
    assert rc == 0, console
    for noise in NOISE:
        assert noise not in console, f"{noise!r} on the console:\n{console}"
    assert "embedding the gallery with" in console
    # The bar's last state: one part per unit, here the flat folder's one slice of 12 files.
    assert "embedding [" in console and "] 1/1 parts" in console and "11 images" in console
    assert "skipped " in console and "ukbench00011.jpg" in console   # still said, after the bar
    assert "indexed 11 of 12 images (1 skipped)" in console
    log = _named_log(console)
    assert log.parent == setup / "index" / "logs" and log.name.startswith("index-build-")
    text = log.read_text(errors="replace")
    assert "[console] Building a gallery index" in text
    assert any(noise in text for noise in NOISE), "the log kept nothing the console left out"


def test_index_build_verbose_brings_the_stream_back(setup):
    rc, quiet = _cli("index", "build", "--model", setup / "model", "--images", setup / "ukbench" / "full",
                     "-o", setup / "index-q", cwd=setup)
    rc_v, verbose = _cli("index", "build", "--model", setup / "model", "--images", setup / "ukbench" / "full",
                         "-o", setup / "index-v", "--verbose", cwd=setup)
    assert rc == 0 and rc_v == 0, verbose
    # Everything the quiet log holds beyond the console's own lines is on the verbose console.
    extra = [line for line in _named_log(verbose).read_text(errors="replace").splitlines()
             if line.strip() and not line.startswith("[console]")]
    assert extra and all(line in verbose for line in extra[:20]), extra[:5]
    assert any(noise in verbose for noise in NOISE)
    assert not any(noise in quiet for noise in NOISE)


def test_evaluate_console_is_quiet_and_names_the_log_beside_the_json(setup):
    rc, console = _cli("evaluate", "--protocol", "ukbench", "--data", setup / "ukbench", "--model", setup / "model",
                       "--json", setup / "eval" / "ukbench.json", cwd=setup)
    # The broken query leaves an incomplete group: the score is undefined, and that is said.
    assert rc != 0 and "N-S score is undefined" in console, console
    (setup / "ukbench" / "full" / "ukbench00011.jpg").unlink()
    (setup / "ukbench" / "full" / "ukbench00010.jpg").unlink()  # leaves group 2 incomplete
    for name in ("ukbench00008.jpg", "ukbench00009.jpg"):
        (setup / "ukbench" / "full" / name).unlink()
    rc, console = _cli("evaluate", "--protocol", "ukbench", "--data", setup / "ukbench", "--model", setup / "model",
                       "--json", setup / "eval" / "ukbench.json", cwd=setup)
    assert rc == 0, console
    for noise in NOISE:
        assert noise not in console, f"{noise!r} on the console:\n{console}"
    assert "N-S score: " in console and "] 8/8 images" in console
    log = _named_log(console)
    assert log.parent == setup / "eval" / "logs" and log.name.startswith("evaluate-")
