"""DOLGConfig: every choice that shapes the network and its training head, in one place."""
import dataclasses
import json
from typing import Optional, Tuple

MULTI_ATROUS_VARIANTS = ("none", "authors", "kaggle")
HEADS = ("arcface", "subcenter_arcface", "curricularface")


class ConfigError(ValueError):
    """A config field holds a value the model cannot be built with."""

    def __init__(self, field: str, value, why: str):
        super().__init__(f"DOLGConfig.{field}={value!r}: {why}")
        self.field = field
        self.value = value


@dataclasses.dataclass(frozen=True)
class DOLGConfig:
    """The DOLG network, its margin head and its test-time descriptor.

    Args:
      backbone: a name from `dolg_model.backbones.BACKBONES` (e.g. "resnet50",
        "efficientnetb0", "mobilenetv3small"), or "custom" with `custom_local_layer` and
        `custom_global_layer` naming the two taps of a Keras model given to build_dolg().
      image_size: training resolution (square side in pixels). The model itself accepts any
        height and width.
      embedding_dim: size of the L2-normalised descriptor.
      local_dim: channels of the local branch and of the projected global vector (paper: 1024).
      multi_atrous: "none" (as the authors' released weights), "authors" (dilated 3x3 convs +
        1x1 + image-pool branches) or "kaggle" (dilated 3x3 convs only).
      atrous_rates: dilation rates of the 3x3 branches.
      atrous_branch_dim: channels of each multi-atrous branch.
      gem_p: initial GeM exponent (trainable).
      head: margin head used in training: "arcface", "subcenter_arcface" or "curricularface".
      scale: the logit scale s of the margin head.
      margin: the angular margin m (or the mean margin when dynamic margins are off).
      subcenters: k, the sub-centres per class of "subcenter_arcface" (1 for the others).
      easy_margin: ArcFace's easy-margin variant (apply the margin only where cos > 0).
      dynamic_margins: per-class margins from class counts (rare classes get larger margins).
      margin_min, margin_max: the range of the dynamic margins.
      label_smoothing: label smoothing of the cross-entropy on the margin logits.
      scales: test-time scales of the multi-scale descriptor.
      weights: None (random), "imagenet", or a path to a local weights file for the backbone.
      bn_momentum: if set, the momentum of every BatchNormalization layer (backbone included).
        Keras' 0.99 needs hundreds of steps before the moving statistics used at inference
        catch up; short fine-tuning runs on small data want about 0.9.
      custom_local_layer, custom_global_layer: the taps of a "custom" backbone.
    """

    backbone: str = "resnet50"
    image_size: int = 512
    embedding_dim: int = 512
    local_dim: int = 1024
    multi_atrous: str = "none"
    atrous_rates: Tuple[int, ...] = (6, 12, 18)
    atrous_branch_dim: int = 512
    gem_p: float = 3.0
    head: str = "curricularface"
    scale: float = 30.0
    margin: float = 0.15
    subcenters: int = 1
    easy_margin: bool = False
    dynamic_margins: bool = False
    margin_min: float = 0.05
    margin_max: float = 0.50
    label_smoothing: float = 0.0
    scales: Tuple[float, ...] = (0.7071, 1.0, 1.4142)
    weights: Optional[str] = None
    bn_momentum: Optional[float] = None
    custom_local_layer: Optional[str] = None
    custom_global_layer: Optional[str] = None

    def __post_init__(self):
        # Lists arrive from JSON; keep tuples so the config stays hashable and comparable.
        for name in ("atrous_rates", "scales"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError naming the first bad field and its value."""
        from dolg_model import backbones  # late: backbones imports TensorFlow

        if self.backbone != "custom" and self.backbone not in backbones.BACKBONES:
            raise ConfigError("backbone", self.backbone,
                              f"unknown; choose one of {sorted(backbones.BACKBONES)} or 'custom'")
        if self.backbone == "custom" and not (self.custom_local_layer and self.custom_global_layer):
            raise ConfigError("custom_local_layer", self.custom_local_layer,
                              "a custom backbone needs custom_local_layer and custom_global_layer")
        _positive_int("image_size", self.image_size, minimum=32)
        _positive_int("embedding_dim", self.embedding_dim)
        _positive_int("local_dim", self.local_dim)
        _positive_int("atrous_branch_dim", self.atrous_branch_dim)
        _positive_int("subcenters", self.subcenters)
        if self.multi_atrous not in MULTI_ATROUS_VARIANTS:
            raise ConfigError("multi_atrous", self.multi_atrous, f"choose one of {MULTI_ATROUS_VARIANTS}")
        if not self.atrous_rates or any(not isinstance(r, int) or r < 1 for r in self.atrous_rates):
            raise ConfigError("atrous_rates", self.atrous_rates, "needs one or more integer rates >= 1")
        if self.head not in HEADS:
            raise ConfigError("head", self.head, f"choose one of {HEADS}")
        if self.head != "subcenter_arcface" and self.subcenters != 1:
            raise ConfigError("subcenters", self.subcenters, f"only subcenter_arcface has sub-centres, not {self.head}")
        if not self.gem_p >= 1.0:
            raise ConfigError("gem_p", self.gem_p, "GeM needs p >= 1")
        if not self.scale > 0:
            raise ConfigError("scale", self.scale, "the logit scale must be > 0")
        if not 0.0 <= self.margin < 1.0:
            raise ConfigError("margin", self.margin, "the margin (radians) must be in [0, 1)")
        if not 0.0 <= self.margin_min <= self.margin_max < 1.0:
            raise ConfigError("margin_min", (self.margin_min, self.margin_max),
                              "needs 0 <= margin_min <= margin_max < 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("label_smoothing", self.label_smoothing, "must be in [0, 1)")
        if not self.scales or any(not (isinstance(s, (int, float)) and s > 0) for s in self.scales):
            raise ConfigError("scales", self.scales, "needs one or more positive scales")
        if self.bn_momentum is not None and not 0.0 <= self.bn_momentum < 1.0:
            raise ConfigError("bn_momentum", self.bn_momentum, "must be in [0, 1) or None")
        if self.weights not in (None, "imagenet") and not isinstance(self.weights, str):
            raise ConfigError("weights", self.weights, "None, 'imagenet' or a path to a weights file")

    def replace(self, **changes) -> "DOLGConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DOLGConfig":
        check_fields(cls, values)
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DOLGConfig":
        return cls.from_dict(json.loads(text))


def check_fields(cls, values: dict, where: str = "") -> None:
    """Raises ConfigError naming the first key of `values` that is not a field of dataclass `cls`."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(unknown[0], values[unknown[0]], f"no such field in {cls.__name__}{where}")


def _positive_int(field, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(field, value, f"must be an integer >= {minimum}")
