"""Shared test set-up. Importing dolg_tfx first fixes the Keras flavour before TensorFlow loads."""
import importlib.util
import pathlib

import dolg_tfx  # noqa: F401

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_fixture(name):
    """tests/fixtures/<name>.py, loaded by file path: a top-level "tests" or "fixtures" package
    installed in site-packages (some wheels ship one) must not shadow ours."""
    spec = importlib.util.spec_from_file_location(
        f"dolg_tfx_tests_fixtures_{name}", REPO / "tests" / "fixtures" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

import tensorflow as tf  # noqa: E402  (after dolg_tfx: tf_keras is chosen)

# Two logical CPUs, so multi-replica (MirroredStrategy) paths run on this GPU-less machine.
# Must happen before TensorFlow initialises its devices, i.e. before any test runs an op.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
