"""ImageExampleGen: a TFX component that turns image files into validated tf.Examples."""
from __future__ import annotations

from typing import Optional, Union

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.orchestration import data_types
from tfx.types import standard_artifacts

from components.image_example_gen import executor, inputs, splits
from components.image_example_gen import spec as s


class ImageExampleGen(base_beam_component.BaseBeamComponent):
    """Ingests images from a folder tree or a GLDv2-style CSV into train/eval Examples.

    Every file is validated in the Beam pipeline (size, magic bytes, header dimensions
    against ``max_pixels`` before any decoding, then a full decode with Pillow and
    TensorFlow). Accepted files become tf.Examples with the ORIGINAL encoded bytes and the
    features ``image``, ``image_id``, ``label``, ``format`` (bytes) and ``width``,
    ``height`` (int64, stored dimensions, EXIF orientation not applied). Refused files are
    listed with a reason in the ``report`` output; files seen = emitted + reported.

    The eval split holds whole labels never seen in training, chosen by a salted hash of
    the label (see ``splits.SplitRule`` for the rule and the small-data guard).

    ## Example
    ```
    example_gen = ImageExampleGen(input_base="/data/gldv2/train.csv", eval_fraction=0.1)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    ```

    Caching: a cached run is reused while the exec properties are unchanged. For local inputs
    the constructor records a fingerprint of the files (paths, sizes, modification times; for
    a manifest, its own bytes too), so adding, removing or editing an image reruns ingestion.
    It costs one walk with a stat per file (an edit in place changes only that file's mtime,
    so nothing cheaper can see it). Above ``fingerprint_max_files`` files the walk stops, no
    fingerprint is taken and a warning says so; then, as for URIs (gs://..., never listed at
    definition time), disable caching (``--no-cache``) or pass ``input_fingerprint`` yourself
    after editing the data.

    Component `outputs` contains:
     - `examples`: Channel of type `standard_artifacts.Examples`, splits `train` and `eval`.
     - `report`: Channel of type `IngestionReport`: `rejected.jsonl` and `summary.json`.
    """

    SPEC_CLASS = s.ImageExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self,
                 input_base: Union[str, data_types.RuntimeParameter],
                 images_subdir: Optional[str] = None,
                 eval_fraction: float = s.DEFAULT_EVAL_FRACTION,
                 max_bytes: int = s.DEFAULT_MAX_BYTES,
                 max_pixels: int = s.DEFAULT_MAX_PIXELS,
                 decode_size: Optional[int] = None,
                 split_salt: str = s.DEFAULT_SPLIT_SALT,
                 input_fingerprint: Optional[str] = None,
                 fingerprint_max_files: Optional[int] = inputs.DEFAULT_FINGERPRINT_MAX_FILES):
        """Constructs an ImageExampleGen.

        Args:
          input_base: a folder ``<label>/<image>`` or a CSV manifest (``id,landmark_id``
            and optionally ``path``); a local or mounted path, or a URI any TensorFlow file
            system reads (gs://, s3://, hdfs://...). Manifest paths that leave the image root
            are refused: via symlinks locally, lexically (``..``, absolute, URI) for URIs.
          images_subdir: for a manifest: the image root relative to the CSV's folder, or
            absolute, or a URI (default: the CSV's stem, ``train.csv`` -> ``train/``).
          eval_fraction: share of LABELS held out for eval, strictly between 0 and 1.
          max_bytes: larger files are refused without being read.
          max_pixels: images whose header claims more pixels are refused before decoding
            (for a JPEG: more pixels at the reduced scale it is decoded at, see decode_size).
          decode_size: the model's input size (pixels a side): a JPEG whose short side is at
            least twice that is checked as the Transform decodes it, at 1/2, 1/4 or 1/8
            (``components.images.rules.JPEG_SCALES``). None: every image at full size.
          split_salt: mixed into the label hash; change it for another train/eval split.
          input_fingerprint: a digest of the input files (computed for local inputs when None).
          fingerprint_max_files: above this many files no fingerprint is computed (None: no
            limit); see Caching above.
        """
        # Plain numbers (not RuntimeParameters) are normalised and checked now, at pipeline
        # definition, rather than minutes later in the executor; 40e6 is a fine max_pixels.
        if isinstance(eval_fraction, (int, float)):
            eval_fraction = float(eval_fraction)
            splits.eval_threshold(eval_fraction)
        max_bytes, max_pixels = (int(v) if isinstance(v, float) else v for v in (max_bytes, max_pixels))
        spec = s.ImageExampleGenSpec(
            input_base=input_base,
            images_subdir=images_subdir,
            eval_fraction=eval_fraction,
            max_bytes=max_bytes,
            max_pixels=max_pixels,
            decode_size=decode_size,
            split_salt=split_salt,
            input_fingerprint=(inputs.fingerprint(input_base, images_subdir, fingerprint_max_files)
                               if input_fingerprint is None and isinstance(input_base, str)
                               else input_fingerprint),
            examples=types.Channel(type=standard_artifacts.Examples),
            report=types.Channel(type=s.IngestionReport))
        super().__init__(spec=spec)
