"""The decoder's resize path (``image_ops.decode_batch``: what the Transform, the Trainer and
every serving signature run) against TensorFlow's own ops and Pillow, and the reduced-scale
JPEG decode with the pixel cap on what is decoded.

``decode_batch`` resizes in the stored orientation and orients the small image, and decodes a
big JPEG at 1/2, 1/4 or 1/8; these tests hold it to ``tf.image.resize_with_pad`` /
``tf.image.resize`` of the full upright decode (to float rounding where no scaling applies,
to a measured bound where it does).
"""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.images import checks, image_header, image_ops, rules
from conftest import load_fixture

bad_images = load_fixture("bad_images")
_photo = load_fixture("photos").photo_jpeg
CAP = rules.DEFAULT_MAX_PIXELS


def _reference(data, size, mode):
    """What decode_batch promised before it got faster: TF's resize of the full upright decode."""
    image = tf.cast(image_ops.decode_eager(data), tf.float32)
    if mode == "pad":
        out = tf.image.resize_with_pad(image, size, size, method="bilinear", antialias=True)
    else:
        out = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(out, 0.0, 255.0).numpy()


def _batch(data, size, mode="pad", max_pixels=CAP):
    return image_ops.decode_batch(tf.constant([data]), size, mode, max_pixels).numpy()[0]


@pytest.fixture(scope="module")
def oriented():
    files = {}
    for fmt in ("JPEG", "PNG", "WEBP"):
        _, rotated = bad_images.exif_orientations(fmt)  # 48x32 upright, stored turned
        files.update({(fmt, value): data for value, data in rotated.items()})
    return files


@pytest.mark.parametrize("mode", image_ops.RESIZE_MODES)
def test_decode_batch_is_tfs_resize_of_the_upright_decode_for_all_orientations(oriented, mode):
    """Size 25 from 48x32: no reduced scale (32 < 2 x 25), and an odd padding (4 above, 5
    below), which a flip moves. Mutations that fail it: orienting before the target size is
    swapped for EXIF 5-8 (wrong shape), padding before the flips (a 1-pixel shift for 3, 4, 7, 8),
    a wrong transpose/flip table in apply_orientation."""
    for (fmt, value), data in oriented.items():
        got, want = _batch(data, 25, mode), _reference(data, 25, mode)
        assert got.shape == want.shape == (25, 25, 3), (fmt, value)
        assert np.abs(got - want).max() < 1e-3, (fmt, value, mode, np.abs(got - want).max())


def test_resize_is_tfs_resize_with_pad_and_resize():
    rng = np.random.default_rng(1)
    image = tf.constant(rng.integers(0, 256, (31, 47, 3), dtype=np.uint8))
    as_float = tf.cast(image, tf.float32)
    pad = tf.image.resize_with_pad(as_float, 20, 20, method="bilinear", antialias=True)
    squash = tf.image.resize(as_float, [20, 20], method="bilinear", antialias=True)
    assert np.array_equal(image_ops.resize(image, 20, "pad").numpy(), tf.clip_by_value(pad, 0, 255).numpy())
    assert np.array_equal(image_ops.resize(image, 20, "squash").numpy(), tf.clip_by_value(squash, 0, 255).numpy())
    with pytest.raises(ValueError, match="resize mode"):
        image_ops.resize(image, 20, "crop")


def test_the_resize_reads_the_decoded_uint8_without_a_float_copy():
    """The antialiased resize takes the decoder's uint8 pixels as they are (ScaleAndTranslate
    converts each one as it reads it); a cast first wrote a float copy of the whole decoded
    image, 4 ms of a 1600x1200 photo's 15. The test above holds the pixels to TF's resize of
    the float image, bit for bit. Mutation: the cast put back -> the op's input is float32."""
    graph = tf.function(lambda d: image_ops.decode_resized(d, 64)).get_concrete_function(
        tf.TensorSpec([], tf.string)).graph
    graph_def = graph.as_graph_def()  # the resize sits in a branch function of the library
    nodes = list(graph_def.node) + [node for f in graph_def.library.function for node in f.node_def]
    resizes = [node for node in nodes if node.op == "ScaleAndTranslate"]
    assert resizes and all(node.attr["T"].type == tf.uint8.as_datatype_enum for node in resizes), resizes


def test_jpeg_scale_is_the_largest_that_keeps_the_short_side():
    cases = {(640, 480, 224): 2, (640, 447, 224): 2, (640, 446, 224): 1, (4032, 3024, 224): 8, (4032, 3024, 512): 4,
             (1600, 1200, 224): 4, (100, 100, 224): 1, (8064, 6048, 96): 8}
    for (w, h, size), scale in cases.items():
        assert int(image_header.jpeg_scale(tf.constant(w, tf.int64), tf.constant(h, tf.int64), size)) == scale
        assert rules.decoded_size("jpeg", w, h, size) == (-(-w // scale), -(-h // scale))
        assert rules.decoded_size("png", w, h, size) == (w, h)


def test_a_12_mp_phone_photo_is_decoded_at_an_eighth_close_to_the_full_decode():
    """A 4032x3024 photo stored turned (EXIF 6) for a 224 px model: decoded at 1/8 (504x378
    stored), upright 378x504, and within a few grey levels of the full decode's resize and of
    Pillow's draft mode (libjpeg's own reduced decode) resized the same way."""
    data = _photo(4032, 3024, orientation=6)
    scale = image_header.probe(tf.constant(data), CAP, 224)[-1]
    assert int(scale) == 8
    assert image_ops.decode_eager(data, CAP, 224).shape == (504, 378, 3)
    got = _batch(data, 224)
    full = _reference(data, 224, "pad")
    diff = np.abs(got - full)
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12, (diff.mean(), np.percentile(diff, 99))
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (504, 378))
        assert im.size == (504, 378)
        drafted = tf.cast(np.asarray(im.convert("RGB").transpose(Image.Transpose.ROTATE_270)), tf.float32)
    pillow = tf.image.resize_with_pad(drafted, 224, 224, method="bilinear", antialias=True).numpy()
    assert np.abs(got - pillow).mean() < 1.0


def test_the_pixel_cap_applies_to_what_is_decoded_for_jpeg_only():
    """A real 48 MP phone-sized JPEG (8064x6048, 48.8 Mpx > the 40 Mpx cap) is refused at full
    size and accepted for a 224 px model, which decodes it at 1/8 (1008x756); ingestion's
    verdict follows the same rule. A PNG over the cap stays refused at any model size."""
    data = _photo(8064, 6048, orientation=1, quality=30, upscale=8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="over the pixel cap"):
        image_ops.decode_eager(data, CAP)
    assert image_ops.decode_eager(data, CAP, 224).shape == (756, 1008, 3)
    assert _batch(data, 224).shape == (224, 224, 3)
    with pytest.raises(checks.Rejected, match="max_pixels"):
        checks.inspect_image(data, rules.DEFAULT_MAX_BYTES, CAP, tf_check=True)
    for tf_check in (False, True):
        info = checks.inspect_image(data, rules.DEFAULT_MAX_BYTES, CAP, tf_check=tf_check, min_size=224)
        assert (info.width, info.height) == (8064, 6048)
    # a 1/8 decode still over a smaller cap: refused, naming the decoded size
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"1008x756 decoded at 1/8"):
        image_ops.decode_eager(data, 700_000, 224)
    with pytest.raises(checks.Rejected, match="decoded at 1008x756"):
        checks.inspect_image(data, rules.DEFAULT_MAX_BYTES, 700_000, tf_check=True, min_size=224)
    for name, bomb in bad_images.bombs().items():
        if checks.sniff_format(bomb) != "jpeg":
            with pytest.raises(tf.errors.InvalidArgumentError, match="over the pixel cap"):
                _batch(bomb, 224)
            with pytest.raises(checks.Rejected, match="max_pixels"):
                checks.inspect_image(bomb, rules.DEFAULT_MAX_BYTES, CAP, min_size=224)
