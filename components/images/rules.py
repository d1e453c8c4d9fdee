"""The image rules, one home for both deciders: ingestion's file verdict (``checks``, plain
Python and Pillow) and the graph decoder (``image_header`` and ``image_ops``, TensorFlow ops)
read the caps, the magic bytes of the accepted and of the recognised-but-refused formats, the
BMP variants TensorFlow decodes correctly and the bounds of the GIF/WebP first-frame walk from
here, so ingestion and serving accept exactly the same byte strings.

Plain constants only: importing this costs nothing.
"""

# The caps. 50 MiB: far above any sane photo, far below a bomb. 40 Mpx: a 7300x5500 photo;
# 120 MB once decoded to RGB (for a JPEG: once decoded at its reduced scale, see JPEG_SCALES).
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000

FORMATS = ("jpeg", "png", "gif", "bmp", "webp")
# libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 of each side for almost nothing: the decoders take
# the largest of these that keeps the short side >= the model's input (ceil(side / d), as
# libjpeg sizes its output), and the pixel cap applies to what is decoded. Other formats are
# decoded, and capped, at their stored size.
JPEG_SCALES = (1, 2, 4, 8)
# Magic bytes: per format, alternatives; an alternative is (offset, bytes) pairs that must
# all match. The graph decoder builds its comparisons from these same tables.
MAGIC = (
    ("jpeg", (((0, b"\xff\xd8\xff"),),)),
    ("png", (((0, b"\x89PNG\r\n\x1a\n"),),)),
    ("gif", (((0, b"GIF87a"),), ((0, b"GIF89a"),))),
    ("bmp", (((0, b"BM"),),)),
    ("webp", (((0, b"RIFF"), (8, b"WEBP")),)),
)
# Recognised formats that are refused, by name: neither Pillow (HEIC, JPEG XL) nor
# TensorFlow (AVIF, TIFF, JPEG 2000, PSD, SVG, PDF) can check and decode them on both sides.
_FTYP = lambda *brands: tuple(((4, b"ftyp" + b),) for b in brands)  # noqa: E731  (ISO BMFF)
REFUSED_MAGIC = (
    ("HEIC", _FTYP(b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis")),
    ("HEIF", _FTYP(b"mif1", b"msf1")),
    ("AVIF", _FTYP(b"avif", b"avis")),
    ("TIFF", (((0, b"II*\x00"),), ((0, b"MM\x00*"),))),
    ("JPEG XL", (((0, b"\xff\x0a"),), ((0, b"\x00\x00\x00\x0cJXL \r\n\x87\n"),))),
    ("JPEG 2000", (((0, b"\x00\x00\x00\x0cjP  \r\n\x87\n"),), ((0, b"\xff\x4f\xff\x51"),))),
    ("PSD", (((0, b"8BPS"),),)),
    ("PDF", (((0, b"%PDF-"),),)),
)
# SVG has no magic bytes: markup (after an optional BOM and white space) whose first
# SVG_WINDOW bytes contain "<svg".
SVG_WINDOW = 1024
UNSUPPORTED = "{} is not supported: convert to JPEG"
NOT_AN_IMAGE = "not a JPEG, PNG, GIF, BMP or WebP image"
# BMP: TensorFlow's decoder reads only uncompressed 24/32-bit BITMAPINFOHEADER (or later)
# files; it decodes 8-bit palette files as grey and refuses 1-bit ones, so both sides refuse
# every other variant.
BMP_BITS = (24, 32)
BMP_MIN_INFO_HEADER = 40
# GIF: only the first frame is decoded, and TensorFlow's GIF decoder would decompress EVERY
# frame (a 2.7 MB GIF of 200 frames of 4000x4000 costs it 3 GB), so the graph cuts the file
# after the first frame. Finding that end walks the blocks; a step is one block header or one
# run of at most GIF_MAX_RUN data sub-blocks of equal length (encoders write 255-byte ones),
# and a file that needs more than GIF_MAX_STEPS steps is refused on both sides.
GIF_MAX_STEPS = 1024
GIF_MAX_RUN = 4096
# WebP: the first frame of an animation is the first ANMF chunk among the first
# WEBP_MAX_CHUNKS chunks after VP8X (ICCP and ANIM come before it).
WEBP_MAX_CHUNKS = 64


def decoded_size(fmt: str, width: int, height: int, min_size=None) -> tuple[int, int]:
    """(width, height) the decoders decode a ``fmt`` image of the stored size at, for a model
    input of ``min_size`` pixels a side (None: full size)."""
    scale = 1
    if fmt == "jpeg" and min_size is not None:
        scale = max(d for d in JPEG_SCALES if -(-min(width, height) // d) >= min_size or d == 1)
    return -(-width // scale), -(-height // scale)
