"""The Trainer's input path (``pipeline/dataset.py`` as ``run_fn`` in ``pipeline/trainer.py``
builds it) and its training augmentation.

The input is taken from ``run_fn`` itself: run with the ``tiny`` preset on 24 raw examples
(gzipped TFRecords, read through TFX's own DataAccessor for an Examples artifact), a real
Transform graph (the pipeline's ``preprocessing_fn`` analysed by tf.Transform) and a
MirroredStrategy over two logical CPUs, the dataset that ``run_fn`` hands to ``fit`` is
caught there (the model builders are stubbed: they are not what is tested). So a change to
how ``run_fn`` builds or distributes its dataset is seen here, not only a change to
``make_dataset``.

Each raw image is one flat colour, (180, 60 + 5 i, 60) for row i: the row is read back as
(R - G) / (R - B) = 1 - i / 24, which the augmentation keeps (a crop of a flat image is flat;
brightness, contrast and saturation scale every channel difference alike, and the colours
stay clear of clipping), so rows are identified in augmented batches too.
"""
import functools
import io
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dolg_model import model as dolg_lib
from dolg_model import training
from pipeline import dataset, signatures, trainer
from pipeline import features as F
from pipeline.config import load_config
from pipeline.preprocessing import preprocessing_fn, transform_config

CONFIG = load_config("tiny")  # batch 16 over 2 replicas: 8 each; augment on; 64 px
N_ROWS = 24
REPLICAS = 2


def _colour(i):
    return (180, 60 + 5 * i, 60)


def _label(i):
    return f"lm{i % 6}"  # 6 labels of 4 rows: a row paired with another row's label shows


def _row_of(image):
    """The raw row an (augmented) flat image comes from; -1 if it is not one of them."""
    r, g, b = np.asarray(image, np.float64).reshape(-1, 3).mean(axis=0)
    i = (1.0 - (r - g) / (r - b)) * N_ROWS
    return int(round(i)) if abs(i - round(i)) < 0.1 and 0 <= round(i) < N_ROWS else -1


def _raw_example(i):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), _colour(i)).save(buf, "PNG")
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()])),
        "image_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"row{i:02d}".encode()])),
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_label(i).encode()])),
        "format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"])),
        "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[16])),
        "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[16])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _transform_output(out_dir, train_files):
    """The pipeline's preprocessing_fn analysed by tf.Transform (Beam's DirectRunner) on the
    train split, with the pipeline's schema, as the Trainer is handed it."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from schemas import SCHEMA_FILE

    schema = text_format.Parse(pathlib.Path(SCHEMA_FILE).read_text(), schema_pb2.Schema())
    metadata = dataset_metadata.DatasetMetadata(schema)
    feature_spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    raw = [{k: v.numpy() for k, v in tf.io.parse_single_example(r, feature_spec).items()}
           for r in tf.data.TFRecordDataset(train_files, compression_type="GZIP")]
    fn = functools.partial(preprocessing_fn, custom_config=transform_config(CONFIG))
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=os.path.join(out_dir, "tmp")):
        transform_fn = (pipeline | beam.Create(raw, reshuffle=False), metadata) | tft_beam.AnalyzeDataset(fn)
        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    metadata_io.write_metadata(metadata, os.path.join(out_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return tft.TFTransformOutput(out_dir)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """24 raw examples as ImageExampleGen writes them, TFX's DataAccessor for them, and the
    Transform output analysed on them."""
    from tfx.components.trainer import fn_args_utils
    from tfx.components.util import tfxio_utils
    from tfx.types import artifact_utils, standard_artifacts

    tmp = tmp_path_factory.mktemp("trainer_input")
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp / "examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    split = tmp / "examples" / "Split-train"
    split.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split / "data_tfrecord-00000-of-00001.gz"), "GZIP") as w:
        for i in range(N_ROWS):
            w.write(_raw_example(i))
    train_files = [str(split / "*")]
    accessor = fn_args_utils.DataAccessor(
        tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], []),
        record_batch_factory=None, data_view_decode_fn=None)
    tft_output = _transform_output(str(tmp / "transform"), [str(split / "data_tfrecord-00000-of-00001.gz")])
    vocab = [v.decode() for v in tft_output.vocabulary_by_name(F.LABEL_VOCAB)]
    return {"tmp": tmp, "transform_dir": str(tmp / "transform"), "train_files": train_files, "accessor": accessor, "tft_output": tft_output,
            "label_ids": np.array([vocab.index(_label(i)) for i in range(N_ROWS)])}


class _Caught(Exception):
    pass


def run_fn_train_data(inputs, config, name):
    """Calls the Trainer's run_fn with ``config`` on a MirroredStrategy over two logical CPUs
    and returns (strategy, the dataset run_fn passes to fit, fit's keyword arguments)."""
    from tfx.components.trainer import fn_args_utils

    cpus = [d.name for d in tf.config.list_logical_devices("CPU")][:REPLICAS]
    strategy = training.choose_strategy(cpus)
    caught = {}

    class Model:
        def fit(self, data, **kwargs):
            caught.update(data=data, kwargs=kwargs)
            raise _Caught

    tmp = inputs["tmp"] / name
    fn_args = fn_args_utils.FnArgs(
        train_files=inputs["train_files"], data_accessor=inputs["accessor"],
        transform_output=inputs["transform_dir"], train_steps=config.train_steps,
        custom_config={"config": config.trainer_json(), "backup_root": str(tmp / "backup")},
        model_run_dir=str(tmp / "run"), serving_model_dir=str(tmp / "serving"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "choose_strategy", lambda: strategy)
        mp.setattr(dolg_lib, "build_dolg", lambda *a, **k: None)
        mp.setattr(training, "compile_training_model", lambda *a, **k: Model())
        with pytest.raises(_Caught):
            trainer.run_fn(fn_args)
    return strategy, caught["data"], caught["kwargs"]


def _steps(inputs, config, name, n=3):
    """``n`` global steps of run_fn's training input: per step, per replica,
    (rows, images, labels, targets)."""
    strategy, data, _ = run_fn_train_data(inputs, config, name)
    assert strategy.num_replicas_in_sync == REPLICAS
    steps, it = [], iter(data)
    for _ in range(n):
        try:
            features, target = next(it)
        except (StopIteration, tf.errors.OutOfRangeError):
            break  # the data ran out (the test counts the steps)
        steps.append([(np.array([_row_of(im) for im in images.numpy()]), images.numpy(), labels.numpy(), t.numpy())
                      for images, labels, t in zip(strategy.experimental_local_results(features[F.IMAGE]),
                                                   strategy.experimental_local_results(features[F.LABEL]),
                                                   strategy.experimental_local_results(target))])
    return steps


@pytest.fixture(scope="module")
def augmented_steps(inputs):
    """Three global steps of run_fn's input with the tiny preset (augmentation on)."""
    return _steps(inputs, CONFIG, "augmented")


@pytest.fixture(scope="module")
def plain_steps(inputs):
    """The same with ``augment=False``."""
    return _steps(inputs, CONFIG.replace(augment=False), "plain")


def test_run_fn_hands_each_replica_its_own_share_of_every_global_batch(augmented_steps):
    """Each replica gets batch_size / replicas images of the model's size, the two replicas of a
    step different batches, and the per-replica batches, in order, are the shuffled stream:
    3 steps of 16 = 2 epochs of 24 rows, each epoch every row once (24 is a multiple of the
    per-replica 8, so no replica's batch straddles two epochs and its rows are distinct).

    Mutations that fail it: make_dataset without ``get_per_replica_batch_size`` (each replica
    gets the whole global batch, 16); run_fn's make_dataset with ``training=False`` (no
    shuffle, no repeat: file order, and the data end within the second step)."""
    per_replica = CONFIG.batch_size // REPLICAS
    assert len(augmented_steps) == 3  # a repeating stream
    stream = []
    for step in augmented_steps:
        assert len(step) == REPLICAS
        for rows, images, labels, targets in step:
            assert images.shape == (per_replica, CONFIG.model.image_size, CONFIG.model.image_size, 3)
            assert images.dtype == np.float32 and labels.dtype == targets.dtype == np.int32
            assert labels.shape == targets.shape == (per_replica,)
            assert (rows >= 0).all(), rows  # every image is one of the raw rows
            assert len(set(rows)) == per_replica, rows
            stream += list(rows)
        first, second = (rows for rows, *_ in step)
        assert set(first) != set(second), step  # not one shard fed to both replicas
    epochs = [stream[:N_ROWS], stream[N_ROWS:]]
    assert all(sorted(e) == list(range(N_ROWS)) for e in epochs), stream  # none lost, none doubled
    assert epochs[0] != list(range(N_ROWS)) and epochs[0] != epochs[1], stream  # shuffled, per epoch


def test_run_fn_pairs_every_image_with_its_own_label(inputs, augmented_steps):
    """After the per-replica split (and the augmentation) each image still carries its row's
    label, in the features and as the target. Mutation that fails it: ``labels =
    tf.roll(labels, 1, 0)`` in make_dataset's transform (images and labels one row apart)."""
    for step in augmented_steps:
        for rows, _, labels, targets in step:
            np.testing.assert_array_equal(labels, inputs["label_ids"][rows])
            np.testing.assert_array_equal(targets, labels)


def test_the_seed_fixes_the_shuffle_order(augmented_steps, plain_steps):
    """config.seed "seeds the shuffle order": two run_fn calls with the same seed draw the same
    rows in the same order (the augmentation does not touch the order)."""
    assert [list(rows) for step in augmented_steps for rows, *_ in step] == \
           [list(rows) for step in plain_steps for rows, *_ in step]


# --------------------------------------------------------------------------- augmentation
def _coordinates(n):
    """n copies of a 64 x 64 image whose red channel is 4 x (column), green 4 x (row) and blue
    a fixed noise: where a pixel came from can be read off its red and green values."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    blue = np.random.default_rng(0).uniform(0, 255, (64, 64)).astype(np.float32)
    return np.repeat(np.stack([4 * x, 4 * y, blue], axis=-1)[None], n, axis=0)


def test_run_fn_augments_when_the_config_says_so_and_only_then(inputs, augmented_steps, plain_steps):
    """With ``augment=False`` run_fn's images are the decoded raw images, pixel for pixel (a flat
    colour); with the preset's ``augment=True`` they are jittered (their colour moved).
    Mutations that fail it: run_fn passing ``augment=False`` (or make_dataset dropping the
    ``if training and augment`` call, or augment_images returning its input): the augmented
    images stay the raw colours; make_dataset testing ``if training:`` (ignoring ``augment``):
    the plain images move."""
    for step in plain_steps:
        for rows, images, *_ in step:
            for row, image in zip(rows, images):
                np.testing.assert_allclose(image, np.broadcast_to(_colour(row), image.shape), atol=1e-3)
    moved = [np.abs(image.reshape(-1, 3).mean(axis=0) - _colour(row)).max()
             for step in augmented_steps for rows, images, *_ in step for row, image in zip(rows, images)]
    assert np.mean(np.array(moved) > 2.0) > 0.8, moved  # brightness alone moves by up to 20 %


def test_augment_images_keeps_shape_dtype_and_range_and_changes_every_image_its_own_way():
    """A batch of one image 16 times: the same shape and dtype, pixels within [0, 255], every
    image changed, and no two alike (the augmentation is drawn per image, not per batch).
    Mutation that fails it: augment_images returning its input (a no-op)."""
    tf.random.set_seed(1)
    images = _coordinates(16)
    out = dataset.augment_images(tf.constant(images))
    assert out.shape == images.shape and out.dtype == tf.float32
    out = out.numpy()
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 255.0
    changed = np.abs(out - images).reshape(16, -1).mean(axis=1)
    assert (changed > 5.0).all(), changed
    pairs = [np.abs(out[i] - out[j]).mean() for i in range(16) for j in range(i)]
    assert min(pairs) > 1.0, min(pairs)


def test_random_resized_crop_takes_crops_of_the_promised_area_and_aspect():
    """Each output, resized back to 64 x 64, shows one crop of the image (read off the
    coordinates its corners carry) covering 35 % to 100 % of it with a width/height in
    [3/4, 4/3], and the crops vary. Mutations that fail it: ``area=(1.0, 1.0)`` (no crop: every
    area 1); ``area=(0.05, 1.0)`` (crops below 35 %); a crop not resized back (shape)."""
    tf.random.set_seed(2)
    out = dataset.random_resized_crop(tf.constant(_coordinates(32)))
    assert out.shape == (32, 64, 64, 3) and out.dtype == tf.float32
    out = out.numpy()
    width = (out[:, :, -1, 0].mean(axis=1) - out[:, :, 0, 0].mean(axis=1)) / 4 + 1  # columns it spans
    height = (out[:, -1, :, 1].mean(axis=1) - out[:, 0, :, 1].mean(axis=1)) / 4 + 1
    area, aspect = width * height / 64 ** 2, width / height
    assert (area >= 0.35 - 0.02).all() and (area <= 1.0 + 1e-3).all(), area
    assert (aspect >= 0.75 - 0.03).all() and (aspect <= 4 / 3 + 0.03).all(), aspect
    assert area.min() < 0.6 and len({round(a, 2) for a in area}) > 16, area  # crops vary


def test_augment_images_flips_some_images_left_right_and_not_others():
    """The red channel grows left to right in the input; colour jitter keeps that order (its
    factors are positive), so an output whose red falls from left to right was flipped. Of 32
    copies some are and some are not. Mutation that fails it: no random_flip_left_right."""
    tf.random.set_seed(3)
    out = dataset.augment_images(tf.constant(_coordinates(32))).numpy()
    slope = out[:, :, -1, 0].mean(axis=1) - out[:, :, 0, 0].mean(axis=1)
    flipped = int((slope < 0).sum())
    assert (np.abs(slope) > 10).all(), slope
    assert 6 <= flipped <= 26, flipped


def test_colour_jitter_draws_a_brightness_per_image_within_its_range_and_clips_to_pixels():
    """On flat grey images contrast and saturation change nothing: each output is the grey times
    its own brightness factor in [0.8, 1.2]; pixels pushed past 0 or 255 are clipped there.
    Mutations that fail it: one factor for the whole batch (``[1, 1, 1, 1]``); no clipping."""
    tf.random.set_seed(4)
    grey = np.full((64, 8, 8, 3), 100.0, np.float32)
    factors = dataset.colour_jitter(tf.constant(grey)).numpy().reshape(64, -1) / 100.0
    assert np.allclose(factors, factors[:, :1], atol=1e-4)  # flat stays flat
    factors = factors[:, 0]
    assert factors.min() >= 0.8 - 1e-5 and factors.max() <= 1.2 + 1e-5, factors
    assert factors.min() < 0.9 and factors.max() > 1.1 and len(set(np.round(factors, 4))) > 60, factors
    # Half black, half white: brightness above 1 pushes the white past 255, contrast above 1
    # the black below 0; both must end on the pixel range's edges.
    extremes = np.zeros((64, 8, 8, 3), np.float32)
    extremes[:, :, 4:] = 255.0
    out = dataset.colour_jitter(tf.constant(extremes)).numpy()
    assert out.min() == 0.0 and out.max() == 255.0, (out.min(), out.max())
    assert (out[:, :, :4] == 0.0).all(axis=(1, 2, 3)).sum() > 16  # clipped up to 0, not left below
    assert (out[:, :, 4:] == 255.0).all(axis=(1, 2, 3)).sum() > 16  # clipped down to 255


def test_make_dataset_never_augments_outside_training(inputs, monkeypatch):
    """The eval-style input (``training=False``) never calls the augmentation, even with
    ``augment=True``: the images are the decoded raw images. Mutation that fails it: make_dataset
    testing ``if augment:`` instead of ``if training and augment:``."""
    def refuse(images, *args, **kwargs):
        raise AssertionError("augmentation called outside training")

    for name in ("augment_images", "random_resized_crop", "colour_jitter"):
        monkeypatch.setattr(dataset, name, refuse)
    data = dataset.make_dataset(inputs["train_files"], inputs["accessor"], inputs["tft_output"], 8,
                                training=False, augment=True)
    rows = []
    for features, labels in data:
        for image in features[F.IMAGE].numpy():
            rows.append(_row_of(image))
            np.testing.assert_allclose(image, np.broadcast_to(_colour(rows[-1]), image.shape), atol=1e-3)
    assert rows == list(range(N_ROWS))  # every row once, in file order: no shuffle either


@pytest.mark.parametrize("training", [True, False])
def test_make_dataset_runs_without_the_autotuning_model_thread(inputs, training):
    """tf.data's autotuning model thread is what Keras' fit waited for, 3-48 s after the last
    step in about one in-process Trainer run in three (the iterator's destructor joins it while
    it sleeps out its optimisation period): every input pipeline make_dataset builds has it off.
    Mutation that fails it: dropping ``opts.autotune.enabled = False``."""
    data = dataset.make_dataset(inputs["train_files"], inputs["accessor"], inputs["tft_output"], 8,
                                training=training, augment=False)
    assert data.options().autotune.enabled is False
    features, _ = next(iter(data))  # and it still delivers batches
    assert features[F.IMAGE].shape[0] == 8


RANDOM_OPS = ("Random", "SampleDistortedBoundingBox", "Multinomial", "Shuffle")


def _op_types(graph_def):
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


def test_serving_and_evaluator_signatures_draw_nothing_at_random(inputs):
    """The exported signatures (serving_default for TF Serving and the retrieval code,
    serving_examples for the Evaluator, ...), built by the Trainer's own build_signatures on the
    tiny DOLG and the real Transform graph, hold no random op: no augmentation, and nothing else
    drawn at random, reaches eval or serving. Mutation that fails it: signatures' ``decode``
    passing its images through ``dataset.augment_images``."""
    dolg = dolg_lib.build_dolg(CONFIG.model)
    tft_layer = inputs["tft_output"].transform_features_layer()
    raw_spec = inputs["tft_output"].raw_feature_spec()
    raw_spec.pop(F.LABEL, None)
    built = signatures.build_signatures(dolg, tft_layer, raw_spec, CONFIG.model.scales, CONFIG.resize_mode)
    assert len(built) == 5
    for name, function in built.items():
        types = _op_types(function.graph.as_graph_def())
        assert types, name
        random = sorted(t for t in types if any(k in t for k in RANDOM_OPS))
        assert not random, (name, random)
