"""Per-file image validation for ImageExampleGen (plain Python: Pillow, optionally TensorFlow).

The checks run in a fixed order, cheapest and safest first, so that a hostile file is refused
before anything expensive or memory-hungry happens to it:

1. size: empty, or more than ``max_bytes``;
2. format: the content's magic bytes must be JPEG, PNG, GIF or BMP (the file name is ignored,
   so a PNG named ``.jpg`` is a PNG and an HTML page named ``.jpg`` is not an image);
3. dimensions: parsed here from the format's own header (JPEG SOF, PNG IHDR, GIF logical
   screen, BMP info header) and compared with ``max_pixels`` BEFORE Pillow sees the bytes.
   Pillow's ``Image.open`` also reads only the header, but it applies its own global
   ``Image.MAX_IMAGE_PIXELS`` guard there; parsing the header ourselves makes our cap the one
   that decides, whatever that global is set to;
4. a full decode of the first frame with Pillow (``load()``): truncation, corrupt zlib
   streams and the like show up only here;
5. optionally, a decode with ``tf.io.decode_image(channels=3, expand_animations=False)``, the
   op family the Transform and the serving signature use, so that a file Pillow tolerates
   but TensorFlow does not cannot crash training later.

Accepted files keep their original bytes: decoding for the model is the Transform's job.
``width`` and ``height`` are the STORED dimensions. EXIF orientation is deliberately not
applied anywhere downstream: TensorFlow's decoders ignore it and the serving signature
receives raw client bytes decoded by the same ops, so honouring the tag only in training
would make training and serving see different pixels. The orientation is reported
(``ImageInfo.orientation``) so the ingestion summary can say how many files carry one.

Reason codes (``Rejected.reason``), stable for reports and tests:

    empty, too_many_bytes, not_an_image, bad_header, too_many_pixels, decode_failed
    (plus the file-level codes of ``inputs``: missing, unreadable, outside_root, no_label,
    not_followed, bad_manifest_row, duplicate_id)
"""
from __future__ import annotations

import io
import re
import struct
from typing import NamedTuple, Optional

from PIL import Image

FORMATS = ("jpeg", "png", "gif", "bmp")
_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4 (DHT),
# C8 (reserved) and CC (DAC) share the range but carry no dimensions.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_EXIF_ORIENTATION = 0x0112


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
    orientation: int  # EXIF orientation tag, 1 (upright) when absent; reported, not applied


class ImageCheck(NamedTuple):
    """Result of ``check_image``: ``reason`` is None when ``ok``."""
    ok: bool
    reason: Optional[str]
    format: Optional[str]
    width: Optional[int]
    height: Optional[int]


def sniff_format(data: bytes) -> Optional[str]:
    """The image format from the content's magic bytes (jpeg/png/gif/bmp), else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == _PNG_SIGNATURE:
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise Rejected("bad_header", f"JPEG: no marker at byte {pos}", "jpeg")
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


def header_size(fmt: str, data: bytes) -> tuple[int, int]:
    """(width, height) from the header of ``data`` in format ``fmt``, without decoding pixels.

    Args:
      fmt: one of ``FORMATS``, as returned by ``sniff_format``.
      data: the encoded file.

    Raises:
      Rejected: ``bad_header`` if the header is cut short or implausible.
    """
    try:
        if fmt == "jpeg":
            width, height = _jpeg_size(data)
        elif fmt == "png":
            if data[12:16] != b"IHDR":
                raise Rejected("bad_header", "PNG: first chunk is not IHDR", fmt)
            width, height = struct.unpack(">II", data[16:24])
        elif fmt == "gif":
            width, height = struct.unpack("<HH", data[6:10])
        elif fmt == "bmp":
            (dib,) = struct.unpack("<I", data[14:18])
            if dib == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned sides
                width, height = struct.unpack("<HH", data[18:22])
            elif dib >= 16:
                width, height = struct.unpack("<ii", data[18:26])
                height = abs(height)  # negative height means a top-down bitmap
            else:
                raise Rejected("bad_header", f"BMP: unknown info header size {dib}", fmt)
        else:
            raise ValueError(f"unknown format {fmt!r}")
    except struct.error as e:  # fewer bytes than the header needs
        raise Rejected("bad_header", f"{fmt.upper()}: header cut short ({e})", fmt) from None
    if width <= 0 or height <= 0:
        raise Rejected("bad_header", f"{fmt.upper()}: header says {width}x{height}", fmt, width, height)
    return width, height


def _pixel_cap(fmt, width, height, max_pixels, source):
    if width * height > max_pixels:
        raise Rejected("too_many_pixels",
                       f"{source} says {width}x{height} = {width * height} pixels > max_pixels {max_pixels}",
                       fmt, width, height)


def inspect_image(data: bytes, max_bytes: int, max_pixels: int, tf_check: bool = False) -> ImageInfo:
    """Validates one encoded image (see the module docstring for the order of checks).

    Args:
      data: the file's bytes.
      max_bytes: largest accepted file size in bytes.
      max_pixels: largest accepted width * height, checked from the header before decoding.
      tf_check: also decode with TensorFlow's ``tf.io.decode_image`` (imports TensorFlow).

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
        raise Rejected("not_an_image",
                       f"content starts with {data[:8].hex(' ')}: not JPEG, PNG, GIF or BMP")
    width, height = header_size(fmt, data)
    _pixel_cap(fmt, width, height, max_pixels, "header")  # before Pillow ever sees the bytes
    try:
        # formats=[...]: Pillow must read it as the format the magic bytes claim, nothing else.
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]]) as im:
            width, height = im.size  # Pillow's header parse; re-checked, not trusted blindly
            _pixel_cap(fmt, width, height, max_pixels, "Pillow's header parse")
            # Only the first frame: that is what decode_image(expand_animations=False) takes
            # downstream, and decoding every frame of a long GIF would be a bomb of its own.
            im.load()
            # EXIF only after load(): PNG's getexif() itself loads the image, and a decode
            # error swallowed here would leave a half-loaded image that load() then accepts.
            try:
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
            except Exception:  # noqa: BLE001  (a broken EXIF block is not our reason to reject)
                orientation = 1
    except Rejected:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own global guard, if set below ours
        raise Rejected("too_many_pixels", f"Pillow: {e}", fmt, width, height) from None
    except Image.UnidentifiedImageError:
        raise Rejected("bad_header", f"Pillow cannot read it as {fmt.upper()}", fmt, width, height) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, MemoryError) as e:
        raise Rejected("decode_failed", f"Pillow: {type(e).__name__}: {e}", fmt, width, height) from None
    if tf_check:
        _tf_decode(data, fmt, width, height)
    return ImageInfo(fmt, width, height, orientation)


def _tf_decode(data: bytes, fmt: str, width: int, height: int) -> None:
    import tensorflow as tf  # lazily: the plain-Python path (CLI scans) should not pay for it

    try:
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        # Drop TF's "{{function_node ...}}" prefix and "[Op:...]" suffix: keep the reason.
        msg = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", e.message or type(e).__name__).strip()
        raise Rejected("decode_failed", f"TensorFlow: {msg}", fmt, width, height) from None
    if tuple(decoded.shape[:2]) != (height, width):
        raise Rejected("decode_failed", f"TensorFlow decoded {decoded.shape[1]}x{decoded.shape[0]}, "
                       f"header says {width}x{height}", fmt, width, height)


def check_image(data: bytes, max_bytes: int, max_pixels: int, tf_check: bool = False) -> ImageCheck:
    """Non-raising form of ``inspect_image``, for callers outside TFX (the CLI).

    Args:
      data: the file's bytes.
      max_bytes: largest accepted file size in bytes.
      max_pixels: largest accepted width * height, checked from the header before decoding.
      tf_check: also decode with TensorFlow.

    Returns:
      ImageCheck(ok, reason, format, width, height); ``reason`` is a code from the module
      docstring, None when ok. Format and dimensions are filled in as far as the checks got.
    """
    try:
        info = inspect_image(data, max_bytes, max_pixels, tf_check)
    except Rejected as r:
        return ImageCheck(False, r.reason, r.format, r.width, r.height)
    return ImageCheck(True, None, info.format, info.width, info.height)
