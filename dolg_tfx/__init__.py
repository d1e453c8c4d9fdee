"""DOLG-TFX: DOLG image retrieval as a TFX pipeline.

Importing this package is the one place where the Keras flavour is chosen. The whole TFX
1.21 stack (tensorflow-transform's transform layer, TFMA 0.52) is built on tf_keras (Keras 2),
so ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is first imported. Every package of
the project (``dolg_model``, ``components``, ``pipeline``), the CLI and the tests import this
package first.
"""
import os
import sys

__version__ = "0.1.0"

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    # Too late to choose: tf.keras is already bound to Keras 3. Fail loudly, not subtly.
    raise ImportError(
        "TensorFlow was imported before dolg_tfx with TF_USE_LEGACY_KERAS unset; "
        "import dolg_tfx (or any project package) before tensorflow, or set TF_USE_LEGACY_KERAS=1.")
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# Quieter TensorFlow C++ logs unless the user asked otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

