"""The exported SavedModel's serving_default latency against its floor, side by side.

serving_default takes encoded JPEG bytes, decodes them through the Transform graph and runs
the multi-scale descriptor. Its floor is the same work done by hand with nothing around it:

    floor = keras(decoded batch, at the config's scales) + decode(bytes) alone

- keras: the DOLG Keras model reloaded from the same SavedModel (same weights, so the outputs
  must agree: the table's last column checks that the two paths computed the same thing),
  called through multi_scale_embedding with the config's scales inside one tf.function, on a
  batch decoded beforehand.
- decode: components.images.image_ops.decode_batch (what the Transform graph runs) in a tf.function.

Both the exported model (the config's scales) and a re-export of it at the paper's three scales.
Batches of 1, 8 and 32 real JPEGs from the run's eval split. For each batch size the three
are measured round-robin for several rounds (quick 5, full 9) and the medians are compared, so
a load change on the shared machine hits all three alike. Target: serving / floor <= 1.15x.
Smoke: a batch of 2, one round of one call. --run DIR reads that completed run's model.

    tools/devenv.sh run python -m benchmarks.serving [--quick|--full|--smoke] [--run DIR] [--json OUT]
"""
import os
import statistics
import time

from benchmarks import common

TARGET = 1.15
BATCHES = (1, 8, 32)
PAPER_SCALES = (0.7071, 1.0, 1.4142)  # DOLGConfig's default test-time scales


def mean_seconds(fn, arg, calls):
    """Mean seconds of one call over `calls` back-to-back calls (results forced to numpy,
    so nothing is left running asynchronously when the clock stops)."""
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(arg)
        for value in (out.values() if isinstance(out, dict) else [out]):
            value.numpy()
    return (time.perf_counter() - start) / calls


def model_dir(summary):
    """The pushed model when the run pushed one (what a server loads), else the Trainer's export
    (the same SavedModel before the Pusher copies it)."""
    return summary.get("pushed_to") or summary["model"]


def measure(serve, keras_model, scales, size, config, images, rounds, batches=BATCHES, calls_per_image=16):
    """Rows of serving vs floor for each batch size, for one SavedModel and its Keras model."""
    import numpy as np
    import tensorflow as tf

    from dolg_model.model import multi_scale_embedding
    from components.images import image_ops
    from components.retrieval import serving_contract as contract

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def decode(encoded):
        return image_ops.decode_batch(encoded, size, config.resize_mode, config.max_pixels)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def keras_embed(pixels):
        return multi_scale_embedding(keras_model, pixels, scales)

    def serving(encoded):
        return serve(**{contract.IMAGES_INPUT: encoded})

    rows = []
    for batch in batches:
        encoded = tf.constant([images[i % len(images)] for i in range(batch)])
        pixels = decode(encoded)
        calls = max(1, calls_per_image // batch)  # enough calls that batch 1 is not one clock tick
        served = serving(encoded)[contract.EMBEDDING_OUTPUT].numpy()
        floor_out = keras_embed(pixels).numpy()
        for _ in range(2):  # warm-up: oneDNN picks its kernels per shape on first use
            mean_seconds(serving, encoded, 1), mean_seconds(keras_embed, pixels, 1), mean_seconds(decode, encoded, 1)
        times = {"serving": [], "keras": [], "decode": []}
        for r in range(rounds):
            order = [("serving", serving, encoded), ("keras", keras_embed, pixels), ("decode", decode, encoded)]
            for name, fn, arg in order[r % 3:] + order[:r % 3]:  # rotate who goes first
                times[name].append(mean_seconds(fn, arg, calls))
        med = {k: statistics.median(v) for k, v in times.items()}
        floor = med["keras"] + med["decode"]
        rows.append({"scales": list(scales), "batch": batch, "serving_s": med["serving"], "keras_s": med["keras"],
                     "decode_s": med["decode"], "floor_s": floor, "ratio": med["serving"] / floor,
                     "max_abs_diff": float(np.max(np.abs(served - floor_out)))})
    return rows


def run(args):
    common.quiet_tf()
    import tensorflow as tf
    import tensorflow_transform as tft

    from pipeline import signatures
    from pipeline.demo_report import read_split

    preset, config, data, run_info = common.bench_run(args)
    size = config.model.image_size
    path = model_dir(run_info["summary"])
    _, images, _ = read_split(run_info["summary"]["examples"], "eval")
    rounds = 9 if args.full else 1 if args.smoke else 5
    sizes = {"batches": (2,), "calls_per_image": 1} if args.smoke else {}

    keras_model = tf.keras.models.load_model(path, compile=False)
    rows = measure(tf.saved_model.load(path).signatures["serving_default"], keras_model,
                   config.model.scales, size, config, images, rounds, **sizes)
    # The presets serve at one scale; the multi-scale path (the paper's three) is measured on a
    # re-export of the same trained model through pipeline.signatures.export and the run's
    # real Transform graph, so the floor must do all three scales too.
    if tuple(config.model.scales) != PAPER_SCALES:
        _, graph_uri, _ = common.run_artifacts(run_info["output"])
        multi_dir = os.path.join(run_info["scratch"], "multiscale_export")
        if tf.io.gfile.exists(multi_dir):
            tf.io.gfile.rmtree(multi_dir)
        signatures.export(keras_model, tft.TFTransformOutput(graph_uri), PAPER_SCALES, multi_dir)
        rows += measure(tf.saved_model.load(multi_dir).signatures["serving_default"], keras_model,
                        PAPER_SCALES, size, config, images, rounds, **sizes)

    table = common.md_table(
        ["scales", "batch", "serving_default ms", "keras ms", "decode ms", "floor ms (keras+decode)",
         "serving / floor", "max abs diff, serving vs keras embeddings"],
        [[", ".join(map(str, r["scales"])), r["batch"], f"{r['serving_s'] * 1e3:.1f}", f"{r['keras_s'] * 1e3:.1f}",
          f"{r['decode_s'] * 1e3:.1f}", f"{r['floor_s'] * 1e3:.1f}", f"{r['ratio']:.2f}x",
          f"{r['max_abs_diff']:.1e}"] for r in rows])
    checks = [common.verdict(f"scales {r['scales']}, batch {r['batch']}: serving / floor", r["ratio"], TARGET,
                             higher_is_better=False) for r in rows]
    markdown = (f"Preset `{preset}`: {config.model.backbone} at {size} px, resize `{config.resize_mode}`; "
                f"{data}, the eval split's; medians of {rounds} round-robin rounds. "
                f"Model: `{common.shown_path(path)}` (config scales {list(config.model.scales)}); "
                f"the {list(PAPER_SCALES)} rows re-export that model with pipeline.signatures.export.\n\n"
                f"{table}\n\n" + "\n".join(f"- {c}" for c in checks))
    return markdown, [c for c in checks if "MISSED" in c], rows


def main():
    args = common.parser(__doc__, reads_run=True).parse_args()
    markdown, missed, rows = run(args)
    common.finish(args, "Serving latency vs Keras + decode", markdown, missed, rows)


if __name__ == "__main__":
    main()
