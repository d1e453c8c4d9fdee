"""Can the Trainer's input pipeline feed the training step? Images/second of both, side by side.

The input pipeline is the Trainer's own: pipeline.dataset.make_dataset over the raw Examples of
a real local pipeline run (generate_landmarks JPEGs), decoded through that run's Transform graph
and augmented, with a DataAccessor built from the Examples artifact by the same tfxio_utils
calls TFX's Trainer executor makes. Nothing is re-implemented: the only difference from the
Trainer is that we iterate the dataset in Python instead of feeding keras.Model.fit (fit adds
its own iterator, which costs no more than ours).

The consumer is benchmarks.train_step's step_seconds() on the preset's DOLG model at the same
image size and batch size (random pixels, so the step alone is timed).

The two are timed one after the other on the same cores (pipeline, step, pipeline again; the
pipeline figure is the mean of both passes, so a load change on the shared machine shows up
as a spread between them instead of silently biasing the ratio). In real training they share
those cores, so a ratio near 1x would mean the step waits for data; the target is >= 2x.

Timed: 20 batches after 3 of warm-up and the median of 5 steps (quick), 40 / 5 / 10 (full),
2 / 1 / 1 (smoke). --run DIR reads that completed run's artifacts instead of the cached one's.

    tools/devenv.sh run python -m benchmarks.input_pipeline [--quick|--full|--smoke] [--run DIR] [--json OUT]
"""
import glob
import os
import time

from benchmarks import common

TARGET = 2.0


def _data_accessor(examples):
    """fn_args.data_accessor as TFX's Trainer executor builds it (fn_args_utils)."""
    from tfx.components.trainer.fn_args_utils import DataAccessor
    from tfx.components.util import tfxio_utils

    tags = ["benchmark"]
    return DataAccessor(
        tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], tags),
        record_batch_factory=tfxio_utils.get_record_batch_factory_from_artifact([examples], tags),
        data_view_decode_fn=tfxio_utils.get_data_view_decode_fn_from_artifact([examples], tags))


def images_per_second(dataset, batches, warmup):
    """Images/s of iterating `dataset` for `batches` batches after `warmup` batches.

    Warm-up covers tracing and the first file reads; the prefetch buffer it leaves filled is
    a few batches, small against `batches`."""
    it = iter(dataset)
    for _ in range(warmup):
        next(it)
    count = 0
    start = time.perf_counter()
    for _ in range(batches):
        features, _ = next(it)
        count += int(features["image"].shape[0])
    return count / (time.perf_counter() - start)


def run(args):
    common.quiet_tf()
    import tensorflow as tf
    import tensorflow_transform as tft

    from benchmarks import train_step
    from dolg_model import model as dolg_lib
    from pipeline import dataset

    preset, config, data, run_info = common.bench_run(args)
    examples, graph_uri, _ = common.run_artifacts(run_info["output"])
    train_files = sorted(glob.glob(os.path.join(examples.uri, "Split-train", "*")))
    tft_output = tft.TFTransformOutput(graph_uri)
    accessor = _data_accessor(examples)
    batch, size = config.batch_size, config.model.image_size
    batches, warmup, steps = (40, 5, 10) if args.full else (2, 1, 1) if args.smoke else (20, 3, 5)

    def pipeline_rate(augment):
        ds = dataset.make_dataset(train_files, accessor, tft_output, batch, training=True, augment=augment)
        return images_per_second(ds, batches, warmup)

    # decode only (no augmentation) tells how the pipeline's cost splits when a target is missed
    first = {aug: pipeline_rate(aug) for aug in (True, False)}
    tf.keras.backend.clear_session()
    model = dolg_lib.build_dolg(config.model)
    step_s = train_step.step_seconds(model, config.model, batch, size, steps)
    second = {aug: pipeline_rate(aug) for aug in (True, False)}
    consume = batch / step_s

    rows = []
    for aug, name in ((True, "input pipeline: decode (Transform graph) + augment"),
                      (False, "input pipeline: decode (Transform graph) only")):
        rate = (first[aug] + second[aug]) / 2
        rows.append({"stage": name, "images_s": rate, "passes": [first[aug], second[aug]],
                     "ratio_to_step": rate / consume})
    rows.append({"stage": f"training step ({config.model.backbone}, train_step.step_seconds)",
                 "images_s": consume, "step_s": step_s, "ratio_to_step": 1.0})
    table = common.md_table(
        ["stage", "images/s", "two passes", "images/s / training step"],
        [[r["stage"], f"{r['images_s']:.1f}",
          " / ".join(f"{p:.1f}" for p in r.get("passes", [])) or f"step {r['step_s'] * 1000:.0f} ms",
          f"{r['ratio_to_step']:.2f}x"] for r in rows])
    check = common.verdict("pipeline (with augmentation) / training step", rows[0]["ratio_to_step"],
                           TARGET, higher_is_better=True)
    markdown = (f"Preset `{preset}`: {config.model.backbone} at {size} px, batch {batch}; "
                f"{data} ({len(train_files)} train file(s)); {batches} batches timed after {warmup} of warm-up; "
                f"step: median of {steps}. Pipeline run {'reused from' if run_info['reused'] else 'made in'} "
                f"`{common.shown_path(run_info['output'])}`.\n\n{table}\n\n{check}")
    return markdown, [check] if "MISSED" in check else [], rows


def main():
    args = common.parser(__doc__, reads_run=True).parse_args()
    markdown, missed, rows = run(args)
    common.finish(args, "Input pipeline vs training step", markdown, missed, rows)


if __name__ == "__main__":
    main()
