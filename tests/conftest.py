"""Shared test set-up. Importing dolg_tfx first fixes the Keras flavour before TensorFlow loads."""
import importlib.util
import pathlib

import dolg_tfx  # noqa: F401

REPO = pathlib.Path(__file__).resolve().parents[1]

# The files that run whole pipelines, longest first (minutes each, measured with --durations).
# `make test` hands whole files to two pytest-xdist workers in collection order
# (--dist loadfile --no-loadscope-reorder): starting the long ones first lets the short files
# fill in around them, so both workers end together instead of one finishing a long file alone.
LONGEST_FIRST = ("tests/pipeline/test_pipeline_e2e.py", "tests/pipeline/test_blessing_gate.py",
                 "tests/pipeline/test_multi_worker.py", "tests/pipeline/test_kill_anywhere.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other file keeps its order


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
