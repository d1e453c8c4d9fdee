"""Per-file image validation for ImageExampleGen (plain Python: Pillow, optionally TensorFlow).

The rules it applies (the byte and pixel caps, the magic bytes of the accepted and of the
recognised-but-refused formats, the BMP variants TensorFlow decodes correctly, the bounds of
the GIF/WebP first-frame walk) live in ``rules``, which the graph decoder (``image_ops``)
reads too, so ingestion and serving accept exactly the same byte strings (a property test
runs the test corpus through both).

The checks run in a fixed order, cheapest and safest first, so that a hostile file is refused
before anything expensive or memory-hungry happens to it:

1. size: empty, or more than ``max_bytes``;
2. format: the content's magic bytes must be JPEG, PNG, GIF, BMP or WebP (the file name is
   ignored, so a PNG named ``.jpg`` is a PNG and an HTML page named ``.jpg`` is not an image).
   HEIC/HEIF, AVIF, TIFF, JPEG XL, JPEG 2000, PSD, SVG and PDF are recognised and refused
   with their name (``unsupported_format``: "HEIC is not supported: convert to JPEG"), and
   so are BMP variants TensorFlow would decode wrongly (palette, 16-bit, compressed);
3. dimensions: parsed here from the format's own header (JPEG SOF, PNG IHDR, GIF logical
   screen and first frame, BMP info header, WebP VP8/VP8L/VP8X) and compared with
   ``max_pixels`` BEFORE Pillow sees the bytes. These are the STORED dimensions (before any
   EXIF rotation); for GIF and animated WebP, the canvas the first frame is drawn on;
4. a full decode of the first frame: truncation, corrupt zlib or LZW streams and the like
   show up only here. With ``tf_check`` (what the executor does) the decode is the graph
   decoder itself (``components.images.image_ops.decode_rgb``), the function the Transform and the
   serving signatures run: its verdict is the verdict, so ingestion accepts exactly what
   serving accepts. Two decoders differ on corrupt compressed data (libwebp's animation
   decoder in Pillow reads every frame, giflib and Pillow tolerate different LZW errors),
   so Pillow's decode is only the plain-Python approximation (``tf_check=False``, the CLI's
   scans); it also requires a PNG's closing IEND chunk, which libpng reads.

Accepted files keep their original bytes: decoding for the model is the Transform's job,
and it applies the EXIF orientation (JPEG APP1, PNG eXIf, WebP EXIF) in the graph, exactly
as serving does. ``ImageInfo.orientation`` is Pillow's reading of the tag, for the report.

Reason codes (``Rejected.reason``), stable for reports and tests:

    empty, too_many_bytes, not_an_image, unsupported_format, bad_header, too_many_pixels,
    decode_failed
    (plus the file-level codes of ``inputs``: missing, unreadable, outside_root, no_label,
    not_followed, bad_manifest_row, duplicate_id)
"""
from __future__ import annotations

import io
import re
import struct
from typing import NamedTuple, Optional

from PIL import Image

from components.images.rules import (BMP_BITS, BMP_MIN_INFO_HEADER, FORMATS, GIF_MAX_RUN, GIF_MAX_STEPS,
                                     MAGIC, NOT_AN_IMAGE, REFUSED_MAGIC, SVG_WINDOW, UNSUPPORTED,
                                     WEBP_MAX_CHUNKS, decoded_size)

_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4 (DHT),
# C8 (reserved) and CC (DAC) share the range but carry no dimensions.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_EXIF_ORIENTATION = 0x0112
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its (fixed) CRC


class Rejected(Exception):
    """A file that must not be emitted, with a stable reason code and a readable detail.

    Args:
      reason: one of the reason codes in the module docstring.
      detail: what exactly was wrong, for a human reading the report.
      format: the sniffed format, if it got that far.
      width: the header width, if it got that far.
      height: the header height, if it got that far.
    """

    def __init__(self, reason: str, detail: str, format: Optional[str] = None,  # noqa: A002
                 width: Optional[int] = None, height: Optional[int] = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
        self.format, self.width, self.height = format, width, height


class ImageInfo(NamedTuple):
    """What the checks learnt about an accepted file."""
    format: str
    width: int
    height: int
    orientation: int  # EXIF orientation tag (Pillow's reading), 1 when absent; the graph applies it


def _matches(data: bytes, alternatives) -> bool:
    return any(all(data[off:off + len(sig)] == sig for off, sig in alt) for alt in alternatives)


def sniff_format(data: bytes) -> Optional[str]:
    """The accepted format from the content's magic bytes (one of ``FORMATS``), else None."""
    return next((fmt for fmt, alternatives in MAGIC if _matches(data, alternatives)), None)


def refused_format(data: bytes) -> Optional[str]:
    """The name of a recognised but refused format ("HEIC", "AVIF", "TIFF", "SVG", ...), else None."""
    name = next((name for name, alternatives in REFUSED_MAGIC if _matches(data, alternatives)), None)
    if name is None and is_svg(data):
        name = "SVG"
    return name


def is_svg(data: bytes) -> bool:
    """Markup whose first ``SVG_WINDOW`` bytes contain ``<svg`` (the rule the graph applies)."""
    head = data[:SVG_WINDOW]
    return head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\n\r\f\v").startswith(b"<") and b"<svg" in head


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:  # extraneous bytes: skipped to the next marker, as libjpeg and Pillow do
            pos += 1
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        (seglen,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if seglen < 2:
            raise Rejected("bad_header", f"JPEG: segment length {seglen} at byte {pos}", "jpeg")
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + seglen  # APPn (EXIF thumbnails included) and tables are skipped whole
    raise Rejected("bad_header", "JPEG: no frame header (SOF) before the image data", "jpeg")


class GifFrame(NamedTuple):
    """Where the first frame of a GIF is: its rectangle, the canvas and the end of its data."""
    x: int
    y: int
    width: int
    height: int
    canvas_width: int   # max(logical screen, frame's right edge): what Pillow and the graph draw on
    canvas_height: int
    end: int            # offset just past the first frame's block terminator


def gif_first_frame(data: bytes) -> GifFrame:
    """Walks a GIF to the end of its first frame, step by step as the graph decoder does.

    Raises:
      Rejected: ``bad_header`` when the walk finds no complete first frame within
        ``GIF_MAX_STEPS`` steps (unknown block, trailer first, truncated data).
    """
    n = len(data)
    if n < 13:
        raise Rejected("bad_header", "GIF: header cut short", "gif")
    screen_w, screen_h = struct.unpack("<HH", data[6:10])
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    state, frame = "top", None  # top: between blocks; ext / img: in a sub-block chain
    for _ in range(GIF_MAX_STEPS):
        if pos >= n:
            raise Rejected("bad_header", "GIF: data ends before the first frame does", "gif")
        if state == "top":
            block = data[pos]
            if block == 0x21:
                pos, state = pos + 2, "ext"
            elif block == 0x2C:
                if pos + 10 > n:
                    raise Rejected("bad_header", "GIF: data ends before the first frame does", "gif")
                frame = struct.unpack("<HHHH", data[pos + 1:pos + 9])
                flags = data[pos + 9]
                pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1  # + LZW code size
                state = "img"
            else:
                what = "the trailer" if block == 0x3B else f"an unknown block 0x{block:02x}"
                raise Rejected("bad_header", f"GIF: {what} before any frame", "gif")
            continue
        length = data[pos]
        if length == 0:  # block terminator
            pos += 1
            if state == "img":
                if pos > n:
                    break
                x, y, w, h = frame
                if w == 0 or h == 0:
                    raise Rejected("bad_header", f"GIF: first frame is {w}x{h}", "gif")
                return GifFrame(x, y, w, h, max(screen_w, x + w), max(screen_h, y + h), pos)
            state = "top"
            continue
        run = 1  # a run of sub-blocks of the same length, at most GIF_MAX_RUN
        while run < GIF_MAX_RUN and pos + run * (length + 1) < n and data[pos + run * (length + 1)] == length:
            run += 1
        pos += run * (length + 1)
    raise Rejected("bad_header", f"GIF: first frame not complete within {GIF_MAX_STEPS} steps "
                   "(truncated, or data split into irregular sub-blocks)", "gif")


class WebPInfo(NamedTuple):
    """A WebP file's canvas and, for an animation, where its first frame's chunk starts."""
    width: int
    height: int
    animated: bool
    first_frame: Optional[int]  # offset of the first ANMF chunk (animations only)


def webp_first_frame(data: bytes, anmf: int, width: int, height: int) -> None:
    """Checks an animation's first frame from its headers, as the graph's probe does: it is
    [ALPH] VP8 or VP8L, its box fits the width x height canvas and its bitstream says the
    box's size (a 1x1 animation may carry a 34-byte 16383x16383 frame).

    Raises:
      Rejected: ``bad_header``, with the graph's message.
    """
    def le(at, n):  # zero past the end, as the graph's reads
        return int.from_bytes(data[at:at + n].ljust(n, b"\0"), "little") if at >= 0 else 0

    x, y, w, h = 2 * le(anmf + 8, 3), 2 * le(anmf + 11, 3), le(anmf + 14, 3) + 1, le(anmf + 17, 3) + 1
    body = anmf + 24
    has_alpha = data[body:body + 4] == b"ALPH"
    alpha_size = le(body + 4, 4)
    stream = body + (8 + alpha_size + alpha_size % 2 if has_alpha else 0)
    fourcc = data[stream:stream + 4]
    if not (fourcc == b"VP8 " or (fourcc == b"VP8L" and not has_alpha)):
        raise Rejected("bad_header", "WebP: the first animation frame is not ALPH+VP8, VP8 or VP8L", "webp")
    if fourcc == b"VP8L":
        bits = le(stream + 9, 4)
        stream_w, stream_h = bits % 16384 + 1, (bits // 16384) % 16384 + 1
    else:
        stream_w, stream_h = le(stream + 14, 2) % 16384, le(stream + 16, 2) % 16384
    if not (x + w <= width and y + h <= height and (stream_w, stream_h) == (w, h)):
        raise Rejected("bad_header", f"WebP: the first frame ({w}x{h} at {x},{y}, its bitstream "
                       f"{stream_w}x{stream_h}) does not fit the {width}x{height} canvas", "webp")


def webp_info(data: bytes) -> WebPInfo:
    """Canvas size of a WebP (VP8, VP8L or VP8X) and its first animation frame, as the graph reads them.

    Raises:
      Rejected: ``bad_header`` when the first chunk is none of the three or is cut short, an
        animation has no ANMF chunk among its first ``WEBP_MAX_CHUNKS`` chunks, or its first
        frame does not fit (``webp_first_frame``).
    """
    if len(data) < 30:
        raise Rejected("bad_header", "WebP: header cut short", "webp")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise Rejected("bad_header", "WebP: VP8 frame without its start code", "webp")
        width, height = (v & 0x3FFF for v in struct.unpack("<HH", data[26:30]))
        return WebPInfo(width, height, False, None)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise Rejected("bad_header", "WebP: VP8L bitstream without its signature", "webp")
        (bits,) = struct.unpack("<I", data[21:25])
        return WebPInfo((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, False, None)
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        if not data[20] & 0x02:
            return WebPInfo(width, height, False, None)
        pos = 30
        for _ in range(WEBP_MAX_CHUNKS):
            if pos + 8 > len(data):
                break
            if data[pos:pos + 4] == b"ANMF":
                webp_first_frame(data, pos, width, height)
                return WebPInfo(width, height, True, pos)
            (size,) = struct.unpack("<I", data[pos + 4:pos + 8])
            pos += 8 + size + (size & 1)
        raise Rejected("bad_header", f"WebP: animation without a frame in its first {WEBP_MAX_CHUNKS} chunks",
                       "webp")
    raise Rejected("bad_header", f"WebP: first chunk is {chunk!r}, not VP8, VP8L or VP8X", "webp")


def _bmp_size(data: bytes) -> tuple[int, int]:
    (dib,) = struct.unpack("<I", data[14:18])
    if dib < BMP_MIN_INFO_HEADER:
        raise Rejected("unsupported_format", f"BMP with a {dib}-byte info header (OS/2) is not supported: "
                       "convert to PNG", "bmp")
    width, height = struct.unpack("<ii", data[18:26])
    bits, compression = struct.unpack("<HI", data[28:34])
    if bits not in BMP_BITS or compression != 0:
        raise Rejected("unsupported_format", f"BMP with {bits} bits per pixel, compression {compression} "
                       "is not supported (only uncompressed 24/32-bit): convert to PNG", "bmp")
    return width, abs(height)  # negative height means a top-down bitmap


def header_size(fmt: str, data: bytes) -> tuple[int, int]:
    """(width, height) stored in the header of ``data`` in format ``fmt``, without decoding pixels.

    The same order as ``components.images.image_header.header_size`` and Pillow's ``Image.size``. For a GIF
    or an animated WebP, the canvas the first frame is drawn on.

    Args:
      fmt: one of ``FORMATS``, as returned by ``sniff_format``.
      data: the encoded file.

    Raises:
      Rejected: ``bad_header`` if the header is cut short or implausible, ``unsupported_format``
        for a BMP variant that is refused.
    """
    try:
        if fmt == "jpeg":
            width, height = _jpeg_size(data)
        elif fmt == "png":
            if data[12:16] != b"IHDR":
                raise Rejected("bad_header", "PNG: first chunk is not IHDR", fmt)
            width, height = struct.unpack(">II", data[16:24])
        elif fmt == "gif":
            frame = gif_first_frame(data)
            width, height = frame.canvas_width, frame.canvas_height
        elif fmt == "bmp":
            width, height = _bmp_size(data)
        elif fmt == "webp":
            width, height, _, _ = webp_info(data)
        else:
            raise ValueError(f"unknown format {fmt!r}")
    except struct.error as e:  # fewer bytes than the header needs
        raise Rejected("bad_header", f"{fmt.upper()}: header cut short ({e})", fmt) from None
    if width <= 0 or height <= 0:
        raise Rejected("bad_header", f"{fmt.upper()}: header says {width}x{height}", fmt, width, height)
    return width, height


def _pixel_cap(fmt, width, height, max_pixels, source, min_size=None):
    w, h = decoded_size(fmt, width, height, min_size)
    if w * h > max_pixels:
        scaled = f" (decoded at {w}x{h})" if (w, h) != (width, height) else ""
        raise Rejected("too_many_pixels", f"{source} says {width}x{height}{scaled} = {w * h} pixels > "
                       f"max_pixels {max_pixels}", fmt, width, height)


def inspect_image(data: bytes, max_bytes: int, max_pixels: int, tf_check: bool = False,
                  min_size: Optional[int] = None) -> ImageInfo:
    """Validates one encoded image (see the module docstring for the order of checks).

    Args:
      data: the file's bytes.
      max_bytes: largest accepted file size in bytes.
      max_pixels: largest accepted width * height, checked from the header before decoding;
        for a JPEG, of the pixels decoded at its reduced scale (``rules.decoded_size``).
      tf_check: also run the graph decoder (``components.images.image_ops``; imports TensorFlow).
      min_size: the model's input size (pixels a side), which sets a JPEG's reduced decode
        scale as in the Transform and serving; None: full size.

    Returns:
      ImageInfo with the sniffed format, stored width and height and EXIF orientation.

    Raises:
      Rejected: with the reason code and a detail when the file must not be emitted.
    """
    if not data:
        raise Rejected("empty", "zero bytes")
    if len(data) > max_bytes:
        raise Rejected("too_many_bytes", f"{len(data)} bytes > max_bytes {max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        name = refused_format(data)
        if name is not None:
            raise Rejected("unsupported_format", UNSUPPORTED.format(name))
        raise Rejected("not_an_image", f"content starts with {data[:8].hex(' ')}: {NOT_AN_IMAGE}")
    width, height = header_size(fmt, data)
    _pixel_cap(fmt, width, height, max_pixels, "header", min_size)  # before any decoder sees the bytes
    if tf_check:  # the graph decoder decides (see the module docstring); Pillow only reports
        _graph_decode(data, fmt, width, height, max_pixels, min_size, max_bytes)
        return ImageInfo(fmt, width, height, _pillow_orientation(data))
    try:
        # formats=[...]: Pillow must read it as the format the magic bytes claim, nothing else.
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]]) as im:
            if im.size != (width, height):  # Pillow's header parse; compared, not trusted blindly
                _pixel_cap(fmt, *im.size, max_pixels, "Pillow's header parse", min_size)
                raise Rejected("bad_header", f"Pillow reads {im.size[0]}x{im.size[1]}, the header "
                               f"says {width}x{height}", fmt, width, height)
            # Only the first frame: that is what the graph decoder takes, and decoding every
            # frame of a long GIF would be a bomb of its own. A JPEG at libjpeg's reduced scale,
            # as the graph decodes it (Pillow's draft picks the scale from the size asked for).
            if fmt == "jpeg" and min_size is not None:
                im.draft("RGB", decoded_size(fmt, width, height, min_size))
            im.load()
            if fmt == "png" and _PNG_END not in data:
                raise Rejected("decode_failed", "PNG: no complete IEND chunk at the end", fmt, width, height)
            # EXIF only after load(): PNG's getexif() itself loads the image, and a decode
            # error swallowed here would leave a half-loaded image that load() then accepts.
            try:
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
            except Exception:  # noqa: BLE001  (a broken EXIF block is not our reason to reject)
                orientation = 1
            orientation = orientation if 1 <= orientation <= 8 else 1
    except Rejected:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own global guard, if set below ours
        raise Rejected("too_many_pixels", f"Pillow: {e}", fmt, width, height) from None
    except Image.UnidentifiedImageError:
        raise Rejected("bad_header", f"Pillow cannot read it as {fmt.upper()}", fmt, width, height) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, MemoryError) as e:
        raise Rejected("decode_failed", f"Pillow: {type(e).__name__}: {e}", fmt, width, height) from None
    return ImageInfo(fmt, width, height, orientation)


def _pillow_orientation(data: bytes) -> int:
    """Pillow's reading of the EXIF orientation (for the report), 1 when absent or unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001  (a broken EXIF block is not our reason to reject)
        return 1
    return value if 1 <= value <= 8 else 1


def _graph_decode(data: bytes, fmt: str, width: int, height: int, max_pixels: int, min_size,
                  max_bytes: int) -> None:
    """Runs the graph decoder the Transform and serving use; its refusal is ours too."""
    import tensorflow as tf  # lazily: the plain-Python path (CLI scans) should not pay for it

    from components.images import image_ops

    try:
        shape = image_ops.decode_eager(data, max_pixels, min_size, max_bytes).shape[:2]
    except tf.errors.OpError as e:
        # Drop TF's "{{function_node ...}}" prefix and "[Op:...]" suffix: keep the reason.
        msg = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]|\n.*", "", e.message or type(e).__name__, flags=re.S).strip()
        raise Rejected("decode_failed", f"TensorFlow: {msg}", fmt, width, height) from None
    decoded = decoded_size(fmt, width, height, min_size)
    if sorted(shape) != sorted(decoded):  # upright: EXIF 5-8 swap the sides
        raise Rejected("decode_failed", f"TensorFlow decoded {shape[1]}x{shape[0]}, "
                       f"header says {width}x{height} (to decode at {decoded[0]}x{decoded[1]})", fmt, width, height)

