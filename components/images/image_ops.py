"""The graph decoder: image bytes -> upright RGB pixels in TensorFlow ops, shared by the Transform
graph and every serving signature, so training, evaluation and serving can never disagree.

One decoder, one verdict. ``decode_rgb`` first PROBES the bytes with cheap string ops (format
from the magic bytes, stored dimensions from the header) and only then, inside a branch
(``image_header.lazy_case``), decodes: a refused input never reaches a decoder, so a 200 KB PNG announcing 40000x40000
pixels costs microseconds, not gigabytes. (``tf.debugging`` asserts would not do: in a
``tf.function`` nothing orders them before ``decode_image``.) The rules (magic bytes, caps,
BMP variants, the GIF/WebP walk bounds, the JPEG scales) come from ``components/images/rules.py``,
which ingestion's checks apply with Pillow. The probe and the EXIF reading, string ops on the
bytes, are ``components/images/image_header.py``; this module decodes and resizes. Every
per-format choice (probe, EXIF reader, decoder) and the accept/refuse gate is a ``lazy_case``:
its branches stay functions at run time, so a process prepares only the formats it meets.

- Accepted: JPEG, PNG, GIF (first frame, drawn on its canvas), BMP (uncompressed 24/32-bit)
  and WebP (still or the first frame of an animation; alpha dropped).
- Refused with the format named: HEIC/HEIF, AVIF, TIFF, JPEG XL, JPEG 2000, PSD, SVG, PDF.
- EXIF orientation (JPEG APP1 ``Exif``, PNG ``eXIf``, WebP ``EXIF``) is read with string ops
  and applied after decoding (after the resize in ``decode_batch``); a missing or broken EXIF
  block means upright.
- The pixel cap applies to what is decoded: a JPEG going to a model of known input size is
  decoded at 1/2, 1/4 or 1/8 when its short side allows (``rules.JPEG_SCALES``); every other
  format at its stored size.

Two TensorFlow 2.21 decoder hazards are avoided by never handing them the raw bytes:
the GIF decoder decompresses every frame of an animation even when only the first is kept
(a 2.6 MB GIF of 200 4000x4000 frames took 60 s and 3 GB), so a GIF is cut after its first
frame; and the WebP decoder corrupts the heap (the process aborts) on animated WebP, so the
first frame is re-wrapped as a still WebP first. Every op used is in the pinned TF Serving's
op list (tests/kubeflow/testdata); WebP goes through DecodeImage, whose WebP support is what
the pinned TensorFlow Serving needs (2.19's DecodeImage had none).

Refused or undecodable bytes raise InvalidArgumentError, whose message says why.
"""
import tensorflow as tf

from components.images.image_header import (MAX_BYTES, MAX_PIXELS, byte_length, frame_box, frame_has_alpha, header,
                                            int_bytes, lazy_case, orientation, probe, read_int)
from components.images.rules import JPEG_SCALES

RESIZE_MODES = ("pad", "squash")


# ------------------------------------------------------------------------------ orientation
# Per EXIF orientation 0-8 (0: none, as 1): the axes' order, and which of rows / columns flip.
_ORIENT_PERM = [[0, 1, 2]] * 5 + [[1, 0, 2]] * 4
_ORIENT_FLIPS = [[False, False], [False, False], [False, True], [True, True], [True, False],
                 [False, False], [False, True], [True, True], [True, False]]
_ORIENT_PERM_HW = [row[:2] for row in _ORIENT_PERM]  # the same, for the (H, W) axes alone


def _orientation_row(value):
    """The row of the tables above for EXIF orientation ``value``: itself for 1-8, else 0
    (upright). The one reading of a value both here and in _resize_oriented."""
    return tf.where((value >= 1) & (value <= 8), tf.cast(value, tf.int32), 0)


def _turned(image, row):
    """The stored image turned for the tables' ``row``: a transpose, then a reverse."""
    transposed = tf.transpose(image, tf.gather(_ORIENT_PERM, row))
    return tf.reverse(transposed, tf.where(tf.gather(_ORIENT_FLIPS, row))[:, 0])


def apply_orientation(image, value):
    """Turns a stored (H, W, C) image upright for EXIF orientation ``value`` (1-8), as Pillow's
    ``ImageOps.exif_transpose`` does: a transpose for 5-8, then a flip of the rows (3, 4, 7, 8)
    and/or the columns (2, 3, 6, 7); any other value is upright, as Pillow leaves it, and
    passes through untouched (tf.reverse over no axis still copies the whole image)."""
    row = _orientation_row(value)
    return lazy_case(tf.cast(row >= 2, tf.int32), [lambda: image, lambda: _turned(image, row)], name="orient")


def _orient_resized(image, row):
    """``apply_orientation`` (by the tables' ``row``, ``_orientation_row``) for the small float
    image the resize made, in one move of each
    pixel: a gather at computed flat positions does the transpose and both flips at once.
    TensorFlow's transpose and reverse each cost 2-3 ns an element on a 224 px float32 image
    (0.6-0.9 ms an image for orientation 6, a sixth of a 640x480 photo's decode); the gather
    about half that together. On a full-size uint8 decode the transpose is the faster one
    (by a fifth at 12 MP: scratch measurements on this machine), so apply_orientation keeps it
    there, and so does a flip without a transpose (a reverse is the cheaper move alone). The
    same tables: the axes' order of _ORIENT_PERM, then the flips."""
    def moved():
        h, w, c = tf.unstack(tf.shape(image), 3)
        order = tf.gather(_ORIENT_PERM_HW, row)  # which stored axis each output axis walks
        flips = tf.gather(tf.constant(_ORIENT_FLIPS, tf.int32), row)
        size = tf.gather(tf.stack([h, w]), order)  # the output's height and width
        # One step down / right in the output moves this many places in the stored image's flat
        # order: a row (w places) or a column (1 place), backwards where that axis flips.
        stride = tf.gather(tf.stack([w, 1]), order)
        start = tf.reduce_sum(flips * (size - 1) * stride)
        (out_h, out_w), (down, right) = tf.unstack(size, 2), tf.unstack(stride * (1 - 2 * flips), 2)
        places = start + tf.reshape(tf.range(out_h) * down, [-1, 1]) + tf.range(out_w) * right
        pixels = tf.gather(tf.reshape(image, tf.stack([-1, c])), tf.reshape(places, [-1]))
        return tf.reshape(pixels, tf.stack([out_h, out_w, c]))

    # Upright passes through (tf.reverse over no axis still copies: 0.1 ms at 224 px); flips
    # alone (2-4) are cheaper as tf.reverse than as a gather.
    kind = tf.cast(row >= 2, tf.int32) + tf.cast(row >= 5, tf.int32)
    return lazy_case(kind, [lambda: image, lambda: _turned(image, row), moved], name="orient")


# ------------------------------------------------------------------------------ decoding
def _on_canvas(frame, x, y, width, height):
    """A (h, w, 3) first frame drawn at (x, y) on a black width x height canvas."""
    h, w, _ = tf.unstack(tf.cast(tf.shape(frame), tf.int64), 3)
    check = tf.debugging.Assert((x + w <= width) & (y + h <= height),
                                ["first frame does not fit its canvas"])
    with tf.control_dependencies([check]):
        return tf.pad(frame, [[y, height - y - h], [x, width - x - w], [0, 0]])


def _decode_gif(data, width, height, end, desc_at):
    """The first frame only: the file cut after it, with the trailer; its offset set to (0, 0)
    (TensorFlow's decoder would shift the frame inside a frame-sized canvas), then drawn on
    the canvas here."""
    zero = tf.constant(0, tf.int64)
    x, y = read_int(data, desc_at + 1, 2, True), read_int(data, desc_at + 3, 2, True)
    first = tf.strings.join([tf.strings.substr(data, zero, desc_at + 1), b"\0\0\0\0",
                             tf.strings.substr(data, desc_at + 5, end - desc_at - 5), b";"])
    return _on_canvas(tf.io.decode_gif(first)[0], x, y, width, height)


def _webp_pixels(still):
    """A still WebP's RGB, through DecodeImage (the op every image path uses, so a server's
    TensorFlow decodes WebP exactly when its DecodeImage does); channels 0 because channels=3
    is refused for files with alpha."""
    return tf.io.decode_image(still, channels=0, dtype=tf.uint8, expand_animations=False)[:, :, :3]


def _decode_webp(data, width, height, anmf):
    """A still WebP as it is; an animation's first frame (its kind, box and bitstream size
    checked by the probe) re-wrapped as a still and drawn on the canvas. One decode of the
    bytes selected, not a branch (see lazy_case on what each branch function costs)."""
    animated = anmf >= 0
    size = tf.where(animated, read_int(data, anmf + 4, 4, True), 0)  # nothing cut from a still
    x, y, w, h = frame_box(data, anmf)
    has_alpha = frame_has_alpha(data, anmf)
    body = tf.strings.substr(data, tf.minimum(tf.maximum(anmf + 24, 0), byte_length(data)), tf.maximum(size - 16, 0))
    # RIFF's size counts "WEBP", the 18-byte VP8X chunk (with alpha: it says so) and the frame.
    riff_size = byte_length(body) + tf.where(has_alpha, tf.constant(22, tf.int64), 4)
    w_bytes, h_bytes, riff_bytes = tf.unstack(int_bytes(tf.stack([w - 1, h - 1, riff_size]), 4), 3)
    vp8x = tf.strings.join([b"VP8X\x0a\0\0\0\x10\0\0\0", tf.strings.substr(w_bytes, 0, 3), tf.strings.substr(h_bytes, 0, 3)])
    riff = tf.strings.join([b"RIFF", riff_bytes, b"WEBP", tf.where(has_alpha, vp8x, b""), body])
    frame = _webp_pixels(tf.where(animated, riff, data))
    zero = tf.constant(0, tf.int64)
    stored_h, stored_w, _ = tf.unstack(tf.cast(tf.shape(frame), tf.int64), 3)
    # A still is its own canvas: drawn at (0, 0) on its decoded size, it comes out as decoded.
    return _on_canvas(frame, tf.where(animated, x, zero), tf.where(animated, y, zero),
                      tf.where(animated, width, stored_w), tf.where(animated, height, stored_h))


def _decode_stored(data, fmt, width, height, aux, aux2, scale):
    """The accepted image as stored (before the EXIF orientation), a JPEG at 1/``scale``."""
    def generic():
        return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)

    def jpeg_at(ratio):  # the accurate IDCT: the same pixels as Pillow's libjpeg-turbo (the default is the fast one)
        return lambda: tf.io.decode_jpeg(data, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")

    def jpeg():
        index = tf.reduce_sum(tf.cast(scale > JPEG_SCALES[:-1], tf.int32))  # 1, 2, 4, 8 -> 0-3
        return tf.switch_case(index, [jpeg_at(d) for d in JPEG_SCALES])

    image = lazy_case(fmt, [
        jpeg, generic, lambda: _decode_gif(data, width, height, aux, aux2), generic,
        lambda: _decode_webp(data, width, height, aux)], name="decode_format")
    image.set_shape([None, None, 3])
    return image


def _oriented_then_decoded(data, fmt, width, height, aux, aux2, scale):
    """(EXIF orientation, the image as stored), the orientation read first. A decoder that
    fails (a cut or corrupt file the headers could not tell) cancels whatever else is still
    running, and a branch function cancelled before it started can report that cancellation
    ahead of the decoder's own error: the EXIF walk running beside the decoder made the
    refusal of a cut JPEG a CancelledError now and then. In order, nothing runs beside it."""
    value = orientation(data, fmt)
    with tf.control_dependencies([value]):
        return value, _decode_stored(data, fmt, width, height, aux, aux2, scale)


def _refused(ok, message, shape, dtype):
    with tf.control_dependencies([tf.debugging.Assert(ok, [message])]):
        return tf.zeros(shape, dtype)


def decode_rgb(data, max_pixels=MAX_PIXELS, min_size=None, max_bytes=MAX_BYTES):
    """One encoded image (scalar string) -> upright (H, W, 3) uint8 RGB.

    Args:
      min_size: the side the image will be resized to, if known: a JPEG whose short side is
        at least twice that is decoded at a reduced scale (``image_header.jpeg_scale``), and
        the pixel cap applies to the pixels decoded. None: full size.

    Raises InvalidArgumentError (the probe's reason, or the decoder's) for empty, unknown,
    refused, truncated or over-the-cap input; over-the-cap input is never decoded.
    """
    data = tf.convert_to_tensor(data, tf.string)
    ok, message, fmt, width, height, aux, aux2, scale = probe(data, max_pixels, min_size, max_bytes)
    def accepted():
        value, stored = _oriented_then_decoded(data, fmt, width, height, aux, aux2, scale)
        return apply_orientation(stored, value)

    image = lazy_case(tf.cast(ok, tf.int32), [lambda: _refused(ok, message, [0, 0, 3], tf.uint8), accepted],
                      name="decode_if_ok")
    image.set_shape([None, None, 3])
    return image


def upright_size(data):
    """(width, height) of the decoded, upright image at full size (header dims, swapped for
    EXIF 5-8)."""
    ok, _, fmt, width, height, _, _ = header(data)
    swap = orientation(data, tf.maximum(fmt, 0)) >= 5
    return tf.where(swap, height, width), tf.where(swap, width, height)


_EAGER = {}


def decode_eager(data: bytes, max_pixels: int = MAX_PIXELS, min_size=None, max_bytes: int = MAX_BYTES):
    """decode_rgb on one byte string, outside any graph (ingestion's check, tests): a numpy
    array, or tf.errors.InvalidArgumentError. The traced function is cached per cap and size."""
    key = (max_pixels, min_size, max_bytes)
    if key not in _EAGER:
        _EAGER[key] = tf.function(lambda d: decode_rgb(d, max_pixels, min_size, max_bytes), autograph=False,
                                  input_signature=[tf.TensorSpec([], tf.string)])
    return _EAGER[key](tf.constant(data, tf.string)).numpy()


def pad_box(height, width, size):
    """Where tf.image.resize_with_pad puts a height x width image in a size x size frame:
    (resized height, resized width, top, left), with TF's own float32 arithmetic."""
    h, w, s = (tf.cast(v, tf.float32) for v in (height, width, size))
    ratio = tf.maximum(w / s, h / s)
    rh, rw = h / ratio, w / ratio
    top = tf.maximum(0, tf.cast(tf.floor((s - rh) / 2), tf.int32))
    left = tf.maximum(0, tf.cast(tf.floor((s - rw) / 2), tf.int32))
    return tf.cast(tf.floor(rh), tf.int32), tf.cast(tf.floor(rw), tf.int32), top, left


def resize(image, size, mode="pad"):
    """(H, W, 3) -> (size, size, 3) float32 in [0, 255].

    Args:
      mode: "pad" keeps the aspect ratio and pads with black; "squash" stretches to a square.
    """
    return _resize_oriented(image, tf.constant(1), size, mode)


def _resize_oriented(stored, value, size, mode):
    """``resize(apply_orientation(stored, value), size, mode)``, with the resize done first in
    the stored orientation (on the large image) and the orientation on the small one: a
    transpose and flips commute with a separable resize, so only the float rounding differs."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")
    row = _orientation_row(value)
    swap = row >= 5  # apply_orientation transposes exactly these
    stored_hw = tf.shape(stored)[:2]
    stored_h, stored_w = tf.unstack(stored_hw, 2)
    height, width = tf.where(swap, stored_w, stored_h), tf.where(swap, stored_h, stored_w)  # upright
    if mode == "pad":
        rh, rw, top, left = pad_box(height, width, size)
    else:
        rh = rw = tf.constant(size)
        top = left = tf.constant(0)
    target = tf.where(swap, tf.stack([rw, rh]), tf.stack([rh, rw]))
    # tf.image.resize(stored, target, "bilinear", antialias=True), as its own op: the same
    # ScaleAndTranslate call without the wrapper's checks and casts (nodes: see lazy_case). It
    # reads uint8 and writes float32, converting each pixel as it reads it: no float copy of
    # the whole decoded image first (23 MB at 1600x1200).
    small = tf.raw_ops.ScaleAndTranslate(
        images=tf.expand_dims(stored, 0), size=target, scale=tf.cast(target, tf.float32) / tf.cast(stored_hw, tf.float32),
        translation=tf.zeros([2]), kernel_type="triangle", antialias=True)[0]
    # The clip on the resized pixels alone: the padding is 0 and a turn moves values, so
    # clipping here is clipping the padded image, on up to a quarter fewer pixels.
    small = _orient_resized(tf.clip_by_value(small, 0.0, 255.0), row)
    if mode == "pad":
        # The flips move an odd padding pixel: pad after orienting, where resize_with_pad pads.
        small = tf.pad(small, [[top, size - top - rh], [left, size - left - rw], [0, 0]])
    return tf.ensure_shape(small, [size, size, 3])


def decode_resized(data, size, mode="pad", max_pixels=MAX_PIXELS, reduced_jpeg=True, max_bytes=MAX_BYTES):
    """One encoded image -> (size, size, 3) float32: ``resize(decode_rgb(data), size, mode)``,
    cheaper. A JPEG is decoded at the largest reduced scale that keeps its short side >= size
    (``image_header.jpeg_scale``; the pixel cap applies to what is decoded); the resize runs
    in the stored orientation and the EXIF orientation on the resized image. ``reduced_jpeg``
    False: every JPEG at full size (a comparison for benchmarks; the product never passes it)."""
    data = tf.convert_to_tensor(data, tf.string)
    ok, message, fmt, width, height, aux, aux2, scale = probe(data, max_pixels, size if reduced_jpeg else None,
                                                              max_bytes)
    def accepted():
        value, stored = _oriented_then_decoded(data, fmt, width, height, aux, aux2, scale)
        return _resize_oriented(stored, value, size, mode)

    return lazy_case(tf.cast(ok, tf.int32), [lambda: _refused(ok, message, [size, size, 3], tf.float32), accepted],
                     name="decode_if_ok")


_PER_IMAGE = {}


def _per_image(size, mode, max_pixels, reduced_jpeg, max_bytes):
    """decode_resized as one tf.function per setting, traced once per process: the Transform
    traces preprocessing_fn several times and each SavedModel signature traces again, and the
    decoder's ops were most of that time. A graph that calls it holds it as a library function."""
    key = (int(size), mode, int(max_pixels), bool(reduced_jpeg), int(max_bytes))
    if key not in _PER_IMAGE:
        _PER_IMAGE[key] = tf.function(lambda d: decode_resized(d, size, mode, max_pixels, reduced_jpeg, max_bytes),
                                      input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    return _PER_IMAGE[key]


def decode_batch(images, size, mode="pad", max_pixels=MAX_PIXELS, reduced_jpeg=True, max_bytes=MAX_BYTES):
    """A [B] (or [B, 1]) string tensor of encoded images -> (B, size, size, 3) float32."""
    flat = tf.reshape(images, [-1])
    return tf.map_fn(_per_image(size, mode, max_pixels, reduced_jpeg, max_bytes), flat,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
