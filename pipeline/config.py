"""PipelineConfig: every parameter of a run in one object, with named presets.

The model's own parameters are a DOLGConfig inside it. The whole config travels to the
Transform and Trainer modules as JSON in their custom_config, so both read the same values.
"""
import dataclasses
import json
import pathlib
from typing import Optional, Tuple

from components.images.rules import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from components.image_example_gen.inputs import DEFAULT_FINGERPRINT_MAX_FILES
from dolg_model.config import ConfigError, DOLGConfig, check_fields

# Kubeflow's rule for pipeline names, applied to every run so a local config compiles too.
PIPELINE_NAME_RULE = r"[a-z0-9][a-z0-9-]{0,127}"
# The Transform and Trainer modules, by import path (never module_file: see kubeflow_runner).
PREPROCESSING_FN = "pipeline.preprocessing.preprocessing_fn"
RUN_FN = "pipeline.trainer.run_fn"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """One pipeline run.

    Args:
      pipeline_name: [a-z0-9][a-z0-9-]* (Kubeflow's rule, applied everywhere).
      eval_fraction: share of LABELS held out for evaluation (retrieval on unseen classes).
      max_bytes, max_pixels: ingestion caps; larger files are reported, not emitted.
      resize_mode: "pad" (keep the aspect ratio) or "squash".
      batch_size: global training batch (split over replicas).
      train_steps: optimizer steps of the run.
      steps_per_epoch: steps between checkpoints/backups and TensorBoard epoch summaries.
      optimizer: "sgd" (Nesterov, the paper's) or "adamw".
      learning_rate, warmup_steps, weight_decay: the schedule (warm-up then cosine).
      augment: random resized crop, horizontal flip and colour jitter in training.
      mixed_precision: "auto" (on when a GPU is present), "on" or "off".
      seed: seeds the weights' initialisation and the shuffle order; every worker of a
        multi-worker run must draw the same order for the data to split into distinct shares.
      min_map: the Evaluator blesses only above this retrieval mAP.
      max_map_drop: and only if mAP fell by at most this much from the last blessed model.
      eval_qe, eval_qe_alpha: the Evaluator also reports the α-query-expanded scores
        (``retrieval_mAP_qe``, ...; top ``eval_qe`` merged, weights similarity ** alpha); 0: not.
      bless_on_qe: min_map and max_map_drop apply to retrieval_mAP_qe instead of the plain
        retrieval_mAP (needs eval_qe > 0).
      beam_mode: "in_memory" or "multi_processing" for the DirectRunner.
      beam_workers: DirectRunner workers in multi_processing mode.
      beam_args: extra Beam pipeline arguments (e.g. for Dataflow or Flink).
      fingerprint_max_files: local inputs (the data, the gallery) with more files than this
        are not fingerprinted for the cache: the walk would cost a listing of every file at each
        run. Then caching cannot see edited files: after editing such data, run with --no-cache.
      gallery: optional gallery (a folder of images, flat or root/<label>/<image>, or a CSV;
        a path or URI): every model the run pushes gets its index of it, pushed beside it.
      gallery_dba, gallery_dba_alpha: database-side augmentation of that index (each vector
        the normalised sum of itself and its top ``gallery_dba`` neighbours weighted by
        similarity ** alpha); 0: the raw embeddings.
      model: the DOLGConfig.
    """

    pipeline_name: str = "dolg-tfx"
    eval_fraction: float = 0.2
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    resize_mode: str = "pad"
    batch_size: int = 64
    train_steps: int = 10_000
    steps_per_epoch: int = 500
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    warmup_steps: int = 500
    weight_decay: float = 1e-4
    augment: bool = True
    mixed_precision: str = "auto"
    seed: int = 0
    min_map: float = 0.0
    max_map_drop: Optional[float] = 0.01
    eval_qe: int = 0
    eval_qe_alpha: float = 3.0
    bless_on_qe: bool = False
    beam_mode: str = "in_memory"
    beam_workers: int = 2
    beam_args: Tuple[str, ...] = ()
    fingerprint_max_files: int = DEFAULT_FINGERPRINT_MAX_FILES
    gallery: Optional[str] = None
    gallery_dba: int = 0
    gallery_dba_alpha: float = 3.0
    model: DOLGConfig = DOLGConfig()

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", DOLGConfig.from_dict(self.model))
        if isinstance(self.beam_args, list):
            object.__setattr__(self, "beam_args", tuple(self.beam_args))
        self.validate()

    def validate(self):
        import re

        if not isinstance(self.pipeline_name, str) or not re.fullmatch(PIPELINE_NAME_RULE, self.pipeline_name):
            raise ConfigError("pipeline_name", self.pipeline_name,
                              f"must match {PIPELINE_NAME_RULE} (lowercase letters, digits and '-', at "
                              "most 128 characters, not starting with '-'), as Kubeflow requires")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError("eval_fraction", self.eval_fraction, "must be in (0, 1)")
        for name in ("max_bytes", "max_pixels", "batch_size", "train_steps", "steps_per_epoch",
                     "beam_workers", "fingerprint_max_files"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, value, "must be an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", self.seed, "must be an integer >= 0")
        if self.resize_mode not in ("pad", "squash"):
            raise ConfigError("resize_mode", self.resize_mode, "choose 'pad' or 'squash'")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError("optimizer", self.optimizer, "choose 'sgd' or 'adamw'")
        if not self.learning_rate > 0:
            raise ConfigError("learning_rate", self.learning_rate, "must be > 0")
        if self.warmup_steps < 0 or self.warmup_steps > self.train_steps:
            raise ConfigError("warmup_steps", self.warmup_steps, f"must be in [0, train_steps={self.train_steps}]")
        if self.mixed_precision not in ("auto", "on", "off"):
            raise ConfigError("mixed_precision", self.mixed_precision, "choose 'auto', 'on' or 'off'")
        if self.beam_mode not in ("in_memory", "multi_processing"):
            raise ConfigError("beam_mode", self.beam_mode, "choose 'in_memory' or 'multi_processing'")
        if self.max_map_drop is not None and self.max_map_drop < 0:
            raise ConfigError("max_map_drop", self.max_map_drop, "must be >= 0 or null")
        for name in ("eval_qe", "gallery_dba"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, value, "must be an integer >= 0 (0: off)")
        for name in ("eval_qe_alpha", "gallery_dba_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ConfigError(name, value, "must be a number >= 0")
        if self.bless_on_qe and not self.eval_qe:
            raise ConfigError("bless_on_qe", self.bless_on_qe, "needs eval_qe > 0")
        if self.gallery is not None and (not isinstance(self.gallery, str) or not self.gallery):
            raise ConfigError("gallery", self.gallery, "must be a path or URI, or null")

    def replace(self, **changes) -> "PipelineConfig":
        model_changes = changes.pop("model", None)
        if isinstance(model_changes, dict):
            check_fields(DOLGConfig, model_changes, " (under \"model\")")
            changes["model"] = self.model.replace(**model_changes)
        elif model_changes is not None:
            changes["model"] = model_changes
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, drop=()) -> str:
        values = self.to_dict()
        for name in drop:
            values.pop(name)
        return json.dumps(values, sort_keys=True)

    def trainer_json(self) -> str:
        """The config as the Trainer sees it: without the evaluation, ingestion and Beam fields,
        so changing a threshold re-runs the Evaluator and Pusher but reuses the trained model."""
        return self.to_json(drop=NOT_FOR_TRAINER)

    @classmethod
    def from_dict(cls, values: dict) -> "PipelineConfig":
        check_fields(cls, values)
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "PipelineConfig":
        return cls.from_dict(json.loads(text))


NOT_FOR_TRAINER = ("pipeline_name", "eval_fraction", "max_bytes", "min_map", "max_map_drop",
                   "beam_mode", "beam_workers", "beam_args", "gallery", "fingerprint_max_files",
                   "eval_qe", "eval_qe_alpha", "bless_on_qe", "gallery_dba", "gallery_dba_alpha")

# Presets. "paper" is the authors' recipe for GPUs; the others fit a 2-core CPU.
PRESETS = {
    "paper": PipelineConfig(
        batch_size=64, train_steps=100_000, steps_per_epoch=1000, learning_rate=0.01, warmup_steps=5000,
        model=DOLGConfig(backbone="resnet50", image_size=512, weights="imagenet")),
    "cpu-demo": PipelineConfig(
        batch_size=32, train_steps=300, steps_per_epoch=50, learning_rate=0.05, warmup_steps=20,
        min_map=0.05, max_map_drop=0.05,
        model=DOLGConfig(backbone="mobilenetv3small", image_size=96, embedding_dim=128, local_dim=256,
                         head="arcface", scale=16.0, margin=0.1, bn_momentum=0.9, scales=(1.0,))),
    "tiny": PipelineConfig(
        batch_size=16, train_steps=24, steps_per_epoch=10, learning_rate=0.05, warmup_steps=2,
        min_map=0.0, max_map_drop=None,
        model=DOLGConfig(backbone="mobilenetv3small", image_size=64, embedding_dim=32, local_dim=48,
                         head="arcface", scale=16.0, margin=0.1, bn_momentum=0.9, scales=(1.0,))),
}


def load_config(preset: str = "cpu-demo", path: Optional[str] = None, **overrides) -> PipelineConfig:
    """A preset, updated from a JSON file (any subset of fields, "model" as a dict), then overrides."""
    if preset not in PRESETS:
        raise ConfigError("preset", preset, f"choose one of {sorted(PRESETS)}")
    config = PRESETS[preset]
    if path:
        try:
            values = json.loads(pathlib.Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError("config file", path, f"cannot be read as JSON: {err}") from err
        check_fields(PipelineConfig, values, f" (in {path})")
        config = config.replace(**values)
    return config.replace(**overrides) if overrides else config
