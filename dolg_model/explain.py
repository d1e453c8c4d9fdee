"""Explanations: where DOLG's local branch looks, as a heatmap over the image."""
import numpy as np
import tensorflow as tf

from dolg_model.model import attention_model


def unit_range(values):
    """`values` scaled to [0, 1] (all zeros when constant)."""
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def attention_map(dolg, image) -> np.ndarray:
    """The local attention map of one image, upsampled to the image's size, scaled to [0, 1].

    Args:
      dolg: the descriptor model (from build_dolg or loaded from a save).
      image: (H, W, 3) RGB pixels in [0, 255].
    """
    image = np.asarray(image, np.float32)
    att = attention_model(dolg)(image[np.newaxis], training=False)[0]  # (h, w) at stride 16
    att = tf.image.resize(att[..., tf.newaxis], image.shape[:2], method="bilinear")[..., 0].numpy()
    return unit_range(att)


# A small perceptual ramp (blue -> magenta -> orange -> yellow) without matplotlib.
_RAMP = np.array([[0, 0, 96], [160, 0, 160], [255, 128, 0], [255, 255, 96]], np.float32)


def colour_map(heat) -> np.ndarray:
    """RGB float colours for values in [0, 1] (any shape; a last axis of 3 is added)."""
    heat = np.clip(np.asarray(heat, np.float32), 0.0, 1.0)[..., None]
    pos = heat * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    frac = pos - lo
    return _RAMP[lo[..., 0]] * (1 - frac) + _RAMP[lo[..., 0] + 1] * frac


def overlay(image, heat, alpha=0.5):
    """The image with `heat` ([0, 1], same height and width) blended on top as a colour map.

    Returns a PIL image. Low attention is dark blue, high attention is yellow-red."""
    from PIL import Image

    blended = (1 - alpha) * np.asarray(image, np.float32) + alpha * colour_map(heat)
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), "RGB")


def with_colour_bar(picture, bar_width=14):
    """``picture`` (a PIL image) with the colour map's scale on its right: a vertical bar from
    low (bottom) to high (top) attention, its ends and middle marked. The map is relative (scaled
    to [0, 1] per image), so the marks say low/high rather than absolute values."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(10, min(14, picture.height // 12)))
    draw_probe = ImageDraw.Draw(picture)
    text_width = int(max(draw_probe.textlength(t, font=font) for t in ("high", "low", "mid")))
    margin = 6
    height = max(picture.height, 60)
    out = Image.new("RGB", (picture.width + 3 * margin + bar_width + text_width, height), (255, 255, 255))
    out.paste(picture, (0, 0))
    top, bottom = margin, height - margin - 1
    values = np.linspace(1.0, 0.0, bottom - top + 1)[:, None].repeat(bar_width, axis=1)
    out.paste(Image.fromarray(colour_map(values).astype(np.uint8), "RGB"), (picture.width + margin, top))
    draw = ImageDraw.Draw(out)
    x_text = picture.width + 2 * margin + bar_width
    for text, y, anchor in (("high", top, "lt"), ("mid", (top + bottom) // 2, "lm"), ("low", bottom, "lb")):
        draw.text((x_text, y), text, fill=(0, 0, 0), font=font, anchor=anchor)
    return out


def load_descriptor_model(path):
    """A DOLG descriptor model from a Keras save (.keras, .h5 or a SavedModel directory)."""
    import dolg_model.heads  # noqa: F401  (registers the custom objects)
    import dolg_model.layers  # noqa: F401
    import dolg_model.training  # noqa: F401

    model = tf.keras.models.load_model(str(path), compile=False)
    if model.name != "dolg":
        # A Pusher/Trainer export wraps the descriptor; find it by name.
        inner = [m for m in model.submodules if isinstance(m, tf.keras.Model) and m.name == "dolg"]
        if not inner:
            raise ValueError(f"{path}: no DOLG descriptor model (a Keras model named 'dolg') inside")
        model = inner[0]
    return model
