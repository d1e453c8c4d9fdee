"""The graph decoder: image bytes -> upright RGB pixels in TensorFlow ops, shared by the Transform
graph and every serving signature, so training, evaluation and serving can never disagree.

One decoder, one verdict. ``decode_rgb`` first PROBES the bytes with cheap string ops (format
from the magic bytes, stored dimensions from the header) and only then, inside a ``tf.cond``,
decodes: a refused input never reaches a decoder, so a 200 KB PNG announcing 40000x40000
pixels costs microseconds, not gigabytes. (``tf.debugging`` asserts would not do: in a
``tf.function`` nothing orders them before ``decode_image``.) The rules (magic bytes, caps,
BMP variants, the GIF/WebP walk bounds) come from ``components/images/checks.py``,
which applies the same ones with Pillow at ingestion. The probe and the EXIF reading, string
ops on the bytes, are ``components/images/image_header.py``; this module decodes and resizes.

- Accepted: JPEG, PNG, GIF (first frame, drawn on its canvas), BMP (uncompressed 24/32-bit)
  and WebP (still or the first frame of an animation; alpha dropped).
- Refused with the format named: HEIC/HEIF, AVIF, TIFF, JPEG XL, JPEG 2000, PSD, SVG, PDF.
- EXIF orientation (JPEG APP1 ``Exif``, PNG ``eXIf``, WebP ``EXIF``) is read with string ops
  and applied after decoding; a missing or broken EXIF block means upright. The pixel cap
  applies to the STORED dimensions.

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

from components.images.image_header import MAX_PIXELS, byte_length, header, int_bytes, orientation, probe, read_int

RESIZE_MODES = ("pad", "squash")


# ------------------------------------------------------------------------------ orientation
def apply_orientation(image, value):
    """Turns a stored (H, W, C) image upright for EXIF orientation ``value`` (1-8), as Pillow's
    ``ImageOps.exif_transpose`` does."""
    t = tf.image
    return tf.switch_case(tf.cast(value, tf.int32) - 1, [
        lambda: image, lambda: t.flip_left_right(image), lambda: t.rot90(image, 2),
        lambda: t.flip_up_down(image), lambda: t.transpose(image), lambda: t.rot90(image, 3),
        lambda: t.rot90(t.transpose(image), 2), lambda: t.rot90(image, 1)])


# ------------------------------------------------------------------------------ decoding
def _on_canvas(frame, x, y, width, height):
    """A (h, w, 3) first frame drawn at (x, y) on a black width x height canvas."""
    h, w = tf.cast(tf.shape(frame)[0], tf.int64), tf.cast(tf.shape(frame)[1], tf.int64)
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
    def still():
        return _webp_pixels(data)

    def first_frame():
        size = read_int(data, anmf + 4, 4, True)
        x, y = 2 * read_int(data, anmf + 8, 3, True), 2 * read_int(data, anmf + 11, 3, True)
        w, h = read_int(data, anmf + 14, 3, True) + 1, read_int(data, anmf + 17, 3, True) + 1
        body = tf.strings.substr(data, tf.minimum(anmf + 24, byte_length(data)), tf.maximum(size - 16, 0))
        has_alpha = tf.strings.substr(body, 0, 4) == b"ALPH"
        alpha_size = read_int(body, 4, 4, True)
        bitstream = tf.strings.substr(body, tf.where(has_alpha, tf.minimum(8 + alpha_size + alpha_size % 2,
                                                                          byte_length(body)), 0), 4)
        # Frame data is [ALPH] VP8 or VP8L, nothing else: never hand the decoder a nested animation.
        valid = tf.logical_or(tf.logical_and(has_alpha, bitstream == b"VP8 "),
                              tf.logical_and(tf.logical_not(has_alpha),
                                             tf.logical_or(bitstream == b"VP8 ", bitstream == b"VP8L")))
        check = tf.debugging.Assert(valid, ["WebP: the first animation frame is not ALPH+VP8, VP8 or VP8L"])
        vp8x = tf.strings.join([b"VP8X", int_bytes(tf.constant(10, tf.int64), 4), b"\x10\0\0\0",
                                int_bytes(w - 1, 3), int_bytes(h - 1, 3)])
        chunks = tf.where(has_alpha, tf.strings.join([vp8x, body]), body)
        riff = tf.strings.join([b"RIFF", int_bytes(tf.cast(tf.strings.length(chunks), tf.int64) + 4, 4),
                                b"WEBP", chunks])
        with tf.control_dependencies([check]):
            riff = tf.identity(riff)
        return _on_canvas(_webp_pixels(riff), x, y, width, height)

    return tf.cond(anmf >= 0, first_frame, still)


def _decode_checked(data, fmt, width, height, aux, aux2):
    def generic():
        return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)

    def jpeg():  # the accurate IDCT: the same pixels as Pillow's libjpeg-turbo (the default is the fast one)
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")

    image = tf.switch_case(tf.cast(fmt, tf.int32), [
        jpeg, generic, lambda: _decode_gif(data, width, height, aux, aux2), generic,
        lambda: _decode_webp(data, width, height, aux)])
    image.set_shape([None, None, 3])
    return apply_orientation(image, orientation(data, fmt))


def decode_rgb(data, max_pixels=MAX_PIXELS):
    """One encoded image (scalar string) -> upright (H, W, 3) uint8 RGB.

    Raises InvalidArgumentError (the probe's reason, or the decoder's) for empty, unknown,
    refused, truncated or over-the-cap input; over-the-cap input is never decoded.
    """
    data = tf.convert_to_tensor(data, tf.string)
    ok, message, fmt, width, height, aux, aux2 = probe(data, max_pixels)

    def refuse():
        with tf.control_dependencies([tf.debugging.Assert(ok, [message])]):
            return tf.zeros([0, 0, 3], tf.uint8)

    image = tf.cond(ok, lambda: _decode_checked(data, fmt, width, height, aux, aux2), refuse)
    image.set_shape([None, None, 3])
    return image


def upright_size(data):
    """(width, height) of the decoded, upright image (header dims, swapped for EXIF 5-8)."""
    ok, _, fmt, width, height, _, _ = header(data)
    swap = orientation(data, tf.maximum(fmt, 0)) >= 5
    return tf.where(swap, height, width), tf.where(swap, width, height)


_EAGER = {}


def decode_eager(data: bytes, max_pixels: int = MAX_PIXELS):
    """decode_rgb on one byte string, outside any graph (ingestion's check, tests): a numpy
    array, or tf.errors.InvalidArgumentError. The traced function is cached per cap."""
    if max_pixels not in _EAGER:
        _EAGER[max_pixels] = tf.function(lambda d: decode_rgb(d, max_pixels), autograph=False,
                                         input_signature=[tf.TensorSpec([], tf.string)])
    return _EAGER[max_pixels](tf.constant(data, tf.string)).numpy()


def resize(image, size, mode="pad"):
    """(H, W, 3) -> (size, size, 3) float32 in [0, 255].

    Args:
      mode: "pad" keeps the aspect ratio and pads with black; "squash" stretches to a square.
    """
    image = tf.cast(image, tf.float32)
    if mode == "pad":
        out = tf.image.resize_with_pad(image, size, size, method="bilinear", antialias=True)
    elif mode == "squash":
        out = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    else:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")
    return tf.clip_by_value(out, 0.0, 255.0)


def decode_batch(images, size, mode="pad", max_pixels=MAX_PIXELS):
    """A [B] (or [B, 1]) string tensor of encoded images -> (B, size, size, 3) float32."""
    flat = tf.reshape(images, [-1])
    return tf.map_fn(lambda b: resize(decode_rgb(b, max_pixels), size, mode), flat,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
