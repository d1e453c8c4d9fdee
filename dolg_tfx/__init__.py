"""DOLG-TFX: DOLG image retrieval as a TFX pipeline; this package is its command line.

The Keras flavour is chosen in ``dolg_model`` (the lowest package), imported here first.
"""
import dolg_model  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

__version__ = "0.1.0"
