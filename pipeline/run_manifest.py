"""``run.json``: what a local run was asked to do (data, output, preset, config, stack versions,
command), written by the local runner when the run starts and read by the report.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Optional

RUN_MANIFEST = "run.json"


def stack_versions() -> dict:
    """The installed versions of the stack's main packages, by distribution name."""
    import importlib.metadata as md

    names = ("tfx", "tensorflow", "tf-keras", "tensorflow-transform", "tensorflow-model-analysis",
             "apache-beam", "ml-metadata")
    return {name: md.version(name) for name in names}


def write(output: str, config, data: str, preset: Optional[str]) -> None:
    """Writes ``<output>/run.json`` for a run of ``config`` (a ``PipelineConfig``) on ``data``."""
    manifest = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
                "data": os.path.abspath(data), "output": output, "preset": preset,
                "config": json.loads(config.to_json()), "versions": stack_versions(),
                "command": sys.argv}
    with open(os.path.join(output, RUN_MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, default=str)


def read(output: str) -> dict:
    """The manifest of the run in ``output`` (any URI TensorFlow opens), or {} if absent."""
    import tensorflow as tf

    path = f"{output.rstrip('/')}/{RUN_MANIFEST}"
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())
