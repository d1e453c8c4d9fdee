"""Backbone registry: a name -> a tf_keras application and its two taps.

DOLG reads two stages of a backbone: the last stride-16 feature map (the local branch; ResNet's
res4) and the last stride-32 map (the global branch; ResNet's res5). A tap is a layer name, or
a prefix ending in "*" meaning "the last layer whose name starts with it" (EfficientNet's block
counts differ per size, but its stride-16 stage is always block5). tests/dolg_model checks
every entry's taps really are at stride 16 and 32.

No TensorFlow import at module level: DOLGConfig validates names against this table cheaply.
"""
import dataclasses
from typing import Callable, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where to tap it.

    Args:
      constructor: attribute of tf.keras.applications (e.g. "ResNet50").
      local_tap: last stride-16 layer (name or "prefix*").
      global_tap: last stride-32 layer (name or "prefix*").
      preprocess: BackbonePreprocess mode for inputs in [0, 255].
      kwargs: extra constructor arguments.
    """

    constructor: str
    local_tap: str
    global_tap: str
    preprocess: str
    kwargs: Tuple[Tuple[str, object], ...] = ()


def _efficientnets():
    specs = {}
    for size in range(8):
        specs[f"efficientnetb{size}"] = BackboneSpec(f"EfficientNetB{size}", "block5*", "top_activation", "none")
    for size in ("B0", "B1", "B2", "B3", "S", "M", "L"):
        # EfficientNetV2 normalises internally when include_preprocessing=True (the default).
        specs[f"efficientnetv2{size.lower()}"] = BackboneSpec(
            f"EfficientNetV2{size}", "block5*", "top_activation", "none")
    return specs


BACKBONES = {
    "resnet50": BackboneSpec("ResNet50", "conv4_block6_out", "conv5_block3_out", "caffe"),
    "resnet101": BackboneSpec("ResNet101", "conv4_block23_out", "conv5_block3_out", "caffe"),
    "resnet152": BackboneSpec("ResNet152", "conv4_block36_out", "conv5_block3_out", "caffe"),
    **_efficientnets(),
    "densenet121": BackboneSpec("DenseNet121", "conv4_block24_concat", "relu", "torch"),
    "densenet169": BackboneSpec("DenseNet169", "conv4_block32_concat", "relu", "torch"),
    "densenet201": BackboneSpec("DenseNet201", "conv4_block48_concat", "relu", "torch"),
    # MobileNetV3 rescales its own inputs; the taps are the last residual add of each stage.
    "mobilenetv3small": BackboneSpec("MobileNetV3Small", "expanded_conv_7/Add", "expanded_conv_10/Add", "none",
                                     (("include_preprocessing", True),)),
    "mobilenetv3large": BackboneSpec("MobileNetV3Large", "expanded_conv_11/Add", "expanded_conv_14/Add", "none",
                                     (("include_preprocessing", True),)),
}


def resolve_tap(model, tap: str) -> str:
    """The concrete layer name `tap` designates in `model` (see the module docstring)."""
    names = [layer.name for layer in model.layers]
    if tap.endswith("*"):
        matches = [n for n in names if n.startswith(tap[:-1])]
        if not matches:
            raise ValueError(f"backbone {model.name!r} has no layer starting with {tap[:-1]!r}")
        return matches[-1]
    if tap not in names:
        raise ValueError(f"backbone {model.name!r} has no layer named {tap!r}")
    return tap


def build_backbone(name: str, weights: Optional[str] = None, custom_model=None,
                   local_tap: Optional[str] = None, global_tap: Optional[str] = None):
    """Builds a backbone for inputs of any size and returns (model, local_name, global_name, preprocess).

    Args:
      name: a key of BACKBONES, or "custom".
      weights: None, "imagenet" (downloaded by Keras on first use; never by the tests), or a
        path to a local weights file.
      custom_model: for name == "custom", any Keras model taking (None, None, 3) images.
      local_tap, global_tap: for "custom", the layer names of its stride-16 and stride-32 maps.
    """
    import tensorflow as tf

    if name == "custom":
        if custom_model is None or not local_tap or not global_tap:
            raise ValueError("a custom backbone needs custom_model, local_tap and global_tap")
        return (custom_model, resolve_tap(custom_model, local_tap),
                resolve_tap(custom_model, global_tap), "none")
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} or 'custom'")
    spec = BACKBONES[name]
    constructor: Callable = getattr(tf.keras.applications, spec.constructor)
    model = constructor(include_top=False, weights=weights, input_shape=(None, None, 3), **dict(spec.kwargs))
    return model, resolve_tap(model, spec.local_tap), resolve_tap(model, spec.global_tap), spec.preprocess
