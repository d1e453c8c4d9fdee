"""ImageExampleGen: images (folder tree or GLDv2 CSV) in, validated label-disjoint Examples out.

The TFX parts (``ImageExampleGen``, ``IngestionReport``, ``Executor``) are loaded on first
use, so ``from components.image_example_gen import scan_inputs, inspect_image`` stays plain
Python (Pillow only) and does not pay TFX's import (seconds, a gigabyte) in the CLI.
"""
from components.images.checks import ImageInfo, Rejected, inspect_image
from components.image_example_gen.inputs import Candidate, assign_splits, label_bucket, scan_inputs

_LAZY = {
    "ImageExampleGen": ("components.image_example_gen.component", "ImageExampleGen"),
    "ImageExampleGenSpec": ("components.image_example_gen.spec", "ImageExampleGenSpec"),
    "IngestionReport": ("components.image_example_gen.spec", "IngestionReport"),
    "Executor": ("components.image_example_gen.executor", "Executor"),
}

__all__ = ["Candidate", "ImageInfo", "Rejected", "assign_splits",
           "inspect_image", "label_bucket", "scan_inputs", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
