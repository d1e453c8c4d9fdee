"""Image decoding in TensorFlow ops, shared by the Transform graph and the serving signatures.

One function decodes for training, evaluation and serving, so the three can never disagree.
Bad bytes raise InvalidArgumentError (never a crash or a hang): empty input, bytes that are
no image, truncated data, and images whose header claims more pixels than the cap — the last
checked from the header BEFORE decoding, so a tiny file announcing 60000x60000 pixels costs
nothing.
"""
import tensorflow as tf

DEFAULT_MAX_PIXELS = 40_000_000
RESIZE_MODES = ("pad", "squash")


def _uint(data, offset, length, little_endian):
    """Unsigned integer of `length` (2 or 4) bytes at `offset` of a scalar string."""
    raw = tf.io.decode_raw(tf.strings.substr(data, offset, length), tf.uint8)
    raw = tf.cast(raw, tf.int64)
    if little_endian:
        raw = raw[::-1]
    value = tf.constant(0, tf.int64)
    for i in range(length):
        value = value * 256 + raw[i]
    return value


def header_size(data):
    """(height, width) from the header of a JPEG, PNG, GIF or BMP, without decoding pixels.

    Returns (-1, -1) for bytes that are too short or of another format (decoding then
    raises its own error)."""
    n = tf.strings.length(data)
    head = tf.strings.substr(data, 0, 4)

    def png():  # IHDR: width, height as big-endian uint32 at bytes 16 and 20
        return _uint(data, 20, 4, False), _uint(data, 16, 4, False)

    def gif():  # logical screen: little-endian uint16 at bytes 6 and 8
        return _uint(data, 8, 2, True), _uint(data, 6, 2, True)

    def bmp():  # BITMAPINFOHEADER: little-endian int32 at 18 and 22 (height may be negative)
        h = _uint(data, 22, 4, True)
        h = tf.where(h >= 2 ** 31, 2 ** 32 - h, h)
        return h, _uint(data, 18, 4, True)

    def jpeg():
        shape = tf.io.extract_jpeg_shape(data, output_type=tf.int64)
        return shape[0], shape[1]

    def unknown():
        return tf.constant(-1, tf.int64), tf.constant(-1, tf.int64)

    is_jpeg = tf.logical_and(n >= 4, tf.strings.substr(data, 0, 2) == b"\xff\xd8")
    is_png = tf.logical_and(n >= 24, head == b"\x89PNG")
    is_gif = tf.logical_and(n >= 10, tf.strings.substr(data, 0, 3) == b"GIF")
    is_bmp = tf.logical_and(n >= 26, tf.strings.substr(data, 0, 2) == b"BM")
    return tf.case([(is_png, png), (is_gif, gif), (is_bmp, bmp), (is_jpeg, jpeg)], default=unknown,
                   exclusive=False)


def decode_rgb(data, max_pixels=DEFAULT_MAX_PIXELS):
    """One encoded image (scalar string) -> (H, W, 3) uint8 RGB.

    JPEG, PNG (8 or 16 bit, grey, RGBA), GIF (first frame) and BMP. Raises
    InvalidArgumentError for empty, unknown, truncated or over-the-cap input."""
    data = tf.convert_to_tensor(data, tf.string)
    tf.debugging.assert_greater(tf.strings.length(data), 0, message="empty image bytes")
    height, width = header_size(data)
    tf.debugging.assert_greater(height * width, tf.constant(0, tf.int64),
                                message="not a JPEG, PNG, GIF or BMP image (unreadable header)")
    tf.debugging.assert_less_equal(height * width, tf.constant(max_pixels, tf.int64),
                                   message=f"image exceeds the pixel cap of {max_pixels} pixels")
    with tf.control_dependencies([height]):
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


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


def decode_batch(images, size, mode="pad", max_pixels=DEFAULT_MAX_PIXELS):
    """A [B] (or [B, 1]) string tensor of encoded images -> (B, size, size, 3) float32."""
    flat = tf.reshape(images, [-1])
    return tf.map_fn(lambda b: resize(decode_rgb(b, max_pixels), size, mode), flat,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
