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

Photo-sized JPEGs (issue 23 item 4): the same pipeline and step at the cpu-demo preset on the
run's train Examples with every image replaced by a camera-sized JPEG carrying a phone's EXIF
(tests/fixtures/photos.py, orientation 6), 640x480 and 12 MP: only the bytes change, so the
Transform graph decodes what a user's photos would give it. The cpu-demo run is the full mode's
own; quick mode makes (once, cached) a cpu-demo run on its small data with 10 training steps
(the input pipeline and the step depend on the preset's image size, batch and network, not on
how long it trained); smoke mode uses the run it reads, whatever its preset. Target: >= 2x on
640x480.

Timed: 20 batches after 3 of warm-up and the median of 5 steps (quick), 40 / 5 / 10 (full),
2 / 1 / 1 (smoke), photos alike. --run DIR reads that completed run's artifacts instead of the
cached one's.

    tools/devenv.sh run python -m benchmarks.input_pipeline [--quick|--full|--smoke] [--run DIR] [--json OUT]
"""
import glob
import os
import time

from benchmarks import common

TARGET = 2.0
# Distinct photos of each size: (smoke, other modes); each is a fixture draw, 12 MP ones take seconds.
DISTINCT = {(640, 480): (2, 16), (4032, 3024): (2, 4)}
SHORT_RUN = {"train_steps": 10, "steps_per_epoch": 10, "warmup_steps": 2, "min_map": 0.0, "max_map_drop": None}


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


def photo_examples(train_files, path, width, height, distinct, upscale=1):
    """The run's train Examples with each image replaced by one of `distinct` photo-sized JPEGs
    (EXIF orientation 6), written GZIP as ImageExampleGen writes them; labels and ids kept."""
    import tensorflow as tf

    from pipeline import features as F

    photo_jpeg = common.load_module(f"{common.REPO}/tests/fixtures/photos.py").photo_jpeg
    photos = [photo_jpeg(width, height, orientation=6, seed=seed, upscale=upscale) for seed in range(distinct)]
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for i, record in enumerate(tf.data.TFRecordDataset(train_files, "GZIP")):
            example = tf.train.Example.FromString(record.numpy())
            example.features.feature[F.IMAGE].bytes_list.value[:] = [photos[i % distinct]]
            writer.write(example.SerializeToString())
    return path


def _pipeline_and_step(config, rates, steps):
    """Each `rates` entry (name -> callable giving images/s) timed before and after the training
    step of `config`'s model: {name: [first, second]}, images/s the step consumes."""
    import tensorflow as tf

    from benchmarks import train_step
    from dolg_model import model as dolg_lib

    first = {name: rate() for name, rate in rates.items()}
    tf.keras.backend.clear_session()
    model = dolg_lib.build_dolg(config.model)
    step_s = train_step.step_seconds(model, config.model, config.batch_size, config.model.image_size, steps)
    second = {name: rate() for name, rate in rates.items()}
    return {name: [first[name], second[name]] for name in rates}, config.batch_size / step_s, step_s


def _rows(passes, consume, step_s, step_name):
    rows = [{"stage": name, "images_s": sum(p) / 2, "passes": p, "ratio_to_step": sum(p) / 2 / consume}
            for name, p in passes.items()]
    return rows + [{"stage": step_name, "images_s": consume, "step_s": step_s, "ratio_to_step": 1.0}]


def _table(rows):
    return common.md_table(
        ["stage", "images/s", "two passes", "images/s / training step"],
        [[r["stage"], f"{r['images_s']:.1f}",
          " / ".join(f"{p:.1f}" for p in r.get("passes", [])) or f"step {r['step_s'] * 1000:.0f} ms",
          f"{r['ratio_to_step']:.2f}x"] for r in rows])


def _photo_run(args, preset, config, run_info):
    """(preset, config, run info) of the cpu-demo run the photo rows read (see the docstring)."""
    from pipeline.config import load_config

    if args.smoke or preset == common.FULL_PRESET:
        return preset, config, run_info
    return (common.FULL_PRESET, load_config(common.FULL_PRESET, **SHORT_RUN),
            common.pipeline_run(common.FULL_PRESET, common.QUICK_DATA, **SHORT_RUN))


def run(args):
    common.quiet_tf()
    import tensorflow_transform as tft

    from pipeline import dataset

    preset, config, data, run_info = common.bench_run(args)
    batches, warmup, steps = (40, 5, 10) if args.full else (2, 1, 1) if args.smoke else (20, 3, 5)

    def reader(output):
        examples, graph_uri, _ = common.run_artifacts(output)
        files = sorted(glob.glob(os.path.join(examples.uri, "Split-train", "*")))
        tft_output, accessor = tft.TFTransformOutput(graph_uri), _data_accessor(examples)

        def rate(batch, augment, files=files):
            ds = dataset.make_dataset(files, accessor, tft_output, batch, training=True, augment=augment)
            return lambda: images_per_second(ds, batches, warmup)
        return files, rate

    train_files, rate = reader(run_info["output"])
    # decode only (no augmentation) tells how the pipeline's cost splits when a target is missed
    names = {True: "input pipeline: decode (Transform graph) + augment",
             False: "input pipeline: decode (Transform graph) only"}
    rates = {names[aug]: rate(config.batch_size, aug) for aug in (True, False)}
    photo_preset, photo_config, photo_info = _photo_run(args, preset, config, run_info)
    photo_rates = _photo_rates(args, photo_config, photo_info, reader)
    if photo_info is run_info:  # one network, one step timing for both tables
        passes, consume, step_s = _pipeline_and_step(config, dict(rates, **photo_rates), steps)
        photo_passes, photo_consume, photo_step_s = {k: passes.pop(k) for k in photo_rates}, consume, step_s
    else:
        passes, consume, step_s = _pipeline_and_step(config, rates, steps)
        photo_passes, photo_consume, photo_step_s = _pipeline_and_step(photo_config, photo_rates, steps)
    rows = _rows(passes, consume, step_s, f"training step ({config.model.backbone}, train_step.step_seconds)")
    check = common.verdict("pipeline (with augmentation) / training step", rows[0]["ratio_to_step"],
                           TARGET, higher_is_better=True)
    photo_rows = _rows(photo_passes, photo_consume, photo_step_s,
                       f"training step ({photo_config.model.backbone} at {photo_config.model.image_size} px)")
    photo_check = common.verdict("640x480 photos: pipeline / training step", photo_rows[0]["ratio_to_step"],
                                 TARGET, higher_is_better=True)
    markdown = (f"Preset `{preset}`: {config.model.backbone} at {config.model.image_size} px, batch "
                f"{config.batch_size}; {data} ({len(train_files)} train file(s)); {batches} batches timed after "
                f"{warmup} of warm-up; step: median of {steps}. Pipeline run "
                f"{'reused from' if run_info['reused'] else 'made in'} `{common.shown_path(run_info['output'])}`."
                f"\n\n{_table(rows)}\n\n{check}\n\n"
                f"Photo-sized JPEGs, preset `{photo_preset}`: {photo_config.model.backbone} at "
                f"{photo_config.model.image_size} px, batch {photo_config.batch_size}; the train Examples of "
                f"`{common.shown_path(photo_info['output'])}` with their images replaced by photos "
                f"({', '.join(f'{n[not args.smoke]} distinct {w}x{h}' for (w, h), n in DISTINCT.items())})."
                f"\n\n{_table(photo_rows)}\n\n{photo_check}")
    missed = [c for c in (check, photo_check) if "MISSED" in c]
    return markdown, missed, rows + [dict(r, photos=True) for r in photo_rows]


def _photo_rates(args, config, run_info, reader):
    """{row name: images/s callable} of the pipeline on each photo size's Examples (made once)."""
    train_files, rate = reader(run_info["output"])
    rates = {}
    for width, height in DISTINCT:
        big = width * height > 4e6
        path = os.path.join(run_info["scratch"], f"photos-{width}x{height}{'-smoke' if args.smoke else ''}.tfrecord.gz")
        if not os.path.exists(path):
            photo_examples(train_files, path + ".part", width, height, DISTINCT[width, height][not args.smoke],
                           upscale=4 if big and args.smoke else 1)
            os.replace(path + ".part", path)
        # 12 MP as many batches as the others: a prefetched batch or two must not be most of it
        rates[f"{width}x{height} JPEGs (EXIF 6): decode + augment"] = rate(config.batch_size, True, [path])
    return rates


def main():
    args = common.parser(__doc__, reads_run=True).parse_args()
    markdown, missed, rows = run(args)
    common.finish(args, "Input pipeline vs training step", markdown, missed, rows)


if __name__ == "__main__":
    main()
