"""The search grid: frames by label agreement and two readable caption lines per tile."""
import io

import numpy as np
from PIL import Image

from components.retrieval import search_grid as g


def _png(colour):
    out = io.BytesIO()
    Image.new("RGB", (50, 30), colour).save(out, format="PNG")
    return out.getvalue()


def test_tiles_are_framed_and_captioned_on_two_lines():
    results = [(1, 0.987, "a/1.jpg", "tower", _png((200, 0, 0))),
               (2, 0.5, "b/2.jpg", "a-very-long-landmark-name-that-cannot-fit-in-one-tile", _png((0, 0, 200)))]
    pic = np.asarray(g.render_grid(_png((0, 200, 0)), "tower", results))
    assert pic.shape[:2] == g.grid_size(2)[::-1]
    tile = g.CELL + 2 * g.BORDER
    for t, colour in enumerate((g.QUERY_COLOUR, g.SAME_COLOUR, g.OTHER_COLOUR)):
        x0 = g.PAD + t * (tile + g.PAD)
        assert tuple(pic[g.PAD + 1, x0 + 1]) == colour
        caption = pic[g.PAD + tile:g.PAD + tile + g.CAPTION, x0:x0 + tile]
        ink = (caption.min(axis=2) < 128)
        first, second = ink[: g.CAPTION // 2], ink[g.CAPTION // 2:]
        assert first.any() and second.any(), f"tile {t}: a caption line is empty"
        # The long label is cut to the tile: nothing is written into the gap after it.
        gap = pic[g.PAD + tile:, x0 + tile:x0 + tile + g.PAD]
        assert (gap == 255).all()
