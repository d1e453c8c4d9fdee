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


def overlay(image, heat, alpha=0.5):
    """The image with `heat` ([0, 1], same height and width) blended on top as a colour map.

    Returns a PIL image. Low attention is dark blue, high attention is yellow-red."""
    from PIL import Image

    image = np.asarray(image, np.float32)
    heat = np.clip(np.asarray(heat, np.float32), 0.0, 1.0)[..., None]
    # A small perceptual ramp (blue -> magenta -> orange -> yellow) without matplotlib.
    stops = np.array([[0, 0, 96], [160, 0, 160], [255, 128, 0], [255, 255, 96]], np.float32)
    pos = heat * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = pos - lo
    colour = stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac
    blended = (1 - alpha) * image + alpha * colour
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), "RGB")


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
