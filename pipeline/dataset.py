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


def make_dataset(file_pattern, data_accessor, tf_transform_output, batch_size, training, augment=True):
    """Batches of ({"image", "label"}, label) for the training model.

    Args:
      file_pattern: the raw Examples files of a split.
      data_accessor: fn_args.data_accessor.
      tf_transform_output: the Transform output (its graph decodes the images).
      batch_size: the global batch size.
      training: shuffle, repeat and drop the last partial batch.
      augment: with training, apply the training augmentation.
    """
    options = tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle=training,
                                             num_epochs=None if training else 1, drop_final_batch=training)
    raw = data_accessor.tf_dataset_factory(file_pattern, options, tf_transform_output.raw_metadata.schema)
    tft_layer = tf_transform_output.transform_features_layer()

    def transform(raw_features):
        out = tft_layer({F.IMAGE: raw_features[F.IMAGE], F.LABEL: raw_features[F.LABEL]})
        images = tf.ensure_shape(out[F.IMAGE], [None, None, None, 3])
        if training and augment:
            images = augment_images(images)
        labels = tf.cast(tf.reshape(out[F.LABEL], [-1]), tf.int32)
        return {F.IMAGE: images, F.LABEL: labels}, labels

    return raw.map(transform, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
