"""Image bytes read with TensorFlow string ops, before any decoder sees them: the byte reads,
the probe (format from the magic bytes, stored size from the header, the GIF and WebP walks,
the pixel cap) and the EXIF orientation. ``components.images.image_ops`` decodes what the probe
accepts; the rules come from ``components/images/checks.py`` (see image_ops's
docstring for the whole design).
"""
import tensorflow as tf
from tensorflow.python.ops import cond_v2  # lazy_case: the one switch tf.switch_case does not expose

from components.images import rules

MAX_PIXELS = rules.DEFAULT_MAX_PIXELS
MAX_BYTES = rules.DEFAULT_MAX_BYTES
_JPEG, _PNG, _GIF, _BMP, _WEBP = (rules.FORMATS.index(f) for f in ("jpeg", "png", "gif", "bmp", "webp"))
_HEAD = 64           # bytes of the file every sniff and header read looks at
_EXIF_CANDIDATES = 4  # PNG, WebP: occurrences of the EXIF marker examined (the first valid one wins)
_JPEG_MAX_STEPS = 256  # JPEG: marker segments (or skipped bytes) walked to find the EXIF APP1
_IFD_ENTRIES = 64     # IFD0 entries examined for the orientation tag
_BYTE = [bytes([i]) for i in range(256)]


def lazy_case(index, branches, name="lazy_case"):
    """``tf.switch_case(index, branches)`` (an index out of range takes the last branch) whose
    branches stay functions when the graph runs, instead of being inlined into one graph of
    switches. TensorFlow then instantiates a branch the first time it is taken: a process that
    only ever sees JPEGs never prepares the GIF walk or the WebP re-wrap, and each process's
    first request pays for the formats it meets, not for all of them (the other formats were
    most of the decoder's nodes).

    Every branch is still a function in the graph's library, and a loaded model's first request
    pays for each function there and each node in it, taken or not (1-2.3 ms a function,
    0.08-0.18 ms a node, by machine: benchmarks/first_request.py): a callable given for several
    indices becomes one function, the index mapped to it."""
    index = tf.cast(index, tf.int32)
    if tf.executing_eagerly():
        i = int(index)
        return branches[i if 0 <= i < len(branches) else -1]()
    unique = list(dict.fromkeys(branches))
    if len(unique) < len(branches):
        index = tf.gather(tf.constant([unique.index(b) for b in branches]),
                          tf.where((index >= 0) & (index < len(branches)), index, len(branches) - 1))
    return cond_v2.indexed_case(index, unique, name=name, lower_using_switch_merge=False)


# ------------------------------------------------------------------------------ byte reads
def byte_length(data):
    return tf.cast(tf.strings.length(data), tf.int64)


def _read(data, pos, length):
    """``length`` bytes of ``data`` from ``pos`` as an int64 vector, zero past the end."""
    pos = tf.clip_by_value(tf.cast(pos, tf.int64), 0, byte_length(data))
    if isinstance(length, int):  # constants, not casts (nodes: see lazy_case)
        length, fixed = tf.constant(length, tf.int64), tf.constant(length, tf.int32)
    else:
        length, fixed = tf.cast(length, tf.int64), tf.cast(length, tf.int32)
    return tf.cast(tf.io.decode_raw(tf.strings.substr(data, pos, length), tf.uint8, fixed_length=fixed), tf.int64)


def _weights(length, little_endian):
    """Place values of ``length`` bytes, so an integer is one multiply-and-sum, not a chain."""
    order = range(length) if little_endian else range(length - 1, -1, -1)
    return tf.constant([256 ** i for i in order], tf.int64)


def read_int(data, pos, length, little_endian):
    """The unsigned ``length``-byte integer of ``data`` at ``pos`` (zero past the end)."""
    return tf.reduce_sum(_read(data, pos, length) * _weights(length, little_endian))


def _place_values(n_bytes, places):
    """[n_bytes, fields]: each byte's place value in the field at ``places`` ((offset, length,
    little_endian) each) it belongs to, else 0. Bytes times this matrix are the fields."""
    matrix = [[0] * len(places) for _ in range(n_bytes)]
    for j, (offset, length, little_endian) in enumerate(places):
        for k in range(length):
            matrix[offset + k][j] = 256 ** (k if little_endian else length - 1 - k)
    return matrix


def _fields(raw, places):
    """The unsigned integers at fixed ``places`` ((offset, length, little_endian) each) of a
    byte vector of static length (or of each row of a matrix), as scalars (or vectors): one
    product with a ``_place_values`` matrix, not a slice (four nodes), a multiply and a sum per
    field (nodes a loaded model's first request pays for: lazy_case)."""
    matrix = tf.constant(_place_values(raw.shape[-1], places), tf.int64)
    if raw.shape.rank == 1:
        return tf.unstack(tf.linalg.matvec(matrix, raw, transpose_a=True), len(places))
    return tf.unstack(tf.linalg.matmul(raw, matrix), len(places), axis=-1)


def int_bytes(values, length):
    """The ``length``-byte little-endian encodings of int64 ``values`` ([K]), as [K] strings:
    every digit of every value in one divide, one modulo and one table lookup."""
    places = tf.constant([256 ** i for i in range(length)], tf.int64)
    digits = (tf.expand_dims(values, 1) // places) % 256
    return tf.strings.reduce_join(tf.gather(tf.constant(_BYTE), digits), axis=1)


def _has(head, offset, signature):
    return tf.strings.substr(head, offset, len(signature)) == signature


def _sniff(head_bytes, table):
    """Index in ``table`` of the first entry whose magic bytes match the head, else -1: every
    alternative of every entry compared at once against one [alternatives, _HEAD] table."""
    rows, owners = [], []
    for i, (_, alternatives) in enumerate(table):
        for alternative in alternatives:
            expected = [-1] * _HEAD  # -1: any byte
            for offset, signature in alternative:
                expected[offset:offset + len(signature)] = list(signature)
            rows.append(expected)
            owners.append(i)
    expected = tf.constant(rows, tf.int64)
    hit = tf.reduce_all((expected < 0) | tf.equal(expected, head_bytes), axis=1)
    first = tf.reduce_min(tf.where(hit, tf.constant(owners, tf.int32), len(table)))
    return tf.where(first < len(table), first, -1)


def _split(data, separator, maxsplit):
    """``tf.strings.split`` of a scalar string (its pieces, a vector), without the ragged
    tensor that wraps one string's pieces (some 25 nodes: see lazy_case)."""
    return tf.raw_ops.StringSplitV2(input=tf.reshape(data, [1]), sep=separator, maxsplit=maxsplit).values


def _is_svg(data):
    head = tf.strings.substr(data, 0, rules.SVG_WINDOW)
    stripped = tf.strings.strip(tf.strings.regex_replace(head, "^\ufeff", ""))  # a UTF-8 byte-order mark
    markup = tf.strings.substr(stripped, 0, 1) == "<"
    return tf.logical_and(markup, tf.size(_split(head, "<svg", 1)) > 1)


# ------------------------------------------------------------------------------ the probe
# A format's probe says (fields, message): fields = [ok, width, height, aux, aux2] as one int64
# vector, so choosing between two readings is two selects (the vector, the message), not one
# per field: each op is a node in every serving graph's library, and a loaded model's first
# request pays for every node there (see lazy_case).
def _refusal(message):
    return tf.zeros([5], tf.int64), message


def _ok(width, height, a=0, b=0):
    return tf.stack([tf.constant(1, tf.int64), *(tf.cast(v, tf.int64) for v in (width, height, a, b))]), ""


def _probe_jpeg(data, head, hb):
    shape = tf.io.extract_jpeg_shape(data, output_type=tf.int64)  # libjpeg's header read, no pixels
    height, width, _ = tf.unstack(shape, 3)
    return _ok(width, height)


def _choose(condition, if_true, if_false):
    """One of two probe results, both computed (fixed reads of the head, constants): a select,
    not a branch, because every branch function is instantiated again by each process's first
    request."""
    return tuple(tf.where(condition, a, b) for a, b in zip(if_true, if_false))


def _probe_png(data, head, hb):
    width, height = _fields(hb, ((16, 4, False), (20, 4, False)))
    return _choose(_has(head, 12, b"IHDR"), _ok(width, height), _refusal("PNG: first chunk is not IHDR"))


def _probe_bmp(data, head, hb):
    dib, width, height, bits, compression = _fields(hb, ((14, 4, True), (18, 4, True), (22, 4, True),
                                                         (28, 2, True), (30, 4, True)))
    width = tf.where(width >= 2 ** 31, width - 2 ** 32, width)
    height = tf.abs(tf.where(height >= 2 ** 31, height - 2 ** 32, height))  # < 0: top-down rows
    supported = tf.logical_and(tf.reduce_any(tf.equal(bits, rules.BMP_BITS)), compression == 0)
    by_pixels = _choose(supported, _ok(width, height), _refusal(tf.strings.format(
        "BMP with {} bits per pixel, compression {} is not supported (only uncompressed 24/32-bit): "
        "convert to PNG", (bits, compression))))
    return _choose(dib < rules.BMP_MIN_INFO_HEADER, _refusal(tf.strings.format(
        "BMP with a {}-byte info header (OS/2) is not supported: convert to PNG", dib)), by_pixels)


def _gif_walk(data, hb):
    """checks.gif_first_frame in graph ops: (state, end, x, y, w, h, descriptor offset); state 3 = found.
    Each step computes both readings of the byte at ``pos`` (a block introducer at the top
    level, a sub-block length inside a chain: bounded reads) and selects one, without a
    branch: every branch is a function in the serving graph's library, and the size of that
    library is what a freshly loaded model's first request pays for."""
    n = byte_length(data)
    flags, = _fields(hb, ((10, 1, True),))
    start = 13 + tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8), 0)
    top, ext, img, done, fail = (tf.constant(v, tf.int64) for v in range(5))

    def step(state, pos, x, y, w, h, desc_at):
        byte = read_int(data, pos, 1, True)  # the block introducer, or the sub-block's length
        # At the top level: an extension (0x21), an image descriptor (0x2C), or a failure.
        *box, packed = _fields(_read(data, pos + 1, 9), ((0, 2, True), (2, 2, True), (4, 2, True), (6, 2, True),
                                                          (8, 1, True)))  # x, y, w, h, flags
        table = tf.where(packed >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), packed % 8), 0)
        is_ext, is_img = byte == 0x21, (byte == 0x2C) & (pos + 10 <= n)
        top_state = tf.where(is_ext, ext, tf.where(is_img, img, fail))
        top_pos = tf.where(is_ext, pos + 2, tf.where(is_img, pos + 11 + table, pos))
        # In a chain of sub-blocks: skip a run of equal-length ones at once; length 0 ends it.
        window = _read(data, pos, (byte + 1) * rules.GIF_MAX_RUN)
        heads = tf.strided_slice(window, [0], [tf.size(window, out_type=tf.int64)], [byte + 1])
        within = pos + tf.range(tf.size(heads, out_type=tf.int64)) * (byte + 1) < n
        run = tf.maximum(tf.reduce_sum(tf.math.cumprod(tf.cast(tf.equal(heads, byte) & within, tf.int64))), 1)
        chain_state = tf.where(byte == 0, tf.where(state == img, done, top), state)
        chain_pos = tf.where(byte == 0, pos + 1, pos + run * (byte + 1))
        at_top, past_end = state == top, pos >= n
        found = at_top & is_img & tf.logical_not(past_end)
        return (tf.where(past_end, fail, tf.where(at_top, top_state, chain_state)),
                tf.where(past_end, pos, tf.where(at_top, top_pos, chain_pos)),
                *(tf.where(found, new, old) for new, old in zip(box, (x, y, w, h))),
                tf.where(found, pos, desc_at))

    zero = tf.constant(0, tf.int64)
    return tf.while_loop(lambda state, *_: state < done, step, (top, start, zero, zero, zero, zero, zero),
                         maximum_iterations=rules.GIF_MAX_STEPS)


def _probe_gif(data, head, hb):
    state, end, x, y, w, h, desc_at = _gif_walk(data, hb)
    found = tf.logical_and(tf.logical_and(state == 3, end <= byte_length(data)), w * h > 0)
    screen_w, screen_h = _fields(hb, ((6, 2, True), (8, 2, True)))
    return _choose(found, _ok(tf.maximum(screen_w, x + w), tf.maximum(screen_h, y + h), end, desc_at),
                   _refusal("GIF: no complete first frame (truncated, unknown block, or data "
                            f"split into irregular sub-blocks: more than {rules.GIF_MAX_STEPS} steps)"))


def _first_anmf(data, animated=True):
    """Offset of the first ANMF chunk after VP8X (checks.webp_info's walk), or -1 (at once
    when ``animated`` is False)."""
    n = byte_length(data)

    def step(pos, found):
        fourcc = tf.strings.substr(data, tf.minimum(pos, n), 4)
        hit = tf.logical_and(fourcc == b"ANMF", pos + 8 <= n)
        size = read_int(data, pos + 4, 4, True)
        return tf.where(hit, pos, pos + 8 + size + size % 2), tf.where(hit, pos, found)

    _, found = tf.while_loop(lambda pos, found: animated & (found < 0) & (pos + 8 <= n), step,
                             (tf.constant(30, tf.int64), tf.constant(-1, tf.int64)),
                             maximum_iterations=rules.WEBP_MAX_CHUNKS)
    return found


def frame_box(data, anmf):
    """An animation frame's (x, y, w, h) on the canvas, from its ANMF header at ``anmf``."""
    x, y, w, h = _fields(_read(data, anmf + 8, 12), tuple((i, 3, True) for i in range(0, 12, 3)))
    return 2 * x, 2 * y, w + 1, h + 1


def frame_has_alpha(data, anmf):
    return tf.strings.substr(data, tf.clip_by_value(anmf + 24, 0, byte_length(data)), 4) == b"ALPH"


def first_frame_layout(data, anmf):
    """An animation's first frame: (x, y, w, h) from its ANMF header, whether an ALPH chunk
    comes first, and the fourcc and size its bitstream's own header gives."""
    x, y, w, h = frame_box(data, anmf)
    body = anmf + 24
    has_alpha = frame_has_alpha(data, anmf)
    alpha_size = read_int(data, body + 4, 4, True)
    bitstream = body + tf.where(has_alpha, 8 + alpha_size + alpha_size % 2, 0)
    # The fourcc, the size, then VP8's frame tag, start code and sizes, or VP8L's signature and bits.
    bits, vp8_w, vp8_h = _fields(_read(data, bitstream, 18), ((9, 4, True), (14, 2, True), (16, 2, True)))
    fourcc = tf.strings.substr(data, tf.clip_by_value(bitstream, 0, byte_length(data)), 4)
    vp8l = fourcc == b"VP8L"
    stream_w = tf.where(vp8l, bits % 16384 + 1, vp8_w % 16384)
    stream_h = tf.where(vp8l, (bits // 16384) % 16384 + 1, vp8_h % 16384)
    return x, y, w, h, has_alpha, fourcc, stream_w, stream_h


def _first_frame_fits(data, anmf, width, height):
    """(ok, message): the first frame is [ALPH] VP8 or VP8L, its box fits the canvas and its
    bitstream says the box's size (checks.webp_first_frame). Checked from the headers before
    any decoder runs: a 1x1 animation may carry a 34-byte 16383x16383 frame."""
    x, y, w, h, has_alpha, fourcc, stream_w, stream_h = first_frame_layout(data, anmf)
    kind_ok = (fourcc == b"VP8 ") | ((fourcc == b"VP8L") & tf.logical_not(has_alpha))
    fits = (x + w <= width) & (y + h <= height) & (stream_w == w) & (stream_h == h)
    message = tf.where(kind_ok, tf.strings.format(
        "WebP: the first frame ({}x{} at {},{}, its bitstream {}x{}) does not fit the {}x{} canvas",
        (w, h, x, y, stream_w, stream_h, width, height)),
        "WebP: the first animation frame is not ALPH+VP8, VP8 or VP8L")
    return kind_ok & fits, message


def _probe_webp(data, head, hb):
    """Every reading (VP8, VP8L, VP8X: fixed reads of the head, and the ANMF walk, which takes
    no step unless the VP8X header says animated) computed and one selected: no branch
    functions in the serving graph's library (see _gif_walk)."""
    vp8_w, vp8_h, bits, width, height = _fields(hb, ((26, 2, True), (28, 2, True), (21, 4, True),
                                                     (24, 3, True), (27, 3, True)))
    vp8 = _choose(_has(head, 23, b"\x9d\x01\x2a"), _ok(vp8_w % 16384, vp8_h % 16384, -1),
                  _refusal("WebP: VP8 frame without its start code"))
    vp8l = _choose(hb[20] == 0x2F, _ok(bits % 16384 + 1, (bits // 16384) % 16384 + 1, -1),
                   _refusal("WebP: VP8L bitstream without its signature"))
    chunk = tf.strings.substr(head, 12, 4)
    width, height = width + 1, height + 1
    animated = tf.bitwise.bitwise_and(hb[20], 2) > 0
    anmf = _first_anmf(data, animated & (chunk == b"VP8X"))
    frame_ok, frame_message = _first_frame_fits(data, anmf, width, height)
    vp8x = _choose(tf.logical_and(animated, anmf < 0),
                   _refusal(f"WebP: animation without a frame in its first {rules.WEBP_MAX_CHUNKS} chunks"),
                   _choose(tf.logical_or(anmf < 0, frame_ok), _ok(width, height, anmf), _refusal(frame_message)))
    other = _refusal("WebP: first chunk is not VP8, VP8L or VP8X")
    by_chunk = _choose(chunk == b"VP8 ", vp8, _choose(chunk == b"VP8L", vp8l, _choose(chunk == b"VP8X", vp8x, other)))
    return _choose(tf.strings.length(data) < 30, _refusal("WebP: header cut short"), by_chunk)


def _probe_other(data, head, hb):
    refused = _sniff(hb, rules.REFUSED_MAGIC)
    names = tf.constant([rules.UNSUPPORTED.format(name) for name, _ in rules.REFUSED_MAGIC]
                        + [rules.UNSUPPORTED.format("SVG"), rules.NOT_AN_IMAGE])
    index = tf.where(refused >= 0, refused,
                     tf.where(_is_svg(data), len(rules.REFUSED_MAGIC), len(rules.REFUSED_MAGIC) + 1))
    return _refusal(tf.gather(names, index))


def header(data):
    """(ok, message, format index, width, height, aux, aux2) from the header alone, no cap."""
    data = tf.convert_to_tensor(data, tf.string)
    head = tf.strings.join([tf.strings.substr(data, 0, _HEAD), b"\0" * _HEAD])  # fixed reads never fail
    hb = tf.cast(tf.io.decode_raw(head, tf.uint8, fixed_length=_HEAD), tf.int64)
    fmt = _sniff(hb, rules.MAGIC)
    branches = [_probe_jpeg, _probe_png, _probe_gif, _probe_bmp, _probe_webp, _probe_other]
    fields, message = lazy_case(
        tf.where(fmt >= 0, fmt, len(branches) - 1),
        [lambda f=f: f(data, head, hb) for f in branches], name="probe_format")
    ok, width, height, aux, aux2 = tf.unstack(fields, 5)
    ok = ok > 0
    sized = tf.minimum(width, height) > 0
    message = tf.where(tf.logical_and(ok, tf.logical_not(sized)),
                       tf.strings.format("header says {}x{}", (width, height)), message)
    empty = tf.strings.length(data) == 0
    return (ok & sized & tf.logical_not(empty), tf.where(empty, "empty image bytes", message),
            fmt, width, height, aux, aux2)


def jpeg_scale(width, height, min_size):
    """libjpeg's scale denominator for a JPEG of ``width`` x ``height`` going to a model that
    sees ``min_size`` pixels a side: the largest of 1, 2, 4, 8 whose decode (ceil(side / d), as
    libjpeg sizes its output) keeps the short side >= ``min_size`` (``rules.decoded_size`` in
    Python). 1 when ``min_size`` is None."""
    if min_size is None:
        return tf.constant(1, tf.int64)
    scales = tf.constant(rules.JPEG_SCALES, tf.int64)
    fits = (tf.minimum(width, height) + scales - 1) // scales >= min_size
    return tf.reduce_max(tf.where(fits, scales, 1))


def probe(data, max_pixels=MAX_PIXELS, min_size=None, max_bytes=MAX_BYTES):
    """What the header says, without decoding: (ok, message, format index, width, height, aux,
    aux2, scale).

    ``ok`` is False for empty, unknown, refused, malformed or over-the-cap input (more than
    ``max_bytes`` bytes, ingestion's cap and message, or too many pixels), with ``message``
    saying why. Width and height are the STORED ones (canvas for GIF and animated
    WebP). ``aux`` is the end of a GIF's first frame or the offset of an animated WebP's first
    ANMF chunk (-1 for a still); ``aux2`` is the offset of a GIF's first image descriptor.
    ``scale`` is the JPEG decode's denominator for a model input of ``min_size`` (``jpeg_scale``;
    1 for every other format): the pixel cap applies to what is decoded, ceil(side / scale).
    """
    ok, message, fmt, width, height, aux, aux2 = header(data)
    scale = tf.where(fmt == _JPEG, jpeg_scale(width, height, min_size), 1)
    w, h = (width + scale - 1) // scale, (height + scale - 1) // scale
    # w * h > max_pixels, without the product (two 32-bit PNG sides overflow int64).
    over = tf.logical_and(ok, w > max_pixels // tf.maximum(h, 1))
    text = tf.strings.format("image is {}x{} pixels, over the pixel cap of {}", (width, height, max_pixels))
    if min_size is not None:
        text = tf.where(scale > 1, tf.strings.format(
            "image is {}x{} pixels ({}x{} decoded at 1/{}), over the pixel cap of {}",
            (width, height, w, h, scale, max_pixels)), text)
    message = tf.where(over, text, message)
    n = byte_length(data)
    too_long = n > max_bytes  # checks.inspect_image's first cap, with its words
    message = tf.where(too_long, tf.strings.format("{} bytes > max_bytes {}", (n, max_bytes)), message)
    return ok & tf.logical_not(over) & tf.logical_not(too_long), message, fmt, width, height, aux, aux2, scale


def header_size(data):
    """(width, height) stored in the header (the order of checks.header_size and Pillow's
    ``size``), -1 for bytes the decoder refuses whatever their size. A JPEG whose header
    libjpeg cannot read raises InvalidArgumentError instead."""
    ok, _, _, width, height, _, _ = header(data)
    return tf.where(ok, width, -1), tf.where(ok, height, -1)


# ------------------------------------------------------------------------------ EXIF
def _ints_ordered(raw, little_endian):
    """The unsigned integers of the last axis of a byte tensor, in the byte order a boolean
    tensor gives (a TIFF header's): one read, no branch."""
    n = raw.shape[-1]
    return tf.reduce_sum(raw * tf.where(little_endian, _weights(n, True), _weights(n, False)), axis=-1)


# An IFD entry's fields ((offset, length) in its 12 bytes): tag, type, count, and its value read
# as a SHORT and as a LONG. As columns of a place-value matrix per byte order, so all 64 entries'
# fields are one matrix product (fewer ops on every image, fewer nodes in every graph).
_IFD_FIELDS = ((0, 2), (2, 2), (4, 4), (8, 2), (8, 4))


def _field_matrix(little_endian):
    """[12 bytes, fields] for an IFD entry in one byte order (``_place_values``)."""
    return _place_values(12, [(offset, length, little_endian) for offset, length in _IFD_FIELDS])


def _tiff_orientation(data, tiff, end):
    """The orientation tag of the TIFF structure at ``tiff`` (ending at ``end``), 1 if absent/broken.
    Both byte orders are read by one set of ops (weights chosen by the header's), not in two
    branches: every op and branch function is paid again by each process's first request."""
    order = tf.strings.substr(data, tf.clip_by_value(tiff, 0, byte_length(data)), 4)
    little, big = order == b"II*\x00", order == b"MM\x00*"
    ifd = tiff + _ints_ordered(_read(data, tiff + 4, 4), little)
    block = _read(data, ifd, 2 + 12 * _IFD_ENTRIES)  # the entry count, then the entries
    count = _ints_ordered(block[:2], little)
    fields = tf.linalg.matmul(tf.reshape(block[2:], [_IFD_ENTRIES, 12]),
                              tf.where(little, tf.constant(_field_matrix(True), tf.int64),
                                       tf.constant(_field_matrix(False), tf.int64)))
    tag, kind, n, short, long = tf.unstack(fields, axis=1)
    value = tf.where(kind == 3, short, long)
    # Pillow's reading: a SHORT with its value(s) inline (count 1 or 2: the first), or one LONG.
    hit = (tf.range(_IFD_ENTRIES, dtype=tf.int64) < count) & (tag == 0x0112) & (
        ((kind == 3) & (n >= 1) & (n <= 2)) | ((kind == 4) & (n == 1)))
    first = tf.argmax(tf.cast(hit, tf.int32), output_type=tf.int64)
    fits = (little | big) & (ifd >= tiff + 8) & (ifd + 2 + 12 * count <= end) & tf.reduce_any(hit)
    v = tf.where(fits, tf.gather(value, first), 1)
    return tf.where((v >= 1) & (v <= 8), v, 1)


def _read_many(data, positions, length):
    """``length`` bytes of ``data`` at each of ``positions`` ([K] int64) -> [K, length] int64."""
    positions = tf.clip_by_value(positions, 0, byte_length(data))
    return tf.cast(tf.io.decode_raw(tf.strings.substr(data, positions, tf.fill(tf.shape(positions), tf.constant(length, tf.int64))),
                                    tf.uint8, fixed_length=length), tf.int64)


def _occurrences(data, chunk_type):
    """Offsets of the first _EXIF_CANDIDATES occurrences of a 4-byte ``chunk_type`` (a string
    tensor) in ``data``, -1 past them."""
    pieces = _split(data, chunk_type, _EXIF_CANDIDATES)
    lengths = tf.cast(tf.strings.length(pieces[:-1]), tf.int64)
    positions = tf.math.cumsum(lengths) + tf.range(tf.size(lengths, out_type=tf.int64)) * 4
    return tf.concat([positions, tf.fill([_EXIF_CANDIDATES], tf.constant(-1, tf.int64))], 0)[:_EXIF_CANDIDATES]


def _first_valid(data, start, end, valid):
    """(data, start, end, found) of the first candidate that is valid and fits in ``data``."""
    valid = valid & (end <= byte_length(data)) & (start + 8 <= end)
    first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    return data, tf.gather(start, first), tf.gather(end, first), tf.reduce_any(valid)


def _jpeg_exif(data):
    """The first APP1 segment starting "Exif\\0\\0", found as Pillow finds it: by walking the
    marker segments from the start of image to the first SOS (fill bytes, markers without a
    length and junk between segments skipped alike). Only segment headers are read, never
    the pixels, and a string that merely looks like EXIF inside another segment (a comment)
    is never taken for it. At most ``_JPEG_MAX_STEPS`` steps (a segment or a skipped byte)."""
    n = byte_length(data)
    magic = int.from_bytes(b"Exif\0\0", "big")

    def step(pos, found, done):
        # The marker, its length, and the first 6 bytes of the payload.
        first, code, length, payload = _fields(_read(data, pos, 10), ((0, 1, True), (1, 1, True), (2, 2, False),
                                                                      (4, 6, False)))
        is_marker = first == 0xFF
        # Pillow's marker table: C8, D0-D9 and F0-FD carry no length; 01-BF are not markers.
        bare = (code == 0xC8) | ((code >= 0xD0) & (code <= 0xD9)) | ((code >= 0xF0) & (code <= 0xFD))
        segment = is_marker & (code >= 0xC0) & (code < 0xFF) & tf.logical_not(bare)
        exif = segment & (code == 0xE1) & (length >= 8) & (payload == magic)
        stop = exif | (pos + 4 > n) | (is_marker & ((code == 0xDA) | ((code > 0) & (code < 0xC0))))
        one, two = tf.constant(1, tf.int64), tf.constant(2, tf.int64)
        skip = tf.where(tf.logical_not(is_marker) | (code == 0xFF), one, tf.where(segment, 2 + tf.maximum(length, 2), two))
        return tf.where(stop, pos, pos + skip), exif, stop

    pos, found, _ = tf.while_loop(lambda pos, found, done: tf.logical_not(done), step,
                                  (tf.constant(2, tf.int64), tf.constant(False), tf.constant(False)),
                                  maximum_iterations=_JPEG_MAX_STEPS)
    start, end = pos + 10, pos + 2 + read_int(data, pos + 2, 2, False)
    return data, start, end, found & (end <= n) & (start + 8 <= end)


def _chunk_exif(data, webp):
    """PNG's eXIf chunk, anywhere (it may follow the image data), or when ``webp`` an extended
    (VP8X) WebP's EXIF chunk (by the format after the image data). One reader for both, as
    the two differ only in the marker, where the length is and its byte order, and WebP's
    optional "Exif\\0\\0" prefix."""
    p = _occurrences(data, tf.where(webp, "EXIF", "eXIf"))
    # From 4 bytes before the marker: PNG's length (big-endian), the marker, WebP's length
    # (little-endian), then where WebP's prefix would be.
    png_length, webp_length, prefix = _fields(_read_many(data, p - 4, 18),
                                              ((0, 4, False), (8, 4, True), (12, 6, False)))
    prefixed = prefix == int.from_bytes(b"Exif\0\0", "big")
    start = p + tf.where(webp, tf.where(prefixed, tf.constant(14, tf.int64), 8), 4)
    end = p + tf.where(webp, 8 + webp_length, 4 + png_length)
    valid = tf.where(webp, (p >= 30) & (tf.strings.substr(data, 12, 4) == b"VP8X"), p >= 12)
    return _first_valid(data, start, end, valid)


def orientation(data, fmt):
    """EXIF orientation 1-8 of an encoded image in format ``fmt`` (a ``rules.FORMATS`` index);
    1 when there is no EXIF block, no tag, or anything inconsistent."""
    zero = tf.constant(0, tf.int64)

    def none():
        return data, zero, zero, tf.constant(False)

    chunk = lambda: _chunk_exif(data, fmt == _WEBP)  # noqa: E731  (one function for PNG and WebP)
    readers = {_JPEG: lambda: _jpeg_exif(data), _PNG: chunk, _WEBP: chunk}
    source, tiff, end, found = lazy_case(  # an unknown format (-1) takes the last branch: none
        fmt, [readers.get(i, none) for i in range(len(rules.FORMATS))] + [none], name="exif_format")
    # Read whether found or not (a few hundred bytes at clipped offsets), then chosen: no branch.
    return tf.where(found, _tiff_orientation(source, tiff, end), tf.constant(1, tf.int64))
