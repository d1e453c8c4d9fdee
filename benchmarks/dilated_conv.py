"""Multi-atrous convolutions: DilatedConv3x3 (tap by tap) against Keras' dilated Conv2D.

Forward + backward of the three dilated branches (rates 6, 12, 18; 1024 -> 512 channels) on
the stride-16 map of a 224 px image (14x14), timed round-robin in one run, with the outputs
compared so the speed-up is for the same result.

    tools/devenv.sh run python -m benchmarks.dilated_conv [--batch 8] [--size 14] [--rounds 7] [--smoke] [--json OUT]

run_all's quick size: --rounds 3; full: --rounds 9. --smoke: batch 1, 64 -> 32 channels, one
round (for any option not given): both implementations traced, compared and timed once.
"""
import argparse
import json

import numpy as np
import tensorflow as tf

from benchmarks import common
from dolg_model.layers import DilatedConv3x3

RATES = (6, 12, 18)


def run(batch=8, size=14, channels=1024, filters=512, rounds=7):
    x = tf.random.normal((batch, size, size, channels), seed=0)
    keras_convs = [tf.keras.layers.Conv2D(filters, 3, padding="same", dilation_rate=r, activation="relu")
                   for r in RATES]
    ours = [DilatedConv3x3(filters, r, activation="relu") for r in RATES]
    for ref, mine in zip(keras_convs, ours):
        ref.build(x.shape)
        mine.build(x.shape)
        mine.set_weights(ref.get_weights())
    max_diff = max(float(np.abs(a(x) - b(x)).max()) for a, b in zip(keras_convs, ours))

    def make_step(convs):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.add_n([tf.reduce_sum(c(x)) for c in convs])
            return tape.gradient(loss, [c.kernel for c in convs])
        step()  # trace
        return step

    steps = {"keras Conv2D(dilation_rate)": make_step(keras_convs), "DilatedConv3x3": make_step(ours)}
    medians = common.round_robin(steps, rounds)
    base = medians["keras Conv2D(dilation_rate)"]
    return {"batch": batch, "size": size, "max_abs_diff": max_diff,
            "rows": [{"implementation": n, "ms": t * 1e3, "speedup_vs_keras": base / t}
                     for n, t in medians.items()]}


DEFAULTS = {"batch": 8, "size": 14, "rounds": 7, "channels": 1024, "filters": 512}
SMOKE = {"batch": 1, "size": 14, "rounds": 1, "channels": 64, "filters": 32}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in DEFAULTS:
        parser.add_argument(f"--{name}", type=int, help=f"default {DEFAULTS[name]}")
    parser.add_argument("--smoke", action="store_true", help=f"smallest sizes: {SMOKE}")
    parser.add_argument("--json")
    args = parser.parse_args()
    for name, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    result = run(args.batch, args.size, args.channels, args.filters, args.rounds)
    print(f"\nDilated 3x3 branches (rates {RATES}), {args.size}x{args.size} map, batch {args.batch}, "
          f"{args.channels} -> {args.filters} channels, forward + backward; outputs differ by at most "
          f"{result['max_abs_diff']:.1e}" + (" (smoke: the numbers mean nothing)" if args.smoke else ""))
    print(common.md_table(["implementation", "ms", "speed-up vs Keras"],
                          [[r["implementation"], f"{r['ms']:.1f}", f"{r['speedup_vs_keras']:.1f}x"]
                           for r in result["rows"]]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
