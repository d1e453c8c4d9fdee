"""Embedding image files in this process with a pushed DOLG SavedModel (the contract:
``serving_contract``; the same in a Beam pipeline: ``gallery_embedding``).

Multi-scale test-time augmentation happens inside the model, so this module only reads bytes,
crops query boxes, batches, and isolates failures: a file that cannot be read or decoded is
reported with its path and reason and skipped, it never aborts a whole run.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

from components.images.rules import DEFAULT_MAX_BYTES  # ImageExampleGen's byte cap
from components.progress import ProgressReporter
from components.retrieval.serving_contract import (ATTENTION_INPUT, ATTENTION_OUTPUT, ATTENTION_SIGNATURE,
                                                   EMBEDDING_OUTPUT, IMAGES_INPUT, IMAGES_SIGNATURE,
                                                   SCALES_INPUT, SCALES_SIGNATURE, resolve_model_dir)


@dataclasses.dataclass(frozen=True)
class Failure:
    """An image that was skipped: its id, its path and why."""
    image_id: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclasses.dataclass
class EmbedResult:
    """What an embedding run produced.

    ``positions[i]`` is the index, in the input list, of the image whose id is ``ids[i]`` and
    whose embedding is ``embeddings[i]``; inputs not in ``positions`` are in ``failures``.
    """
    ids: list
    embeddings: np.ndarray
    positions: np.ndarray
    failures: list
    labels: Optional[list] = None
    paths: Optional[list] = None


def crop_to_png(data: bytes, box: Sequence[float]) -> bytes:
    """Crops encoded image bytes to ``box`` = (x1, y1, x2, y2) in pixels; returns PNG bytes.

    The box is in the upright frame (EXIF orientation applied), the frame the model's graph
    decoder gives the uncropped database images too; the PNG carries no EXIF, so the model
    takes it as it is. PNG keeps the crop lossless, so cropping is the only change made to the
    query's pixels. Coordinates are rounded to whole pixels and clipped to the image, as
    revisitop's PIL crop does.
    """
    with Image.open(io.BytesIO(data)) as original:
        original.seek(0)  # first frame of an animation, as the graph decoder takes
        im = ImageOps.exif_transpose(original)
        w, h = im.size
        x1, y1, x2, y2 = (float(v) for v in box)
        left, top = max(0, int(round(x1))), max(0, int(round(y1)))
        right, bottom = min(w, int(round(x2))), min(h, int(round(y2)))
        if right <= left or bottom <= top:
            raise ValueError(f"crop box {tuple(box)} is empty inside a {w}x{h} image")
        crop = im.convert("RGB").crop((left, top, right, bottom))
    out = io.BytesIO()
    crop.save(out, format="PNG")
    return out.getvalue()


# TensorFlow wraps the real cause of an op error in graph boilerplate; these lines are noise.
_TF_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")


def error_reason(err: BaseException) -> str:
    """One line for a report: the error type and the line of its message that says why."""
    msg = getattr(err, "message", None) or str(err) or repr(err)
    lines = [line.strip() for line in msg.splitlines() if line.strip()]
    if isinstance(err, tf.errors.OpError):
        lines = [line for line in lines if not line.startswith(_TF_NOISE)] or lines
        return f"{type(err).__name__}: {lines[-1] if lines else ''}"
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def read_file(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Reads a file's bytes, refusing files larger than ``max_bytes`` from their size."""
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{size} bytes > max_bytes {max_bytes}")
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)


class Embedder:
    """A loaded SavedModel (loaded once) that embeds batches of encoded images."""

    def __init__(self, model_dir: str, scales: Optional[Sequence[float]] = None):
        """Args:
          model_dir: the exported model (a version folder or the base holding versions).
          scales: embed at these scales (the model's `serving_scales` signature) instead of
            the scales it was exported with.
        """
        self.model_dir = resolve_model_dir(model_dir)
        self._loaded = tf.saved_model.load(self.model_dir)
        self._set_scales(scales)
        if IMAGES_SIGNATURE not in self._loaded.signatures:
            raise ValueError(f"{self.model_dir}: no {IMAGES_SIGNATURE!r} signature "
                             f"(has {sorted(self._loaded.signatures)})")
        self._fn = self._loaded.signatures[IMAGES_SIGNATURE]
        _, kwargs = self._fn.structured_input_signature
        if set(kwargs) != {IMAGES_INPUT}:
            raise ValueError(f"{self.model_dir}: {IMAGES_SIGNATURE} takes {sorted(kwargs)}, "
                             f"expected [{IMAGES_INPUT!r}]")
        if EMBEDDING_OUTPUT not in self._fn.structured_outputs:
            raise ValueError(f"{self.model_dir}: {IMAGES_SIGNATURE} returns "
                             f"{sorted(self._fn.structured_outputs)}, expected {EMBEDDING_OUTPUT!r}")
        self.dim = self._fn.structured_outputs[EMBEDDING_OUTPUT].shape[-1]

    def _set_scales(self, scales: Optional[Sequence[float]]) -> None:
        self.scales = None if scales is None else [float(s) for s in scales]
        if self.scales is not None:
            if SCALES_SIGNATURE not in self._loaded.signatures:
                raise ValueError(f"{self.model_dir}: no {SCALES_SIGNATURE!r} signature to embed at "
                                 f"chosen scales (has {sorted(self._loaded.signatures)})")
            if not self.scales or min(self.scales) <= 0:
                raise ValueError(f"scales must be positive, got {self.scales}")

    def with_scales(self, scales: Optional[Sequence[float]]) -> "Embedder":
        """The same model embedding at other scales (None: its exported ones). It shares the
        loaded SavedModel: loading one (the decoder and Transform graphs with it) takes seconds."""
        other = copy.copy(self)
        other._set_scales(scales)
        return other

    def attention_map(self, image_bytes: bytes) -> np.ndarray:
        """The raw local attention map [H, W] of one encoded image, laid over its pixels by the
        model's attention signature (pipeline/signatures.py).

        Raises:
          ValueError: the model has no attention signature (e.g. a bare Keras save).
        """
        if ATTENTION_SIGNATURE not in self._loaded.signatures:
            raise ValueError(f"{self.model_dir}: no {ATTENTION_SIGNATURE!r} signature")
        out = self._loaded.signatures[ATTENTION_SIGNATURE](**{ATTENTION_INPUT: tf.constant(image_bytes)})
        return out[ATTENTION_OUTPUT].numpy()

    def embed_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Embeds encoded images in one call; raises tf.errors.OpError if any is bad."""
        images = tf.constant(list(blobs), dtype=tf.string)
        if self.scales is not None:
            out = self._loaded.signatures[SCALES_SIGNATURE](
                **{IMAGES_INPUT: images, SCALES_INPUT: tf.constant(self.scales, tf.float32)})
        else:
            out = self._fn(**{IMAGES_INPUT: images})
        return out[EMBEDDING_OUTPUT].numpy().astype(np.float32, copy=False)

    def embed_blobs(self, blobs: Sequence[bytes]):
        """Embeds a batch, isolating bad images.

        The whole batch is tried first (the fast path); if the model rejects it, each image is
        retried alone so that one bad file costs only itself.

        Returns:
          (ok, embeddings, errors): ``ok`` indices into ``blobs`` that embedded, their
          embeddings ``[len(ok), D]``, and ``{index: reason}`` for the others.
        """
        if not blobs:
            return [], np.zeros((0, self.dim or 0), np.float32), {}
        try:
            embs, rows = self.embed_bytes(blobs), None
        except tf.errors.OpError:
            embs, rows = None, []
        errors = {}
        if embs is None:  # find the culprits one by one
            for i, blob in enumerate(blobs):
                try:
                    rows.append(self.embed_bytes([blob])[0])
                except tf.errors.OpError as err:
                    rows.append(None)
                    errors[i] = error_reason(err)
            good = [r for r in rows if r is not None]
            embs = np.stack(good) if good else np.zeros((0, self.dim or 0), np.float32)
            ok = [i for i, r in enumerate(rows) if r is not None]
        else:
            ok = list(range(len(blobs)))
        # A NaN/inf row would silently poison every ranking it takes part in: report it instead.
        finite = np.all(np.isfinite(embs), axis=1)
        for j in np.flatnonzero(~finite):
            errors[ok[j]] = "non-finite embedding"
        return [i for i, f in zip(ok, finite) if f], embs[finite], errors

    def embed_files(self, paths: Sequence[str], ids: Optional[Sequence[str]] = None,
                    boxes: Optional[Sequence[Optional[Sequence[float]]]] = None,
                    batch_size: int = 32, max_bytes: int = DEFAULT_MAX_BYTES,
                    progress: Optional[bool] = None, desc: str = "embedding") -> EmbedResult:
        """Embeds image files in batches.

        Args:
          paths: image files. ids: their ids (default: the paths).
          boxes: per file an optional (x1, y1, x2, y2) crop box (revisited queries).
          batch_size: images per model call.
          progress: report progress (``components.progress``: the CLI's console draws a bar);
            False: none. ``desc`` names the loop there.
        Returns:
          An :class:`EmbedResult`; unreadable or undecodable files are in ``failures``.
        """
        ids = list(paths) if ids is None else list(ids)
        if len(ids) != len(paths) or (boxes is not None and len(boxes) != len(paths)):
            raise ValueError("paths, ids and boxes must have the same length")
        out_pos, out_embs, failures = [], [], []
        reporter = ProgressReporter(len(paths), "images", desc) if progress is not False else None
        for start in range(0, len(paths), max(1, batch_size)):
            blobs, where = [], []
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    data = read_file(paths[i], max_bytes)
                    if boxes is not None and boxes[i] is not None:
                        data = crop_to_png(data, boxes[i])
                except Exception as err:  # OSError, Pillow's many types, empty boxes
                    failures.append((i, Failure(ids[i], paths[i], error_reason(err))))
                    continue
                blobs.append(data)
                where.append(i)
            ok, embs, errors = self.embed_blobs(blobs)
            out_pos.extend(where[j] for j in ok)
            if len(ok):  # an all-failed batch may have an unknown-width empty array
                out_embs.append(embs)
            failures.extend((where[j], Failure(ids[where[j]], paths[where[j]], r))
                            for j, r in errors.items())
            if reporter is not None:
                reporter.update(min(start + batch_size, len(paths)))
        embs = np.concatenate(out_embs) if out_embs else np.zeros((0, self.dim or 0), np.float32)
        failures.sort(key=lambda pair: pair[0])  # input order, whatever step failed
        return EmbedResult(ids=[ids[i] for i in out_pos], embeddings=embs,
                           positions=np.asarray(out_pos, dtype=np.int64),
                           failures=[f for _, f in failures],
                           paths=[paths[i] for i in out_pos])

