"""The DOLG network (tf_keras), and the one place where the Keras flavour is chosen.

The whole TFX 1.21 stack (tensorflow-transform's transform layer, TFMA 0.52) is built on
tf_keras (Keras 2), so ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is first
imported. This is the lowest package of the project: ``components``, ``pipeline`` and the CLI
(``dolg_tfx``) import it first, so whatever part of the project loads first sets it.
"""
import os
import sys

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    # Too late to choose: tf.keras is already bound to Keras 3. Fail loudly, not subtly.
    raise ImportError(
        "TensorFlow was imported before the project with TF_USE_LEGACY_KERAS unset; "
        "import any project package (dolg_model, components, pipeline, dolg_tfx) before tensorflow, or set TF_USE_LEGACY_KERAS=1.")
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# Quieter TensorFlow C++ logs unless the user asked otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

