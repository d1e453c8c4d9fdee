"""The picture of a search: the query and its top-k results side by side, each framed by
whether its label matches the query's (green), does not (red) or cannot be told (grey)."""
from __future__ import annotations

import os
from typing import Optional

# Grid geometry (pixels): each tile is a CELL x CELL thumbnail inside a BORDER-wide coloured
# frame, with a CAPTION strip of two text lines under it; tiles are PAD apart. grid_size() is
# the one formula.
CELL, BORDER, CAPTION, PAD = 128, 5, 38, 6
FONT_SIZE = 13
QUERY_COLOUR, SAME_COLOUR, OTHER_COLOUR, UNKNOWN_COLOUR = (40, 90, 220), (20, 170, 60), (210, 40, 40), (150, 150, 150)


def grid_size(n_results: int) -> tuple[int, int]:
    """(width, height) of the grid for a query and ``n_results`` results in one row."""
    tile = CELL + 2 * BORDER
    return PAD + (n_results + 1) * (tile + PAD), PAD + tile + CAPTION + PAD


def _thumbnail(source):
    """An RGB thumbnail that fits CELL x CELL (upright per EXIF), or None if unreadable.
    ``source``: a file path or the image's encoded bytes."""
    import io

    from PIL import Image, ImageOps

    if not source:
        return None
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.seek(0)
            # contain() scales up as well as down: small images must still fill the cell.
            return ImageOps.contain(ImageOps.exif_transpose(im).convert("RGB"), (CELL, CELL))
    except Exception:  # Pillow raises many types; a missing thumbnail must not stop the grid
        return None


def _fit(draw, text: str, font, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels in ``font``."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_grid(query, query_label: Optional[str], results: list, out=None):
    """Draws the grid: the query (blue frame), then each result with its rank, score and label.

    A result's frame is green when its label equals the query's, red when it differs, and
    grey when either label is unknown (no claim can be made then).

    Args:
      query: the query image, a path or encoded bytes.
      query_label: its label, or None when unknown.
      results: (rank, score, id, label, image) tuples, best first; image is a path or bytes.
      out: where to save the PNG (a path or a file object), or None.
    Returns:
      The PIL image.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=FONT_SIZE)
    canvas = Image.new("RGB", grid_size(len(results)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    tile = CELL + 2 * BORDER
    tiles = [(query, QUERY_COLOUR, "query", "" if query_label is None else str(query_label))]
    for rank, score, image_id, label, image in results:
        if query_label is None or label is None:
            colour = UNKNOWN_COLOUR
        else:
            colour = SAME_COLOUR if label == query_label else OTHER_COLOUR
        tiles.append((image, colour, f"#{rank}  {score:.3f}", str(label if label not in (None, "") else image_id)))
    for t, (image, colour, first, second) in enumerate(tiles):
        x0, y0 = PAD + t * (tile + PAD), PAD
        draw.rectangle([x0, y0, x0 + tile - 1, y0 + tile - 1], fill=colour)
        draw.rectangle([x0 + BORDER, y0 + BORDER, x0 + BORDER + CELL - 1, y0 + BORDER + CELL - 1],
                       fill=(32, 32, 32))
        thumb = _thumbnail(image)
        if thumb is not None:  # centred in the cell, aspect ratio kept
            canvas.paste(thumb, (x0 + BORDER + (CELL - thumb.width) // 2,
                                 y0 + BORDER + (CELL - thumb.height) // 2))
        else:
            draw.text((x0 + tile // 2, y0 + tile // 2), "?", fill=(255, 255, 255), font=font, anchor="mm")
        draw.text((x0 + 2, y0 + tile + 3), _fit(draw, first, font, tile - 4), fill=(0, 0, 0), font=font)
        draw.text((x0 + 2, y0 + tile + 4 + FONT_SIZE + 2), _fit(draw, second, font, tile - 4),
                  fill=(70, 70, 70), font=font)
    if out is not None:
        canvas.save(out, format="PNG")
    return canvas


def gallery_row(image_path: str, index) -> Optional[int]:
    """The row of the gallery entry made from the same file as the query, or None."""
    # Gallery paths are stored absolute (as scanned); compare strings, not one realpath per
    # gallery entry, which would stat every file of a large gallery.
    real, absolute = os.path.realpath(image_path), os.path.abspath(image_path)
    for row, path in enumerate(index.paths or ()):
        if path in (real, absolute):
            return row
    return None


def infer_query_label(image_path: str, index) -> Optional[str]:
    """The query's label when the gallery tells it: the label of the gallery entry with the
    same file, else the query's parent folder name when that is one of the gallery's labels."""
    if not index.labels:
        return None
    row = gallery_row(image_path, index)
    if row is not None:
        return index.labels[row]
    parent = os.path.basename(os.path.dirname(os.path.realpath(image_path)))
    return parent if parent in set(index.labels) else None
