"""Training pieces shared by the Trainer and the tests: schedule, optimizer, strategy, compile.

The recipe (authors): SGD with Nesterov momentum 0.9, weight decay 1e-4, lr 0.01 with linear
warm-up then cosine decay. AdamW is offered for small fine-tuning runs.
"""
import json
import math
import os
from typing import Optional

import tensorflow as tf

from dolg_model import heads
from dolg_model.model import build_training_model

keras = tf.keras


@keras.utils.register_keras_serializable(package="dolg")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to `floor`.

    Args:
      peak: the learning rate at the end of warm-up.
      total_steps: steps of the whole run.
      warmup_steps: steps of the linear ramp.
      floor: the final learning rate.
    """

    def __init__(self, peak, total_steps, warmup_steps=0, floor=0.0):
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(min(int(warmup_steps), self.total_steps), 0)
        self.floor = float(floor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        cosine = self.floor + 0.5 * (self.peak - self.floor) * (1.0 + tf.cos(math.pi * tf.minimum(progress, 1.0)))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "floor": self.floor}


def make_optimizer(name="sgd", learning_rate=0.01, total_steps=1000, warmup_steps=0, weight_decay=1e-4):
    """SGD-Nesterov (the paper's) or AdamW, on a warm-up + cosine schedule."""
    schedule = WarmupCosine(learning_rate, total_steps, warmup_steps)
    if name == "sgd":
        # Decoupled weight decay is applied by the optimizer itself (tf_keras >= 2.11).
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {name!r}")


# TF_CONFIG task types that train under MultiWorkerMirroredStrategy. Parameter servers
# (ParameterServerStrategy) and a side-car evaluator are not part of this project's recipe.
TRAINING_TASKS = ("chief", "worker")


def training_cluster(tf_config: Optional[str] = None) -> Optional[dict]:
    """The cluster of ``TF_CONFIG`` (or ``tf_config``) when it holds more than one training task.

    Returns None when TF_CONFIG is unset or describes a single task: Vertex sets it for one
    replica too, and a one-worker MultiWorkerMirroredStrategy only adds a gRPC server.
    Raises ValueError naming the field when TF_CONFIG asks for something this module cannot run.
    """
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not text.strip():
        return None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not JSON: {err}") from err
    cluster = spec.get("cluster") or {}
    others = sorted(set(cluster) - set(TRAINING_TASKS))
    if others:
        raise ValueError(f"TF_CONFIG cluster has {others}: only {list(TRAINING_TASKS)} tasks are "
                         "supported (MultiWorkerMirroredStrategy, no parameter servers or evaluator)")
    if sum(len(cluster.get(t, [])) for t in TRAINING_TASKS) <= 1:
        return None
    task = spec.get("task") or {}
    if task.get("type") not in TRAINING_TASKS or not isinstance(task.get("index"), int):
        raise ValueError(f"TF_CONFIG task {task!r}: needs type 'chief' or 'worker' and an integer index")
    return cluster


def choose_strategy(devices=None) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG describes a cluster of several workers;
    else MirroredStrategy over every GPU when there is more than one (or over `devices`);
    otherwise the current strategy (the default one on the one device there is).

    Call it before TensorFlow runs its first op: a multi-worker strategy configures the
    collective ops, which TensorFlow accepts only before its context is initialised.
    """
    if devices:
        return tf.distribute.MirroredStrategy(devices)
    if training_cluster() is not None:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files (serving model, TensorBoard, progress):
    TensorFlow's own rule, the one BackupAndRestore and TensorBoard follow (the `chief` task,
    or worker 0 when the cluster has no chief; always true outside a multi-worker cluster)."""
    return bool(strategy.extended.should_checkpoint)


def replicas_batch(global_batch: int, strategy: tf.distribute.Strategy) -> int:
    """The per-replica batch: global = per-replica x replicas, so the global batch must divide."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"batch_size={global_batch} is the global batch and must be a multiple of "
                         f"the {replicas} replicas in sync (every replica gets the same share)")
    return global_batch // replicas


class StopAtStep(keras.callbacks.Callback):
    """Ends training once the optimizer has taken exactly `steps` steps, mid-epoch if need be.

    Keras trains whole epochs of `steps_per_epoch`; without this a run whose length is not a
    multiple of it would take up to `steps_per_epoch - 1` steps past the schedule's end. The
    count is the optimizer's, so it holds across a resume from BackupAndRestore too.
    """

    def __init__(self, steps: int):
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.steps:
            self.model.stop_training = True

    def get_config(self):
        return {"steps": self.steps}


def compile_training_model(dolg, config, num_classes, optimizer, class_counts=None):
    """The (image, label) -> logits model with the config's margin head, compiled with the
    margin cross-entropy. Call inside the strategy's scope, as `dolg` was built."""
    head = heads.build_head(config, num_classes, class_counts)
    trainer = build_training_model(dolg, head)
    trainer.compile(optimizer=optimizer,
                    loss=heads.MarginCrossEntropy(num_classes, config.label_smoothing))
    return trainer
