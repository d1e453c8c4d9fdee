"""Deterministic synthetic "landmarks" for the demo and the tests (numpy + Pillow only).

Each landmark is a procedurally drawn scene (sky gradient, textured ground, hills, a skyline
of buildings, towers, domes, arches, pyramids and temples; layout, palette and textures from
a per-landmark RNG), rendered once, larger than the output. Each view, from a per-view RNG,
is one homography (``Image.transform`` PERSPECTIVE: random crop and scale, small rotation,
keystone and corner distortion), a random foreground occluder (tree, person, pole, blob,
box), a lighting change (brightness, contrast, saturation, colour cast, gamma, sensor noise),
a Gaussian blur, and a JPEG round trip at a random quality before the file is written.
RNGs are seeded by ``SeedSequence([tag, seed, landmark, view])``: a seed always gives the
same bytes (for a given Pillow/libjpeg build), another seed another data set.

Layouts: ``generate_landmarks`` writes ``root/<label>/<label>_<view>.jpg``;
``write_manifest_csv`` writes GLDv2 style ``root/<id[0]>/<id[1]>/<id[2]>/<id>.jpg`` and an
``id,landmark_id`` CSV. ``python -m pipeline.demo_data OUT_DIR`` writes a data set and prints
its timing and a colour-histogram nearest-neighbour score.
"""
from __future__ import annotations

import colorsys
import csv
import hashlib
import io
import math
import pathlib
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_TAG = 0xD016  # domain tag mixed into every seed, so these streams differ from other users'
SCENE_SCALE = 1.6  # the scene is rendered this much larger than the output views


def landmark_label(index: int) -> str:
    """Folder name of landmark ``index``."""
    return f"landmark_{index:03d}"


def landmark_id(index: int) -> int:
    """GLDv2-style integer id of landmark ``index``: unique, deterministic, non-contiguous."""
    return 1000 + (10007 * (index + 1)) % 200003


def image_id(seed: int, index: int, view: int) -> str:
    """16 hex characters, deterministic in (seed, landmark, view)."""
    return hashlib.sha1(f"dolg-demo:{seed}:{index}:{view}".encode()).hexdigest()[:16]


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_TAG, int(seed), *map(int, key)]))


# --------------------------------------------------------------------------- the scene

def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _shade(c, f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, x * f))) for x in c)


_SKIES = (  # (top, horizon) hue/sat/value ranges: day, dusk, overcast, night, desert haze
    ((0.55, 0.62), (0.45, 0.8), (0.75, 1.0), (0.50, 0.58), (0.1, 0.35), (0.9, 1.0)),
    ((0.70, 0.80), (0.4, 0.7), (0.35, 0.6), (0.02, 0.10), (0.5, 0.9), (0.85, 1.0)),
    ((0.55, 0.65), (0.0, 0.12), (0.55, 0.8), (0.55, 0.65), (0.0, 0.08), (0.75, 0.92)),
    ((0.60, 0.68), (0.6, 0.9), (0.08, 0.2), (0.60, 0.70), (0.4, 0.7), (0.25, 0.45)),
    ((0.08, 0.14), (0.2, 0.4), (0.8, 0.95), (0.10, 0.16), (0.1, 0.3), (0.9, 1.0)),
)


def _gradient(h: int, w: int, top, bottom, curve: float = 1.0) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None] ** curve
    return (np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t).repeat(w, 1)


def _ground_texture(rng, h: int, w: int) -> np.ndarray:
    """Multiplicative texture (around 1.0) for the ground: stripes, tiles, cobbles or grass."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind, period, amp = int(rng.integers(4)), float(rng.uniform(4, 12)), float(rng.uniform(0.06, 0.16))
    if kind == 0:  # furrows converging towards the horizon
        tex = np.sin((xx - w * rng.uniform(0.3, 0.7)) / (yy + 8.0) * period * 2.0)
    elif kind == 1:  # chequered paving
        tex = np.sign(np.sin(xx / period * np.pi) * np.sin((yy + 3) / (period * 0.6) * np.pi))
    elif kind == 2:  # cobbles
        tex = np.cos(xx / period * np.pi * 2) * np.cos(yy / period * np.pi * 2.3)
    else:  # grass: fixed per-landmark noise
        tex = rng.standard_normal((h, w)).astype(np.float32)
    return 1.0 + amp * np.clip(tex, -1.5, 1.5)[..., None]


def _window_grid(draw, rng, box, colour, lit):
    x0, y0, x1, y1 = box
    cols, rows = int(rng.integers(2, 6)), int(rng.integers(2, 8))
    cw, rh = (x1 - x0) / cols, (y1 - y0) / rows
    if cw < 3 or rh < 3:
        return
    fw, fh = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65)
    for r in range(rows):
        for c in range(cols):
            wx, wy = x0 + (c + 0.5) * cw, y0 + (r + 0.5) * rh
            draw.rectangle([wx - fw * cw / 2, wy - fh * rh / 2, wx + fw * cw / 2, wy + fh * rh / 2],
                           fill=lit if rng.random() < 0.3 else colour)


def _courses(draw, rng, box, colour):
    """Brick courses / stone layers: thin darker lines across a wall."""
    x0, y0, x1, y1 = box
    step = float(rng.uniform(3.0, 8.0))
    y = y0 + step
    while y < y1:
        draw.line([x0, y, x1, y], fill=colour, width=1)
        y += step


def _building(draw, rng, kind: str, x: float, base: float, w: float, h: float, pal):
    wall, roof, trim, window, lit = pal
    x0, x1, top = x - w / 2, x + w / 2, base - h
    if kind == "block":
        draw.rectangle([x0, top, x1, base], fill=wall)
        _courses(draw, rng, (x0, top, x1, base), _shade(wall, 0.85))
        draw.rectangle([x0 - 2, top - 4, x1 + 2, top], fill=roof)
        _window_grid(draw, rng, (x0 + 3, top + 6, x1 - 3, base - 8), window, lit)
    elif kind == "tower":
        draw.rectangle([x0, top, x1, base], fill=wall)
        _courses(draw, rng, (x0, top, x1, base), _shade(wall, 0.8))
        spire = h * rng.uniform(0.25, 0.6)
        draw.polygon([(x0 - 2, top), (x1 + 2, top), (x, top - spire)], fill=roof)
        if rng.random() < 0.6:  # clock face
            r, cy = w * 0.3, top + h * 0.18
            draw.ellipse([x - r, cy - r, x + r, cy + r], fill=trim, outline=window)
        _window_grid(draw, rng, (x0 + 2, top + h * 0.35, x1 - 2, base - 4), window, lit)
    elif kind == "dome":
        draw.rectangle([x0, top + h * 0.45, x1, base], fill=wall)
        r, dh = w * rng.uniform(0.32, 0.5), h * 0.55
        draw.pieslice([x - r, top + h * 0.45 - dh, x + r, top + h * 0.45 + dh * 0.9], 180, 360, fill=roof)
        draw.line([x, top + h * 0.45 - dh, x, top + h * 0.45 - dh - h * 0.15], fill=trim, width=2)
        ncol = int(rng.integers(3, 7))
        for k in range(ncol):  # colonnade
            cx = x0 + (k + 0.5) * w / ncol
            draw.rectangle([cx - 1.5, top + h * 0.6, cx + 1.5, base], fill=trim)
    elif kind == "arch":
        draw.rectangle([x0, top, x1, base], fill=wall)
        _courses(draw, rng, (x0, top, x1, base), _shade(wall, 0.82))
        ow, oh = w * rng.uniform(0.35, 0.6), h * rng.uniform(0.45, 0.7)
        draw.rectangle([x - ow / 2, base - oh + ow / 2, x + ow / 2, base], fill=window)
        draw.ellipse([x - ow / 2, base - oh, x + ow / 2, base - oh + ow], fill=window)
        draw.rectangle([x0 - 3, top, x1 + 3, top + 5], fill=trim)
    elif kind == "pyramid":
        draw.polygon([(x0, base), (x1, base), (x, top)], fill=wall)
        for k in range(1, int(rng.integers(4, 9))):
            t = k / 9
            draw.line([(x0 + t * w / 2, base - t * h), (x1 - t * w / 2, base - t * h)],
                      fill=_shade(wall, 0.75), width=1)
        draw.polygon([(x, top), (x1, base), (x + w * 0.1, base)], fill=_shade(wall, 0.8))
    else:  # temple: steps, columns, pediment
        draw.rectangle([x0 - 3, base - 5, x1 + 3, base], fill=trim)
        ncol = int(rng.integers(4, 9))
        for k in range(ncol):
            cx = x0 + (k + 0.5) * w / ncol
            draw.rectangle([cx - w / ncol * 0.22, top + h * 0.3, cx + w / ncol * 0.22, base - 5], fill=wall)
        draw.rectangle([x0 - 2, top + h * 0.22, x1 + 2, top + h * 0.3], fill=trim)
        draw.polygon([(x0 - 3, top + h * 0.22), (x1 + 3, top + h * 0.22), (x, top)], fill=roof)


_KINDS = ("block", "tower", "dome", "arch", "pyramid", "temple")


def render_scene(seed: int, index: int, size: int = 160) -> Image.Image:
    """The canonical scene of landmark ``index`` (RGB, ``SCENE_SCALE * size`` pixels square)."""
    rng = _rng(seed, index, 0)
    S = int(round(size * SCENE_SCALE))
    hz = int(S * rng.uniform(0.58, 0.78))  # horizon
    sky = _SKIES[int(rng.integers(len(_SKIES)))]
    top = _hsv(rng.uniform(*sky[0]), rng.uniform(*sky[1]), rng.uniform(*sky[2]))
    hor = _hsv(rng.uniform(*sky[3]), rng.uniform(*sky[4]), rng.uniform(*sky[5]))
    g_h, g_s, g_v = rng.uniform(0.05, 0.4), rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.7)
    ground = _gradient(S - hz, S, _hsv(g_h, g_s, g_v * 0.8), _hsv(g_h + 0.03, g_s, g_v * 1.2))
    ground *= _ground_texture(rng, S - hz, S)
    arr = np.concatenate([_gradient(hz, S, top, hor, rng.uniform(0.6, 1.6)), ground], axis=0)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)

    if rng.random() < 0.5:  # sun or moon
        r = S * rng.uniform(0.03, 0.07)
        cx, cy = S * rng.uniform(0.1, 0.9), hz * rng.uniform(0.1, 0.5)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_hsv(rng.uniform(0.1, 0.17), 0.3, 1.0))
    for _ in range(int(rng.integers(0, 4))):  # clouds
        cx, cy, cw = S * rng.uniform(0, 1), hz * rng.uniform(0.05, 0.5), S * rng.uniform(0.08, 0.2)
        shade = int(rng.uniform(200, 250))
        for _ in range(3):
            dx, dy = rng.uniform(-0.5, 0.5) * cw, rng.uniform(-0.15, 0.15) * cw
            draw.ellipse([cx + dx - cw / 2, cy + dy - cw / 5, cx + dx + cw / 2, cy + dy + cw / 5],
                         fill=(shade, shade, min(255, shade + 5)))
    if rng.random() < 0.7:  # hills behind the skyline
        xs, ys = np.linspace(0, S, 9), hz - S * rng.uniform(0.02, 0.14, size=9)
        hill = _hsv(rng.uniform(0.2, 0.45), rng.uniform(0.2, 0.5), rng.uniform(0.3, 0.6))
        draw.polygon([(0, hz)] + list(zip(xs.tolist(), ys.tolist())) + [(S, hz)], fill=hill)

    h0 = rng.uniform(0, 1)  # the landmark's palette: wall, roof, trim, window, lit window
    spread = rng.uniform(0.03, 0.2)
    walls = [_hsv(h0 + rng.uniform(-spread, spread), rng.uniform(0.1, 0.7), rng.uniform(0.45, 0.95))
             for _ in range(3)]
    roof = _hsv(h0 + rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.9), rng.uniform(0.25, 0.75))
    trim = _hsv(h0 + 0.5, rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0))
    window = _hsv(rng.uniform(0.5, 0.7), rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.35))
    lit = _hsv(rng.uniform(0.1, 0.16), 0.5, 0.95)

    n = int(rng.integers(3, 7))
    kinds = rng.choice(len(_KINDS), size=n)
    centres = np.sort(rng.uniform(0.12, 0.88, size=n)) * S
    order = np.argsort(-rng.uniform(size=n))  # draw back to front
    for i in order:
        w, kind = S * rng.uniform(0.1, 0.28), _KINDS[int(kinds[i])]
        h = S * rng.uniform(*{"tower": (0.35, 0.6), "pyramid": (0.2, 0.35)}.get(kind, (0.18, 0.4)))
        base = hz + S * rng.uniform(0.0, 0.08)
        _building(draw, rng, kind, float(centres[i]), base, w, h, (walls[i % 3], roof, trim, window, lit))
    # fixed fine grain: part of the landmark's surface, identical in every view
    grain = rng.normal(0.0, rng.uniform(2.0, 7.0), size=(S, S, 1)).astype(np.float32)
    arr = np.asarray(img, np.float32) + grain
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- the views

def perspective_coeffs(dst, src) -> tuple[float, ...]:
    """The 8 PIL PERSPECTIVE coefficients mapping output points ``dst`` to input points ``src``."""
    a, b = np.zeros((8, 8)), np.zeros(8)
    for k, ((x, y), (u, v)) in enumerate(zip(dst, src)):
        a[2 * k] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * k + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * k], b[2 * k + 1] = u, v
    return tuple(float(c) for c in np.linalg.solve(a, b))


def _source_quad(rng, S: int) -> np.ndarray:
    """Where the output corners land in the scene: crop + scale + rotation + perspective."""
    side = S * rng.uniform(0.55, 0.85)
    aspect = math.exp(rng.uniform(-0.15, 0.15))
    hw, hh = side * math.sqrt(aspect) / 2, side / math.sqrt(aspect) / 2
    quad = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    keystone = rng.uniform(-0.12, 0.12) * hw  # camera tilt: top edge narrower or wider
    quad[:2, 0] += np.array([keystone, -keystone])
    pan = rng.uniform(-0.1, 0.1) * hh  # camera pan: left edge taller or shorter
    quad[[0, 3], 1] += np.array([pan, -pan])
    quad += rng.uniform(-0.05, 0.05, size=(4, 2)) * side
    t = math.radians(rng.uniform(-8, 8))
    quad = quad @ np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    quad += S / 2 + rng.uniform(-0.1, 0.1, size=2) * S
    for ax in range(2):  # keep the quad inside the scene: shrink if needed, then shift
        lo, hi = quad[:, ax].min(), quad[:, ax].max()
        if hi - lo > S - 1:
            c = (hi + lo) / 2
            quad[:, ax] = c + (quad[:, ax] - c) * (S - 1) / (hi - lo)
            lo, hi = quad[:, ax].min(), quad[:, ax].max()
        quad[:, ax] += max(0.0, -lo) - max(0.0, hi - (S - 1))
    return quad


def _occlude(img: Image.Image, rng) -> None:
    W = img.width
    draw = ImageDraw.Draw(img)
    col = tuple(int(c) for c in rng.integers(0, 256, size=3))
    kind = int(rng.integers(5))
    s = W * rng.uniform(0.12, 0.32)
    x, y = W * rng.uniform(0.05, 0.95), W * rng.uniform(0.35, 1.0)
    if kind == 0:  # tree
        draw.rectangle([x - s * 0.08, y - s * 0.5, x + s * 0.08, W], fill=_shade(col, 0.4))
        draw.ellipse([x - s / 2, y - s * 1.2, x + s / 2, y - s * 0.3],
                     fill=_hsv(rng.uniform(0.2, 0.4), 0.6, 0.45))
    elif kind == 1:  # person
        draw.ellipse([x - s * 0.12, y - s, x + s * 0.12, y - s * 0.76], fill=_hsv(0.07, 0.4, 0.7))
        draw.rounded_rectangle([x - s * 0.2, y - s * 0.74, x + s * 0.2, W], radius=s * 0.08, fill=col)
    elif kind == 2:  # lamp post / pole
        draw.rectangle([x - 2, y - s * 1.5, x + 2, W], fill=_shade(col, 0.3))
        draw.ellipse([x - 5, y - s * 1.5 - 5, x + 5, y - s * 1.5 + 5], fill=col)
    elif kind == 3:  # blob (a thumb, a leaf)
        pts = [(x + s * 0.5 * math.cos(a) * rng.uniform(0.6, 1.2),
                y + s * 0.5 * math.sin(a) * rng.uniform(0.6, 1.2))
               for a in np.linspace(0, 2 * math.pi, 9)[:-1]]
        draw.polygon(pts, fill=col)
    else:  # box, sign, parked van
        draw.rectangle([x - s / 2, y - s * 0.4, x + s / 2, y + s * 0.2], fill=col, outline=_shade(col, 0.5))


def _relight(img: Image.Image, rng) -> Image.Image:
    a = np.asarray(img, np.float32) / 255.0
    lum = a @ np.array([0.299, 0.587, 0.114], np.float32)
    a = lum[..., None] + (a - lum[..., None]) * rng.uniform(0.6, 1.4)  # saturation
    a = (a - lum.mean()) * rng.uniform(0.7, 1.3) + lum.mean()  # contrast
    a = a * rng.uniform(0.65, 1.35) * rng.uniform(0.88, 1.12, size=3).astype(np.float32)  # exposure, cast
    a = np.clip(a, 0.0, 1.0) ** rng.uniform(0.8, 1.25)  # gamma
    a = a * 255.0 + rng.normal(0.0, rng.uniform(0.5, 3.0), size=a.shape)  # sensor noise
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")


def render_view(scene: Image.Image, seed: int, index: int, view: int, size: int = 160) -> bytes:
    """JPEG bytes of view ``view`` of landmark ``index`` (whose ``scene`` is given)."""
    rng = _rng(seed, index, view + 1)
    quad = _source_quad(rng, scene.width)
    dst = [(0, 0), (size, 0), (size, size), (0, size)]
    img = scene.transform((size, size), Image.Transform.PERSPECTIVE,
                          perspective_coeffs(dst, quad.tolist()), Image.Resampling.BILINEAR)
    _occlude(img, rng)
    img = _relight(img, rng)
    radius = float(rng.uniform(0.0, 1.3))
    if radius > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(25, 91)))  # an earlier, lossier upload
    buf.seek(0)
    img = Image.open(buf).convert("RGB")
    out = io.BytesIO()
    img.save(out, "JPEG", quality=int(rng.integers(80, 96)))
    return out.getvalue()


def iter_views(n_landmarks: int = 40, views_per_landmark: int = 10, size: int = 160,
               seed: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(landmark_index, view_index, jpeg_bytes)`` for the whole data set."""
    if n_landmarks < 1 or views_per_landmark < 1 or size < 16:
        raise ValueError("need n_landmarks >= 1, views_per_landmark >= 1 and size >= 16")
    for i in range(n_landmarks):
        scene = render_scene(seed, i, size)
        for v in range(views_per_landmark):
            yield i, v, render_view(scene, seed, i, v, size)


# --------------------------------------------------------------------------- the layouts

def generate_landmarks(out_dir, n_landmarks: int = 40, views_per_landmark: int = 10,
                       size: int = 160, seed: int = 0) -> dict:
    """Write ``out_dir/<label>/<label>_<view>.jpg`` and return a summary of what was written."""
    root = pathlib.Path(out_dir)
    paths, path_labels = [], []
    for i, v, data in iter_views(n_landmarks, views_per_landmark, size, seed):
        label = landmark_label(i)
        path = root / label / f"{label}_{v:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(str(path))
        path_labels.append(label)
    labels = [landmark_label(i) for i in range(n_landmarks)]
    return {"root": str(root), "layout": "folder", "seed": seed, "size": size, "n_landmarks": n_landmarks,
            "views_per_landmark": views_per_landmark, "n_images": len(paths), "labels": labels,
            "counts": {lab: views_per_landmark for lab in labels}, "paths": paths, "path_labels": path_labels}


def gldv2_path(image_root, image_id_: str) -> pathlib.Path:
    """GLDv2 layout: ``root/<id[0]>/<id[1]>/<id[2]>/<id>.jpg`` (ImageExampleGen's own rule)."""
    from components.image_example_gen.inputs import gldv2_relpath

    return pathlib.Path(image_root, *gldv2_relpath(image_id_).split("/"))


def write_manifest_csv(out_dir, n_landmarks: int = 40, views_per_landmark: int = 10,
                       size: int = 160, seed: int = 0, csv_path=None, image_root=None) -> dict:
    """Write the data set in the GLDv2 layout with an ``id,landmark_id`` CSV.

    Images go to ``image_root`` (default ``out_dir/train``) at ``<id[0]>/<id[1]>/<id[2]>/<id>.jpg``;
    the CSV (default ``out_dir/train.csv``) has one row per image, sorted by id. The images are
    the same bytes as ``generate_landmarks`` writes for the same arguments.
    """
    out = pathlib.Path(out_dir)
    image_root = pathlib.Path(image_root) if image_root is not None else out / "train"
    csv_path = pathlib.Path(csv_path) if csv_path is not None else out / "train.csv"
    rows, paths = [], {}
    for i, v, data in iter_views(n_landmarks, views_per_landmark, size, seed):
        iid = image_id(seed, i, v)
        path = gldv2_path(image_root, iid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append((iid, landmark_id(i)))
        paths[iid] = str(path)
    if len({r[0] for r in rows}) != len(rows):
        raise RuntimeError("image id collision")  # 64-bit ids: not expected to happen
    rows.sort()
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "landmark_id"])
        w.writerows(rows)
    return {"csv": str(csv_path), "image_root": str(image_root), "layout": "gldv2", "seed": seed,
            "size": size, "n_landmarks": n_landmarks, "views_per_landmark": views_per_landmark,
            "n_images": len(rows), "rows": rows, "paths": paths,
            "landmark_ids": {landmark_label(i): landmark_id(i) for i in range(n_landmarks)}}


# --------------------------------------------------------------------------- sanity check

def histogram_nn_top1(paths, labels, bins: int = 8) -> float:
    """Leave-one-out top-1 accuracy of nearest-neighbour retrieval on joint RGB histograms (L1)."""
    feats = np.zeros((len(paths), bins ** 3), np.float32)
    for k, p in enumerate(paths):
        with Image.open(p) as im:
            q = (np.asarray(im.convert("RGB"), np.int32) * bins) // 256
        cells = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
        feats[k] = np.bincount(cells.ravel(), minlength=bins ** 3)
    feats /= feats.sum(1, keepdims=True)
    d = np.abs(feats[:, None, :] - feats[None, :, :]).sum(-1)
    np.fill_diagonal(d, np.inf)
    labels = np.asarray(labels)
    return float((labels[d.argmin(1)] == labels).mean())


def main(argv=None) -> None:
    """``python -m pipeline.demo_data OUT_DIR [N_LANDMARKS VIEWS SIZE SEED]``"""
    import sys
    import time

    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0].startswith("-"):
        raise SystemExit(main.__doc__.strip("`"))
    n, v, size, seed = (list(map(int, args[1:])) + [40, 10, 160, 0][len(args) - 1:])[:4]
    t0 = time.perf_counter()
    s = generate_landmarks(args[0], n, v, size, seed)
    dt = time.perf_counter() - t0
    acc = histogram_nn_top1(s["paths"], s["path_labels"])
    print(f"{s['n_images']} images ({n} x {v}, {size} px, seed {seed}) in {dt:.2f} s -> {args[0]}; "
          f"colour-histogram NN top-1 {acc:.3f} (chance {1 / n:.3f})")


if __name__ == "__main__":
    main()
