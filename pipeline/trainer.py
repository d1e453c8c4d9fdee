"""The Trainer module: run_fn.

Builds DOLG and its margin head from the PipelineConfig, trains on the Transform graph's
output with the distribution strategy the machine calls for, resumes a killed run from its
last backup, and exports the descriptor with its serving signatures.
"""
import hashlib
import json
import math
import os

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging

from dolg_model import model as dolg_lib
from dolg_model import training
from pipeline import dataset, preprocessing, signatures
from pipeline.config import PipelineConfig

PROGRESS_FILE = "training_progress.json"


class ProgressLog(tf.keras.callbacks.Callback):
    """Writes {"initial_step", "step"} to a JSON file after BackupAndRestore has restored,
    so a resumed run (and its test) can tell where it started."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.initial_step = None

    def _write(self, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self.initial_step is None:
            self.initial_step = step
            logging.info("Training starts at step %d%s", step, " (resumed from a backup)" if step else "")
        with tf.io.gfile.GFile(self.path, "w") as f:
            f.write(json.dumps({"initial_step": self.initial_step, "step": step, "logs": logs or {}},
                               default=float))

    def on_train_batch_begin(self, batch, logs=None):
        if self.initial_step is None:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._write(logs)


def backup_dir(custom_config, fn_args):
    """A backup folder that survives the Trainer's re-execution after a kill: keyed by what
    the run trains on, under the pipeline root (each execution's own folders are new)."""
    key = hashlib.sha256(json.dumps([custom_config["config"], sorted(fn_args.train_files),
                                     fn_args.transform_output]).encode()).hexdigest()[:16]
    return os.path.join(custom_config["backup_root"], key)


def _set_precision(config):
    on = config.mixed_precision == "on" or (
        config.mixed_precision == "auto" and tf.config.list_physical_devices("GPU"))
    tf.keras.mixed_precision.set_global_policy("mixed_float16" if on else "float32")
    return bool(on)


def run_fn(fn_args):
    """TFX Trainer entry point."""
    custom = fn_args.custom_config
    config = PipelineConfig.from_json(custom["config"])
    # The run's length has one source: TrainArgs.num_steps, which create_pipeline() sets from
    # config.train_steps. The schedule, the epochs and the stop all read it.
    steps = int(fn_args.train_steps)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    counts = preprocessing.class_counts(tf_transform_output)
    mixed = _set_precision(config)
    strategy = training.choose_strategy()
    logging.info("Training %s on %d classes, %d replicas, mixed precision %s",
                 config.model.backbone, len(counts), strategy.num_replicas_in_sync, mixed)

    train_data = dataset.make_dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                                      config.batch_size, training=True, augment=config.augment)
    with strategy.scope():
        dolg = dolg_lib.build_dolg(config.model)
        optimizer = training.make_optimizer(config.optimizer, config.learning_rate, steps,
                                            config.warmup_steps, config.weight_decay)
        trainer = training.compile_training_model(dolg, config.model, len(counts), optimizer, counts)

    backup = backup_dir(custom, fn_args)
    callbacks = [
        tf.keras.callbacks.BackupAndRestore(backup),
        tf.keras.callbacks.TensorBoard(os.path.join(fn_args.model_run_dir, "tensorboard"), update_freq="epoch"),
        ProgressLog(os.path.join(fn_args.model_run_dir, PROGRESS_FILE)),
        training.StopAtStep(steps),
    ]
    trainer.fit(train_data, epochs=math.ceil(steps / config.steps_per_epoch), steps_per_epoch=config.steps_per_epoch,
                callbacks=callbacks, verbose=2)
    tf.keras.mixed_precision.set_global_policy("float32")
    signatures.export(dolg, tf_transform_output, config.model.scales, fn_args.serving_model_dir,
                      config.resize_mode)
    logging.info("Exported the DOLG descriptor to %s", fn_args.serving_model_dir)
