"""Shared test set-up. Importing dolg_tfx first fixes the Keras flavour before TensorFlow loads."""
import pathlib

import dolg_tfx  # noqa: F401

REPO = pathlib.Path(__file__).resolve().parents[1]
