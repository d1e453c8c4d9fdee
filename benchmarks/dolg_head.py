"""What DOLG adds on top of a backbone, alone: its head against the floor's GeM + FC.

Forward + backward on ResNet50-at-224-px shaped maps (stride 16: 14x14x1024, stride 32:
7x7x2048), batch 8, timed round-robin: DOLG's local self-attention, GeM + FC, orthogonal
fusion, pooling and final FC, against GeM + FC alone. Explains the training-step ratio of
DOLG without multi-atrous (benchmarks/train_step.py) beyond its FLOPs.

    tools/devenv.sh run python -m benchmarks.dolg_head [--rounds 15] [--smoke] [--json OUT]

run_all's quick size: --rounds 7; full: --rounds 21. --smoke: batch 1, one round (for any
option not given): every part traced and timed once, on the same map shapes.
"""
import argparse
import json

import tensorflow as tf

from benchmarks import common
from dolg_model import layers


def run(batch=8, rounds=15):
    local = tf.random.normal((batch, 14, 14, 1024), seed=0)
    global_ = tf.random.normal((batch, 7, 7, 2048), seed=1)
    attention, gem, fusion = layers.LocalSelfAttention(1024), layers.GeMPooling(), layers.OrthogonalFusion()
    global_fc, final_fc, floor_fc = (tf.keras.layers.Dense(n) for n in (1024, 512, 512))
    pool = tf.keras.layers.GlobalAveragePooling2D()

    def dolg_head():
        f_l, _ = attention(local, training=True)
        f_g = global_fc(gem(global_))
        return final_fc(tf.concat([f_g, pool(fusion([f_l, f_g]))], -1))

    candidates = {
        "floor: GeM + FC": lambda: floor_fc(gem(global_)),
        "DOLG head": dolg_head,
        "of which local self-attention": lambda: attention(local, training=True)[0],
    }
    steps = {}
    for name, fn in candidates.items():
        @tf.function
        def step(fn=fn):
            with tf.GradientTape() as tape:
                tape.watch([local, global_])
                out = tf.reduce_sum(fn())
            return tape.gradient(out, [local, global_])
        step()
        steps[name] = step
    return [{"part": name, "ms": t * 1e3} for name, t in common.round_robin(steps, rounds).items()]


DEFAULTS = {"batch": 8, "rounds": 15}
SMOKE = {"batch": 1, "rounds": 1}


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
    rows = run(args.batch, args.rounds)
    print(f"\nDOLG head vs floor, forward + backward, batch {args.batch}, R50 224 px map shapes"
          + (" (smoke: the numbers mean nothing)" if args.smoke else ""))
    print(common.md_table(["part", "ms"], [[r["part"], f"{r['ms']:.1f}"] for r in rows]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
