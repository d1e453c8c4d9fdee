"""The Trainer's input pipeline: raw examples -> transform graph -> augmentation -> batches.

Images stay encoded on disk; decoding happens here, in parallel, through the Transform
graph (the same graph the serving signatures use), so training and serving decode alike.
"""
import tensorflow as tf
from tfx_bsl.public import tfxio

from pipeline import features as F


def random_resized_crop(images, area=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """Per image: a random crop covering `area` of it with aspect in `ratio`, resized back."""
    size = tf.shape(images)[1:3]

    def crop(image):
        begin, extent, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), min_object_covered=0.0,
            area_range=area, aspect_ratio_range=ratio, use_image_if_no_bounding_boxes=True)
        return tf.image.resize(tf.slice(image, begin, extent), size, antialias=True)

    return tf.map_fn(crop, images, fn_output_signature=tf.float32)


def colour_jitter(images, brightness=0.2, contrast=0.2, saturation=0.2):
    """Per-image random brightness, contrast and saturation on [0, 255] pixels."""
    batch = tf.shape(images)[0]

    def factor(spread):
        return tf.random.uniform([batch, 1, 1, 1], 1.0 - spread, 1.0 + spread)

    images = images * factor(brightness)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * factor(contrast) + mean
    grey = tf.reduce_mean(images, axis=-1, keepdims=True)
    images = (images - grey) * factor(saturation) + grey
    return tf.clip_by_value(images, 0.0, 255.0)


def augment_images(images):
    """Training-only augmentation: random resized crop, horizontal flip, colour jitter."""
    images = random_resized_crop(images)
    images = tf.image.random_flip_left_right(images)
    return colour_jitter(images)


def shard_files(file_pattern, num_shards: int, index: int):
    """Shard ``index`` of ``num_shards`` by FILE when there are at least as many files as
    shards (each worker then reads only its own files), else None: sharding by DATA is
    needed, since a worker left without a file would hang the others' collectives."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted(f for pattern in patterns for f in tf.io.gfile.glob(pattern))
    if len(files) < num_shards:
        return None
    return files[index::num_shards]


def make_dataset(file_pattern, data_accessor, tf_transform_output, batch_size, training, augment=True,
                 input_context=None, seed=None, keep_ids=False):
    """Batches of ({"image", "label"}, label) for the training model.

    Args:
      file_pattern: the raw Examples files of a split.
      data_accessor: fn_args.data_accessor.
      tf_transform_output: the Transform output (its graph decodes the images).
      batch_size: the global batch size.
      training: shuffle, repeat and drop the last partial batch.
      augment: with training, apply the training augmentation.
      input_context: a tf.distribute.InputContext (strategy.distribute_datasets_from_function):
        the dataset is then this input pipeline's share, batched per replica (global batch /
        replicas; the strategy hands consecutive batches to the local replicas), sharded by
        file when there are enough files, else by batch before any image is decoded.
      seed: the shuffle seed. Sharding by DATA needs one: every worker must draw the same
        order, or the workers' batches would overlap.
      keep_ids: also pass each example's raw image id through (``features["image_id"]``, one
        string per example), so a test can see exactly which examples an input pipeline read;
        run_fn never asks for it.
    """
    shards, index, files = 1, 0, file_pattern
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        shards, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    by_file = shard_files(file_pattern, shards, index) if shards > 1 else None
    if by_file is not None:
        files = by_file
    elif shards > 1 and seed is None and training:
        raise ValueError("sharding by DATA needs a shuffle seed shared by every worker")
    options = tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle=training, shuffle_seed=seed,
                                             num_epochs=None if training else 1, drop_final_batch=training)
    raw = data_accessor.tf_dataset_factory(files, options, tf_transform_output.raw_metadata.schema)
    if shards > 1 and by_file is None:
        # Same order everywhere (seeded), every worker keeps its own batches: before the
        # transform map, so no worker decodes images it then throws away.
        raw = raw.shard(shards, index)
    tft_layer = tf_transform_output.transform_features_layer()

    # Not converted by AutoGraph (plain TensorFlow ops only): converting this function and the
    # Transform layer's code under it cost every Trainer process about a second.
    @tf.autograph.experimental.do_not_convert
    def transform(raw_features):
        out = tft_layer({F.IMAGE: raw_features[F.IMAGE], F.LABEL: raw_features[F.LABEL]})
        images = tf.ensure_shape(out[F.IMAGE], [None, None, None, 3])
        if training and augment:
            images = augment_images(images)
        labels = tf.cast(tf.reshape(out[F.LABEL], [-1]), tf.int32)
        features = {F.IMAGE: images, F.LABEL: labels}
        if keep_ids:
            features[F.IMAGE_ID] = tf.reshape(raw_features[F.IMAGE_ID], [-1])
        return features, labels

    data = raw.map(transform, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    opts = tf.data.Options()
    # No autotuning model: it runs in a thread of its own that the iterator's destructor waits
    # for, and that thread sleeps out its optimisation period (doubling up to a minute) instead
    # of waking when the iterator is cancelled: Keras' fit returned 3-48 s after its last step
    # in about one Trainer run in three. Without it the map runs one call per core and the
    # prefetch buffer still grows on its own (tf.data's legacy prefetch autotuner).
    opts.autotune.enabled = False
    if input_context is not None:
        # Sharded here already: tf.distribute must not shard again.
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return data.with_options(opts)
