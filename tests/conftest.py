"""Shared test set-up. Importing dolg_tfx first fixes the Keras flavour before TensorFlow loads."""
import pathlib

import dolg_tfx  # noqa: F401

REPO = pathlib.Path(__file__).resolve().parents[1]

import tensorflow as tf  # noqa: E402  (after dolg_tfx: tf_keras is chosen)

# Two logical CPUs, so multi-replica (MirroredStrategy) paths run on this GPU-less machine.
# Must happen before TensorFlow initialises its devices, i.e. before any test runs an op.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
