"""Training-step cost of DOLG against its floor, measured side by side in one run.

The floor is the same backbone + GeM + FC to the embedding + the same margin head: what any
global-descriptor model pays. DOLG adds the local branch, the fusion and (optionally) the
multi-atrous block. Prints parameters, forward FLOPs at the given size, and the median seconds
of one training step for each, with ratios to the floor.

    tools/devenv.sh run python -m benchmarks.train_step [--backbone resnet50] [--size 224]
        [--batch 8] [--steps 10] [--smoke] [--json OUT]

run_all's quick size: --backbone mobilenetv3small --size 96 --batch 16 --steps 5; full: the
defaults. --smoke: the smallest that runs every candidate (mobilenetv3small at 32 px, batch 2,
one round), for any option not given.
"""
import argparse
import json

import numpy as np
import tensorflow as tf

from benchmarks import common
from dolg_model import layers
from dolg_model import model as dolg_lib
from dolg_model import training
from dolg_model.backbones import build_backbone
from dolg_model.config import DOLGConfig

NUM_CLASSES = 1000


def build_floor(config):
    """Backbone -> GeM -> FC -> L2: a global-only descriptor with DOLG's backbone and width."""
    backbone, _, global_name, preprocess = build_backbone(config.backbone)
    taps = tf.keras.Model(backbone.inputs, backbone.get_layer(global_name).output)
    images = tf.keras.Input((None, None, 3), name="image")
    x = taps(layers.BackbonePreprocess(preprocess)(images))
    x = tf.keras.layers.Dense(config.embedding_dim)(layers.GeMPooling(config.gem_p)(x))
    return tf.keras.Model(images, layers.L2Normalize(name="embedding")(x), name="floor")


def forward_flops(model, size):
    """Floating-point operations of one forward pass at batch 1 (TF's graph profiler)."""
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32)).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops


def make_step(model, config, batch, size):
    """A warmed-up training step of `model` (with the margin head) on a fixed random batch."""
    opt = training.make_optimizer("sgd", 0.01, total_steps=1000)
    trainer = training.compile_training_model(model, config, NUM_CLASSES, opt)
    rng = np.random.default_rng(0)
    x = {"image": rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32),
         "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32)}
    for _ in range(2):  # trace and warm up
        trainer.train_on_batch(x, x["label"])
    return lambda: trainer.train_on_batch(x, x["label"])


def step_seconds(model, config, batch, size, steps):
    """Median seconds of `steps` training steps of one model (after warm-up)."""
    return common.round_robin({"step": make_step(model, config, batch, size)}, steps)["step"]


def run(backbone="resnet50", size=224, batch=8, steps=10, variants=("none", "authors")):
    """Builds every candidate first, then times their steps round-robin (one step of each per
    round), so a burst of load on the shared machine hits all candidates alike."""
    base = DOLGConfig(backbone=backbone, image_size=size, head="arcface")
    candidates = [("floor (backbone+GeM+head)", base, build_floor)]
    for variant in variants:
        candidates.append((f"DOLG multi_atrous={variant}", base.replace(multi_atrous=variant), dolg_lib.build_dolg))
    rows, steps_fns = [], []
    for name, config, builder in candidates:
        model = builder(config)
        rows.append({"model": name, "params": model.count_params(), "gflops": forward_flops(model, size) / 1e9})
        steps_fns.append(make_step(model, config, batch, size))
    # Rounds of 3 steps per model, the first of each visit untimed (see common.round_robin).
    rounds = max(1, -(-steps // 2))
    medians = list(common.round_robin({i: step for i, step in enumerate(steps_fns)}, rounds, burst=3).values())
    floor = medians[0]
    for row, t in zip(rows, medians):
        row["step_s"] = t
        row["step_ratio"] = t / floor
        row["flops_ratio"] = row["gflops"] / rows[0]["gflops"]
    return rows


DEFAULTS = {"backbone": "resnet50", "size": 224, "batch": 8, "steps": 10}
SMOKE = {"backbone": "mobilenetv3small", "size": 32, "batch": 2, "steps": 1}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", help=f"default {DEFAULTS['backbone']}")
    for name in ("size", "batch", "steps"):
        parser.add_argument(f"--{name}", type=int, help=f"default {DEFAULTS[name]}")
    parser.add_argument("--variants", default="none,authors")
    parser.add_argument("--smoke", action="store_true", help=f"smallest sizes that run every candidate: {SMOKE}")
    parser.add_argument("--json")
    args = parser.parse_args()
    for name, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    rows = run(args.backbone, args.size, args.batch, args.steps, tuple(args.variants.split(",")))
    print(f"\nTraining step, {args.backbone} at {args.size} px, batch {args.batch}, CPU "
          f"({tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads), median of {args.steps}"
          + (" (smoke: the numbers mean nothing)" if args.smoke else ""))
    print("| model | params (M) | forward GFLOPs | step s | step / floor | FLOPs / floor |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:.2f} | {r['gflops']:.2f} | {r['step_s']:.3f} | "
              f"{r['step_ratio']:.2f}x | {r['flops_ratio']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
