"""The Trainer module: run_fn.

Builds DOLG and its margin head from the PipelineConfig, trains on the Transform graph's
output with the distribution strategy the machine calls for, resumes a killed run from its
last backup, and exports the descriptor with its serving signatures.
"""
import hashlib
import json
import math
import os
import time

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging

from dolg_model import model as dolg_lib
from dolg_model import training
from components.progress import ProgressReporter
from pipeline import dataset, preprocessing, signatures
from pipeline.config import PipelineConfig

PROGRESS_FILE = "training_progress.json"
# How long a worker waits for the chief's export after its own (the two run side by side).
EXPORT_WAIT_S = 1800.0


class ProgressLog(tf.keras.callbacks.Callback):
    """Writes {"initial_step", "step"} to a JSON file after BackupAndRestore has restored,
    so a resumed run (and its test) can tell where it started. ``path=None`` only logs
    (workers other than the chief write nothing of the run's own)."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.initial_step = None

    def _write(self, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self.initial_step is None:
            self.initial_step = step
            logging.info("Training starts at step %d%s", step, " (resumed from a backup)" if step else "")
        if self.path is None:
            return
        with tf.io.gfile.GFile(self.path, "w") as f:
            f.write(json.dumps({"initial_step": self.initial_step, "step": step, "logs": logs or {}},
                               default=float))

    def on_train_batch_begin(self, batch, logs=None):
        if self.initial_step is None:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._write(logs)

    def on_train_end(self, logs=None):
        self._write(logs)  # StopAtStep may end training mid-epoch


class StepProgress(tf.keras.callbacks.Callback):
    """The training steps as ``components.progress`` records (steps, loss, rate, ETA), which the
    CLI's console draws as a bar; about 50 over a run."""

    def __init__(self, total_steps: int, updates: int = 50):
        super().__init__()
        self.reporter = ProgressReporter(int(total_steps), "steps", updates=updates)

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        self.reporter.update(int(self.model.optimizer.iterations.numpy()),
                             loss=None if loss is None else float(loss))


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


def _export(dolg, tf_transform_output, config, strategy, serving_model_dir):
    """Only the chief exports, to ``serving_model_dir``; the other workers wait for it, so that
    TFX's check of the model folder, which follows run_fn in every replica, holds there too.

    Under MultiWorkerMirroredStrategy the weights are first copied into a model built outside
    the strategy: reading them (BatchNormalization's moving statistics are synced on read) is
    a collective every worker joins, and a SavedModel of the distributed model would carry
    those collectives in its signatures (TensorFlow refuses to save them).
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        weights = dolg.get_weights()  # every worker, in the same order: it all-reduces
        if not training.is_chief(strategy):
            logging.info("Worker: the chief exports the model; waiting for %s", serving_model_dir)
            wait_for_export(serving_model_dir)
            return
        # Built like the trained one; the weights come from it, none are downloaded again.
        dolg = dolg_lib.build_dolg(config.model.replace(weights=None))
        dolg.set_weights(weights)
    signatures.export(dolg, tf_transform_output, config.model.scales, serving_model_dir, config.resize_mode)
    logging.info("Exported the DOLG descriptor to %s", serving_model_dir)


def wait_for_export(serving_model_dir, timeout_s=EXPORT_WAIT_S, poll_s=1.0):
    """Returns once ``saved_model.pb`` is in ``serving_model_dir`` (written last by a save)."""
    marker = os.path.join(serving_model_dir, "saved_model.pb")
    deadline = time.monotonic() + timeout_s
    while not tf.io.gfile.exists(marker):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the chief exported no model to {serving_model_dir} within {timeout_s:.0f} s")
        time.sleep(poll_s)


def run_fn(fn_args):
    """TFX Trainer entry point (every replica of a multi-worker run calls it)."""
    # First: a multi-worker strategy must configure TensorFlow before any op runs.
    strategy = training.choose_strategy()
    custom = fn_args.custom_config
    config = PipelineConfig.from_json(custom["config"])
    # The run's length has one source: TrainArgs.num_steps, which create_pipeline() sets from
    # config.train_steps. The schedule, the epochs and the stop all read it.
    steps = int(fn_args.train_steps)
    per_replica = training.replicas_batch(config.batch_size, strategy)
    tf.keras.utils.set_random_seed(config.seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    counts = preprocessing.class_counts(tf_transform_output)
    mixed = _set_precision(config)
    chief = training.is_chief(strategy)
    logging.info("Training %s on %d classes, %d replicas x %d images (%s), mixed precision %s",
                 config.model.backbone, len(counts), strategy.num_replicas_in_sync, per_replica,
                 "chief" if chief else "worker", mixed)

    train_data = strategy.distribute_datasets_from_function(
        lambda context: dataset.make_dataset(
            fn_args.train_files, fn_args.data_accessor, tf_transform_output, config.batch_size,
            training=True, augment=config.augment, input_context=context, seed=config.seed))
    with strategy.scope():
        dolg = dolg_lib.build_dolg(config.model)
        optimizer = training.make_optimizer(config.optimizer, config.learning_rate, steps,
                                            config.warmup_steps, config.weight_decay)
        trainer = training.compile_training_model(dolg, config.model, len(counts), optimizer, counts)

    # Every worker must see the same backup folder (the pipeline root): BackupAndRestore keeps
    # the chief's state in <backup>/chief and removes the others' workertemp_<id> folders.
    # TensorBoard writes from the chief only (the others' workertemp_<id> folders are removed).
    callbacks = [
        tf.keras.callbacks.BackupAndRestore(backup_dir(custom, fn_args)),
        tf.keras.callbacks.TensorBoard(os.path.join(fn_args.model_run_dir, "tensorboard"), update_freq="epoch"),
        ProgressLog(os.path.join(fn_args.model_run_dir, PROGRESS_FILE) if chief else None),
        training.StopAtStep(steps),
    ] + ([StepProgress(steps)] if chief else [])
    trainer.fit(train_data, epochs=math.ceil(steps / config.steps_per_epoch), steps_per_epoch=config.steps_per_epoch,
                callbacks=callbacks, verbose=2)
    tf.keras.mixed_precision.set_global_policy("float32")
    _export(dolg, tf_transform_output, config, strategy, fn_args.serving_model_dir)
