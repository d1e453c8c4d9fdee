"""The graph decoder (components/images/image_ops.py) against independent references, over the project's
whole corpus of tricky and hostile files: Pillow's header parse and pixels, Pillow's
``ImageOps.exif_transpose``, and the ingestion checks (one verdict for both sides).

The corpus: the bad-image zoo (tests/fixtures/bad_images.py), every accepted zoo file cut short
and with bytes flipped, the eight EXIF orientations in JPEG, PNG and WebP, broken EXIF blocks,
BMP variants and real decompression bombs.
"""
import io
import pathlib
import re
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from components.images import checks, image_header, image_ops, rules
from conftest import REPO, load_fixture

bad_images = load_fixture("bad_images")
refusal_probe = load_fixture("refusal_probe")
CAP = rules.DEFAULT_MAX_PIXELS
MB = rules.DEFAULT_MAX_BYTES


def _graph(data, max_pixels=CAP):
    """(accepted, pixels or the refusal message) from the graph decoder."""
    try:
        return True, image_ops.decode_eager(data, max_pixels)
    except tf.errors.InvalidArgumentError as e:
        return False, e.message


def _ingestion(data, max_pixels=CAP, tf_check=False):
    """(accepted, reason) from the ingestion checks: as the executor runs them (``tf_check``:
    the shared header rules in Python, then the graph decoder), or Pillow only."""
    try:
        checks.inspect_image(data, MB, max_pixels, tf_check=tf_check)
        return True, None
    except checks.Rejected as r:
        return False, f"{r.reason}: {r.detail}"


def pillow_pixels(data):
    """What the graph decoder promises, computed with Pillow: the first frame, upright per EXIF,
    as RGB with alpha dropped; 16-bit samples keep their high byte (as libpng's strip does);
    a GIF's uncovered and transparent pixels are black."""
    fmt = checks.sniff_format(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the corpus's broken EXIF blocks
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            im.load()
            try:
                upright = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001  (a broken EXIF block: upright)
                upright = im.copy()
            if upright.mode in ("I;16", "I;16B", "I"):
                grey = (np.asarray(upright).astype(np.uint32) >> 8).astype(np.uint8)
                return np.stack([grey] * 3, axis=-1)
            if fmt != "gif":
                return np.asarray(upright.convert("RGB"))
            rgba = np.asarray(upright.convert("RGBA"))
    rgb = np.where(rgba[..., 3:] == 0, 0, rgba[..., :3]).astype(np.uint8)
    frame = checks.gif_first_frame(data)
    mask = np.zeros(rgb.shape[:2], bool)
    mask[frame.y:frame.y + frame.height, frame.x:frame.x + frame.width] = True
    return np.where(mask[..., None], rgb, 0).astype(np.uint8)


def _mutations(name, data):
    """The file cut short at four places and with a byte flipped at two."""
    out = {f"{name}#cut{k}": data[:len(data) * k // 4] for k in (1, 2, 3)}
    out[f"{name}#cut-1"] = data[:-1]
    for k in (1, 2):
        flipped = bytearray(data)
        flipped[len(data) * k // 3] ^= 0xFF
        out[f"{name}#flip{k}"] = bytes(flipped)
    return out


def _corrupt_exif():
    """JPEGs whose EXIF block is broken in one way each (all must decode upright)."""
    photo = bad_images._scene(40, 30, 70)
    block = bad_images.exif_block
    variants = {
        "ifd_past_end": block(6, ifd_offset=4000),
        "bad_byte_order": block(6, byte_order=b"XX"),
        "value_9": block(9),
        "ascii_type": block(6, kind=2),
        "count_0": block(6, count=0),
        "truncated": block(6)[:12],
    }
    return {f"exif_{k}.jpg": bad_images._encode(photo, "JPEG", quality=95, exif=b"Exif\0\0" + v)
            for k, v in variants.items()}


def _bmp_variants():
    rgb = bad_images._scene(40, 30, 71)
    out = {f"bmp_{mode}.bmp": bad_images._encode(rgb.convert(mode), "BMP") for mode in ("1", "L", "P", "RGB")}
    top_down = bytearray(out["bmp_RGB.bmp"])  # the same pixels, rows stored top-down
    height = int.from_bytes(top_down[22:26], "little", signed=True)
    row = (40 * 3 + 3) // 4 * 4
    pixels = bytes(top_down[54:54 + row * height])
    rows = [pixels[i * row:(i + 1) * row] for i in range(height)]
    top_down[22:26] = (-height).to_bytes(4, "little", signed=True)
    top_down[54:54 + row * height] = b"".join(reversed(rows))
    out["bmp_top_down.bmp"] = bytes(top_down)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    zoo = bad_images.write_image_zoo(root)
    files = {k: pathlib.Path(e["path"]).read_bytes() for k, e in zoo.items()}
    for k, e in zoo.items():
        if e["expect"] == "ok":
            files.update(_mutations(k, files[k]))
    for fmt in ("JPEG", "PNG", "WEBP"):
        upright, rotated = bad_images.exif_orientations(fmt)
        files[f"upright.{fmt.lower()}"] = upright
        files.update({f"orientation{v}.{fmt.lower()}": b for v, b in rotated.items()})
    files.update(_corrupt_exif())
    files.update(_bmp_variants())
    files["png_sides_overflow.png"] = bad_images._huge_header_png(2 ** 32 - 1)  # w * h overflows int64
    files["bom.svg"] = b"\xef\xbb\xbf \n" + files["alpha/logo.svg"]
    files["html_not_svg.html"] = b"<html><body>an <b>svg</b> mention, no svg tag</body></html>"
    files.update(bad_images.bombs())
    files["gif_frame_bomb.gif"] = bad_images.gif_frame_bomb(frames=20, side=1000)
    files["gif_truncated_second_frame.gif"] = bad_images.gif_frame_bomb(frames=3, side=50)[:-30]
    return files


# ------------------------------------------------------------------------------ one verdict
def _disagreements(files, tf_check):
    out = {}
    for name, data in files.items():
        (graph_ok, graph_why), (ingest_ok, ingest_why) = _graph(data), _ingestion(data, tf_check=tf_check)
        if graph_ok != ingest_ok:
            out[name] = (graph_ok, str(graph_why).splitlines()[0][-160:] if not graph_ok else "", ingest_why)
    return out


def test_ingestion_and_graph_accept_exactly_the_same_files(corpus):
    """Ingestion as the executor runs it: Python's header rules (format, BMP variant, GIF and
    WebP walks, caps) must refuse nothing the graph's probe accepts, and the other way round."""
    assert not _disagreements(corpus, tf_check=True)
    accepted = sum(_graph(d)[0] for d in corpus.values())
    assert 40 < accepted < len(corpus) - 40  # the corpus exercises both verdicts


def test_pillow_only_ingestion_agrees_on_every_unmutated_file(corpus):
    """The plain-Python check (Pillow decodes) agrees too, except on corrupt compressed data,
    where two decoders may legitimately differ (see checks' docstring): mutated files aside."""
    assert not _disagreements({k: v for k, v in corpus.items() if "#" not in k}, tf_check=False)
    cut = {k: v for k, v in corpus.items() if "#cut" in k and not k.endswith(".webp#cut2")}
    assert not {k: v for k, v in _disagreements(cut, tf_check=False).items() if ".webp" not in k}


def test_ingestion_with_tf_check_runs_the_graph_decoder(corpus, monkeypatch):
    data = corpus["alpha/lossy.webp"]
    assert bad_images.verdict(data, MB, CAP, tf_check=True)[0]
    monkeypatch.setattr(image_ops, "decode_eager", lambda *a: (_ for _ in ()).throw(
        tf.errors.InvalidArgumentError(None, None, "refused by the graph")))
    assert bad_images.verdict(data, MB, CAP, tf_check=True)[1] == "decode_failed"


def test_header_size_matches_pillow_over_the_corpus(corpus):
    checked = 0
    for name, data in corpus.items():
        fmt = checks.sniff_format(data)
        try:
            width, height = (int(v) for v in image_header.header_size(tf.constant(data)))
        except tf.errors.InvalidArgumentError:  # libjpeg reads up to the scan; a file cut before it fails
            assert fmt == "jpeg" and not _graph(data)[0], name
            continue
        try:
            py = checks.header_size(fmt, data) if fmt else None
        except checks.Rejected:
            py = None
        if py is None:
            assert (width, height) == (-1, -1) or fmt == "jpeg", name  # libjpeg reads more leniently
            continue
        assert (width, height) == py, name  # the same order (width, height) on both sides
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Image.MAX_IMAGE_PIXELS, saved = None, Image.MAX_IMAGE_PIXELS
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        pillow = im.size
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
        except Exception:  # noqa: BLE001  (Pillow cannot open it: nothing to compare)
            continue
        assert (width, height) == pillow, name
        checked += 1
    assert checked > 60


def test_every_accepted_file_decodes_to_pillows_pixels(corpus):
    compared = set()
    for name, data in corpus.items():
        ok, pixels = _graph(data)
        if not ok or "#" in name:  # mutated files: the verdict is compared, not the pixels
            continue
        want = pillow_pixels(data)
        assert pixels.shape == want.shape, name
        diff = np.abs(pixels.astype(int) - want.astype(int))
        if checks.sniff_format(data) == "jpeg":  # decoder tolerance (the same IDCT: 0 here)
            assert diff.max() <= 2, (name, diff.mean(), diff.max())
        else:
            assert diff.max() == 0, (name, diff.max())
        compared.add(checks.sniff_format(data))
    assert compared == set(checks.FORMATS)


# ------------------------------------------------------------------------------ formats
@pytest.mark.parametrize("name, label", [("gamma/photo.heic", "HEIC"), ("alpha/photo.avif", "AVIF"),
                                         ("beta/scan.tiff", "TIFF"), ("gamma/photo.jxl", "JPEG XL"),
                                         ("alpha/logo.svg", "SVG"), ("bom.svg", "SVG"), ("beta/doc.pdf", "PDF")])
def test_refused_formats_are_named_on_both_sides(corpus, name, label):
    ok, message = _graph(corpus[name])
    assert not ok and f"{label} is not supported: convert to JPEG" in message
    with pytest.raises(checks.Rejected) as r:
        checks.inspect_image(corpus[name], MB, CAP)
    assert r.value.reason == "unsupported_format" and r.value.detail.startswith(f"{label} is not supported")


def test_webp_rgb_rgba_and_animated_first_frame(corpus):
    for name in ("alpha/lossy.webp", "beta/alpha.webp", "gamma/animated.webp"):
        ok, pixels = _graph(corpus[name])
        assert ok and pixels.shape == (30, 40, 3), name
    with Image.open(io.BytesIO(corpus["gamma/animated.webp"])) as im:
        assert im.n_frames == 3
        first = np.asarray(im.convert("RGB"))
    assert np.array_equal(_graph(corpus["gamma/animated.webp"])[1], first)


def test_bmp_variants_tensorflow_would_misread_are_refused(corpus):
    for mode in ("1", "L", "P"):  # TF reads 8-bit palette indices as grey, refuses 1-bit
        ok, message = _graph(corpus[f"bmp_{mode}.bmp"])
        assert not ok and "BMP with" in message and "is not supported" in message
    ok, pixels = _graph(corpus["bmp_top_down.bmp"])
    assert ok and np.array_equal(pixels, _graph(corpus["bmp_RGB.bmp"])[1])


def test_gif_is_cut_after_its_first_frame(corpus):
    """200 4000x4000 frames: TensorFlow's own decoder takes 39 s and 3 GB; here only the first
    frame is decoded (timed in test_bombs_are_refused_cheaply_and_the_next_request_works)."""
    data = corpus["gif_frame_bomb.gif"]
    frame = checks.gif_first_frame(data)
    assert frame.end < len(data) // 10
    ok, pixels = _graph(data)
    assert ok and pixels.shape == (1000, 1000, 3)
    ok, _ = _graph(corpus["gif_truncated_second_frame.gif"])  # later frames are never read
    assert ok and _ingestion(corpus["gif_truncated_second_frame.gif"])[0]


# ------------------------------------------------------------------------------ EXIF
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_eight_orientations_match_exif_transpose_and_the_upright_file(corpus, fmt):
    upright = _graph(corpus[f"upright.{fmt}"])[1]
    for value in range(1, 9):
        data = corpus[f"orientation{value}.{fmt}"]
        ok, pixels = _graph(data)
        with Image.open(io.BytesIO(data)) as im:
            assert im.getexif()[0x0112] == value
            want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        assert ok and pixels.shape == want.shape == upright.shape == (32, 48, 3), (fmt, value)
        tolerance = 2 if fmt == "jpeg" else 0  # JPEG decoder tolerance
        assert np.abs(pixels.astype(int) - want).max() <= tolerance, (fmt, value)
        if fmt != "jpeg":  # lossless: the very pixels of the upright file
            assert np.array_equal(pixels, upright), (fmt, value)
        else:  # re-encoded turned: JPEG's blocks fall elsewhere
            assert np.abs(pixels.astype(int) - upright).mean() < 3, value


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_intel_byte_order_exif_orientations_match_exif_transpose(fmt):
    """The corpus's EXIF blocks are in Motorola order ("MM"); Intel order ("II") is read by the
    same ops with the other place values. Checked against a mutation: the byte order fixed to
    Motorola in image_header._ints_ordered fails this test (orientation read as 1)."""
    _, files = bad_images.exif_orientations(fmt, little_endian=True)
    for value, data in files.items():
        assert b"II*\x00" in data and b"MM\x00*" not in data, (fmt, value)
        ok, pixels = _graph(data)
        with Image.open(io.BytesIO(data)) as im:
            assert im.getexif()[0x0112] == value
            want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        assert ok and pixels.shape == want.shape == (32, 48, 3), (fmt, value)
        assert np.abs(pixels.astype(int) - want).max() <= (2 if fmt == "JPEG" else 0), (fmt, value)


def test_a_webp_exif_chunk_with_jpegs_prefix_is_read_as_pillow_reads_it(corpus):
    """Some writers start a WebP's EXIF chunk with JPEG's "Exif\\0\\0"; Pillow skips it, and
    so does the graph. Mutation: the prefix not skipped -> read as upright (fails)."""
    data = corpus["orientation6.webp"]
    at = data.index(b"EXIF")
    size = int.from_bytes(data[at + 4:at + 8], "little")
    assert not data[at + 8:].startswith(b"Exif")
    body = b"Exif\0\0" + data[at + 8:at + 8 + size]
    rest = (data[:at] + b"EXIF" + len(body).to_bytes(4, "little") + body + b"\0" * (len(body) % 2)
            + data[at + 8 + size + size % 2:])
    prefixed = rest[:4] + (len(rest) - 8).to_bytes(4, "little") + rest[8:]
    with Image.open(io.BytesIO(prefixed)) as im:
        assert im.getexif()[0x0112] == 6
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    ok, pixels = _graph(prefixed)
    assert ok and pixels.shape == want.shape == (32, 48, 3) and np.array_equal(pixels, want)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def test_jpeg_exif_is_the_first_app1_segment_whatever_the_comments_hold():
    """Comments holding "Exif\\0\\0" before the real APP1 (six, and one holding a whole APP1
    segment with orientation 3, which a scan for APP1 headers would take), fill bytes before
    a marker, and a second APP1 after the real one: the orientation is the real segment's, as
    Pillow reads it. Mutation: the earlier reader (the first valid of four "Exif\\0\\0"
    occurrences in the first 128 KB) -> orientation 1, the picture not turned (fails)."""
    _, files = bad_images.exif_orientations("JPEG")
    decoy = _segment(0xE1, b"Exif\0\0" + bad_images.exif_block(3))
    comments = [_segment(0xFE, b"note Exif\0\0 " + bytes([k])) for k in range(6)] + [_segment(0xFE, decoy)]
    for value in (6, 8):
        data = files[value]
        app1 = data.index(b"\xff\xe1")
        hostile = data[:app1] + b"".join(comments) + b"\xff\xff" + data[app1:]
        with Image.open(io.BytesIO(hostile)) as im:
            assert im.getexif()[0x0112] == value
            want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        ok, pixels = _graph(hostile)
        assert ok and pixels.shape == want.shape == (32, 48, 3), value
        assert np.abs(pixels.astype(int) - want).max() <= 2, value
        second = data[:app1] + data[app1:].replace(b"\xff\xdb", _segment(0xE1, b"Exif\0\0" + bad_images.exif_block(3))
                                                   + b"\xff\xdb", 1)
        assert Image.open(io.BytesIO(second)).getexif()[0x0112] == value
        assert _graph(second)[1].shape == (32, 48, 3), value


def test_corrupt_exif_decodes_upright(corpus):
    for name, data in _corrupt_exif().items():
        ok, pixels = _graph(data)
        stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert ok and pixels.shape == stored.shape == (30, 40, 3), name
        assert np.abs(pixels.astype(int) - stored).max() <= 2, name
        assert _ingestion(data)[0], name


def test_apply_orientation_is_pillows_exif_transpose_for_all_eight():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    methods = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
    for value in range(1, 9):
        want = Image.fromarray(stored)
        want = want if value == 1 else want.transpose(methods[value])
        got = image_ops.apply_orientation(tf.constant(stored), tf.constant(value)).numpy()
        assert np.array_equal(got, np.asarray(want)), value


def test_upright_size_swaps_for_orientations_5_to_8(corpus):
    for value in range(1, 9):
        width, height = (int(v) for v in image_ops.upright_size(tf.constant(corpus[f"orientation{value}.png"])))
        assert (width, height) == (48, 32), value
        assert tuple(int(v) for v in image_header.header_size(tf.constant(corpus[f"orientation{value}.png"]))) == (
            (32, 48) if value >= 5 else (48, 32))


# ------------------------------------------------------------------------------ the pixel cap
def test_pixel_cap_applies_to_the_stored_size_in_the_graph(corpus):
    data = corpus["orientation6.png"]  # stored 32x48 = 1536 pixels
    assert _graph(data, max_pixels=1536)[0]
    ok, message = _graph(data, max_pixels=1535)
    assert not ok and "32x48 pixels, over the pixel cap of 1535" in message
    assert not _ingestion(data, max_pixels=1535)[0] and _ingestion(data, max_pixels=1536)[0]


def test_bombs_are_refused_cheaply_and_the_next_request_works(corpus, tmp_path):
    """Real files (Pillow decodes them, given the memory) of 100-268 Mpx: 0.5 to 6 GB once
    decoded, 6-13 s and 1.5-6 GB to refuse before the gate. A safety bound with a wide margin
    (refusing takes milliseconds), measured in a fresh process."""
    bombs = bad_images.bombs()
    Image.MAX_IMAGE_PIXELS, saved = None, Image.MAX_IMAGE_PIXELS
    try:
        for data in bombs.values():  # real: the header Pillow reads is the one we cap on
            with Image.open(io.BytesIO(data)) as im:
                assert im.size[0] * im.size[1] > 2 * CAP
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    results = refusal_probe.measure("graph", bombs, corpus["alpha/good_0.jpg"], tmp_path)
    for name, out in results.items():
        assert "over the pixel cap" in out["refused"], (name, out)
        assert out["seconds"] < 0.5 and out["grown_mb"] < 200, (name, out)


def test_a_webp_frame_bigger_than_its_canvas_is_refused_from_its_header(corpus, tmp_path):
    """A 1x1 animation whose first frame's 34-byte VP8L bitstream says 16383x16383 (real: the
    same bitstream as a still decodes to 268 Mpx). It was refused only once decoded (0.7 s,
    +929 MB in one process, the frame then not fitting its canvas); the probe now compares
    the frame's own header with its box and canvas first, on both sides, with one message.
    Mutation: the probe's vp8x branch without the frame check -> decoded, then refused for
    not fitting the canvas: 2.5 s and +711 MB in the probe process (fails)."""
    data = bad_images.webp_frame_bomb()
    with pytest.raises(OSError):  # Pillow (libwebp's demuxer) refuses it too
        Image.open(io.BytesIO(data)).load()
    [out] = refusal_probe.measure("graph", {"frame": data}, corpus["alpha/good_0.jpg"], tmp_path).values()
    want = "WebP: the first frame (1x1 at 0,0, its bitstream 16383x16383) does not fit the 1x1 canvas"
    assert want in out["refused"], out
    assert out["seconds"] < 0.1 and out["grown_mb"] < 50, out
    for tf_check in (False, True):
        assert _ingestion(data, tf_check=tf_check) == (False, "bad_header: " + want), tf_check


def test_the_byte_cap_is_one_verdict_in_the_graph_and_in_ingestion():
    """63 MB of APPn segments around a 320x240 picture: ingestion refused it (over max_bytes)
    while the graph decoded it, so serving embedded bytes training never sees. Now the graph
    applies the same cap with ingestion's words (the served model: test_pipeline_e2e).
    Mutation: the probe without its byte cap -> the graph decodes it (fails)."""
    data = bad_images.padded_jpeg()
    assert len(data) > MB
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (320, 240)  # a real, readable JPEG
    want = f"{len(data)} bytes > max_bytes {MB}"
    ok, message = _graph(data)
    assert not ok and want in message, message
    with pytest.raises(tf.errors.InvalidArgumentError, match=want):
        image_ops.decode_batch(tf.constant([data]), 64)
    for tf_check in (False, True):
        assert _ingestion(data, tf_check=tf_check) == (False, "too_many_bytes: " + want), tf_check
    # Under a cap it fits, the same bytes decode to the small picture: the cap alone refused it.
    assert image_ops.decode_eager(data, max_bytes=len(data)).shape == (240, 320, 3)


def test_gif_frame_bomb_decodes_only_its_first_frame(tmp_path, corpus):
    [out] = refusal_probe.measure("graph", {"frames": bad_images.gif_frame_bomb()}, corpus["alpha/good_0.jpg"],
                                  tmp_path).values()
    assert out["refused"] == "", out  # accepted: each frame is under the cap
    assert out["seconds"] < 5 and out["grown_mb"] < 400, out  # TF's decoder on all of it: 60 s, 3 GB


def test_the_decoders_format_branches_stay_functions_at_run_time():
    """Every per-format choice (probe, EXIF reader, decoder) and the accept/refuse gate is a
    Case op that TensorFlow runs as a function call instead of inlining all its branches into
    switches, so a process optimises only the branches it takes: the first JPEG request no
    longer pays for the GIF walk and the WebP re-wrap (benchmarks/first_request.py measures
    it). Mutation: ``lazy_case`` building a plain tf.switch_case -> all four lowered (fails)."""
    graph = tf.function(lambda d: image_ops.decode_resized(d, 64), autograph=False).get_concrete_function(
        tf.TensorSpec([], tf.string)).graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    lowering = {}
    for node in nodes:
        for name in ("probe_format", "exif_format", "decode_format", "decode_if_ok"):
            # the op itself ("decode_format", "decode_format_1"), not a Case nested under its scope
            if node.op in ("Case", "StatelessCase") and re.fullmatch(rf"(.*/)?{name}(_\d+)?", node.name):
                lowering[name] = node.attr["_lower_using_switch_merge"].b
    assert lowering == {"probe_format": False, "exif_format": False, "decode_format": False,
                        "decode_if_ok": False}, lowering


def test_the_decoders_library_has_no_cond_and_few_functions():
    """A loaded model's first request pays for every function in its graph's library, taken or
    not (1-2.3 ms a function, 0.08-0.18 ms a node: benchmarks/first_request.py), so the decoder branches
    only where it must: the four per-format/accept Cases, the JPEG scale switch, the three
    walks (GIF blocks, WebP chunks, JPEG segments) and the resized image's turn (none when
    upright, a reverse for flips, a gather for EXIF 5-8: 0.1-0.4 ms less an image); everything
    else is a select. 28 functions (56 before the GIF walk's and WebP probe's conds became selects and a
    branch shared by several formats became one function) and 1,488 nodes (2,095 before fixed
    header fields became one product, a probe's result one vector and a split of one string
    unwrapped). Mutations: the GIF probe's tf.cond(found, ...) back -> a StatelessIf;
    lazy_case not sharing a branch given for several formats -> 32 functions; a function of its
    own for WebP's EXIF -> 29; header fields read one slice and sum each (image_header._fields)
    -> 241 nodes more; tf.strings.split's ragged result back in _split -> 104 more (all fail)."""
    graph = tf.function(lambda d: image_ops.decode_resized(d, 64), autograph=False).get_concrete_function(
        tf.TensorSpec([], tf.string)).graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    kinds = sorted(n.op for n in nodes if n.op.replace("Stateless", "") in ("If", "Case", "While"))
    assert kinds == ["Case", "Case", "StatelessCase", "StatelessCase", "StatelessCase", "StatelessCase",
                     "StatelessWhile", "StatelessWhile", "StatelessWhile"], kinds
    assert len(graph.library.function) <= 28, len(graph.library.function)
    assert len(nodes) <= 1550, len(nodes)


def _ancestors(nodes, name):
    """Names of the nodes ``name`` waits for (data and control inputs), within one function."""
    by_name, seen, todo = {n.name: n for n in nodes}, set(), [name]
    while todo:
        for inp in by_name[todo.pop()].input:
            source = inp.lstrip("^").split(":")[0]
            if source in by_name and source not in seen:
                seen.add(source)
                todo.append(source)
    return seen


@pytest.mark.parametrize("decoder", ["decode_rgb", "decode_resized"])
def test_the_decoder_starts_after_the_exif_walk_ends(decoder):
    """A failing decoder (a cut JPEG) cancels what runs beside it, and a branch cancelled before
    it started could report "Function was cancelled" ahead of the decoder's reason (seen in
    CI: test_every_accepted_file_decodes_to_pillows_pixels). The EXIF walk ends first, so
    nothing runs beside the decoder. Mutation: no control dependency -> not an ancestor (fails)."""
    fn = (lambda d: image_ops.decode_rgb(d)) if decoder == "decode_rgb" else (lambda d: image_ops.decode_resized(d, 64))
    graph = tf.function(fn, autograph=False).get_concrete_function(tf.TensorSpec([], tf.string)).graph.as_graph_def()
    [(branch, decode)] = [(f, n.name) for f in graph.library.function for n in f.node_def
                          if n.op.endswith("Case") and re.fullmatch(r"(.*/)?decode_format", n.name)]
    assert any(re.fullmatch(r"(.*/)?exif_format", a) for a in _ancestors(branch.node_def, decode))


def test_the_schema_allows_exactly_the_accepted_formats():
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = text_format.Parse((REPO / "schemas" / "schema.pbtxt").read_text(), schema_pb2.Schema())
    [domain] = [d for d in schema.string_domain if d.name == "format"]
    assert list(domain.value) == list(checks.FORMATS)

