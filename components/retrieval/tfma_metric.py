"""Leave-one-out retrieval metrics as a custom TFMA metric, for the TFX Evaluator.

``RetrievalMetrics`` collects, for every evaluated example, the model's embedding (prediction
output ``embedding``) and the example's raw label, and scores the whole set once in the
combiner's ``extract_output`` with the project's single implementation,
:func:`components.retrieval.protocols.leave_one_out_retrieval` (every example queries all the
others; relevant = same label string). Nothing of the protocol is re-implemented here.

Why the label comes from the raw features and not from ``ModelSpec.label_key``: the eval split
holds landmarks never seen in training, so the label cannot go through the trained vocabulary,
and it is a string. The metric asks TFMA for the raw feature with a ``FeaturePreprocessor``
(``features[label_feature]``, bytes), so it works whether or not ``label_key`` is set and never
depends on how TFMA treats non-numeric labels.

Output metric keys (one MetricComputation, all computed together), with the defaults::

    retrieval_mAP          full-ranking mAP
    retrieval_mAP@100      GLDv2-style mAP@map_at (the name follows ``map_at``)
    recall@1, recall@5, recall@10
    retrieval_num_queries  examples seen in the slice
    retrieval_num_evaluated  queries with at least one other same-label example

With the option ``qe`` = K > 0 (off by default) the same scores are also computed with
α-weighted query expansion (``expansion.expand_queries``: each example's query becomes the
normalised sum of itself and its top K OTHER examples, weighted by similarity ** ``qe_alpha``),
under the same keys with the suffix ``_qe`` (``retrieval_mAP_qe``, ``recall@1_qe``, ...), beside
the plain ones. A threshold stays on the plain ``retrieval_mAP`` unless the config's ``name``
picks a ``_qe`` key (``eval_config(bless_on_qe=True)``).

Thresholds: TFMA matches a ``MetricConfig.threshold`` to the key named like the metric
instance, so the instance's ``name`` (config ``{"name": ...}``, default ``retrieval_mAP``)
selects which output a threshold applies to. To threshold another output, add a second
MetricConfig with the same options and another ``name``: its computation has the same keys,
combiner and preprocessor, so TFMA de-duplicates it and the scores are computed only once.
(``MetricsSpec.thresholds`` is for in-graph metrics: its keys carry example_weighted=None and
never match a TFMA metric's keys, which the validator reports as "Metric not found".)

Memory: the accumulator holds every embedding of a slice, O(N * D) floats (float32: 4 N D
bytes, e.g. 100 MB for N = 50,000, D = 512), plus the labels. ``extract_output`` briefly holds
two copies (concatenating the chunks, then the canonical row order), so plan for 2 x 4 N D
bytes; scoring then needs only the protocol's block-bounded O(block_size * N) score buffer
(the N x N matrix is never formed). Time is dominated by the O(N^2 D) scoring; the canonical
ordering took 2.6 s for N = 50,000, D = 512 on this machine.
Rows are compacted into one array every ``_COMPACT_ROWS`` inputs and merged accumulators are
lists of arrays, concatenated once in ``extract_output``, so merging is O(#chunks), not O(N).
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional, Sequence

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.proto import config_pb2

from components.retrieval.expansion import DEFAULT_ALPHA, check_settings, expand_queries
from components.retrieval.index import exact_search
from components.retrieval.protocols import leave_one_out_retrieval
from components.retrieval.serving_contract import EMBEDDING_OUTPUT, EXAMPLES_SIGNATURE

METRIC_CLASS_NAME = "RetrievalMetrics"
METRIC_MODULE = __name__  # "components.retrieval.tfma_metric": importable by the Evaluator
MAP_NAME = "retrieval_mAP"
NUM_QUERIES_NAME = "retrieval_num_queries"
NUM_EVALUATED_NAME = "retrieval_num_evaluated"
DEFAULT_KS = (1, 5, 10)
DEFAULT_MAP_AT = 100
QE_SUFFIX = "_qe"

# Single-example rows are stacked into one array after this many inputs: a Python list of
# tiny arrays costs ~100 bytes of object overhead per row and pickles slowly between workers.
_COMPACT_ROWS = 512


def map_at_name(map_at: int = DEFAULT_MAP_AT) -> str:
    """Key of the truncated mAP output, e.g. ``retrieval_mAP@100``."""
    return f"{MAP_NAME}@{int(map_at)}"


def recall_name(k: int) -> str:
    """Key of the recall@k output, e.g. ``recall@1``."""
    return f"recall@{int(k)}"


def _scored_names(ks: Sequence[int], map_at: int) -> List[str]:
    return [MAP_NAME, map_at_name(map_at)] + [recall_name(k) for k in ks]


def metric_names(ks: Sequence[int] = DEFAULT_KS, map_at: int = DEFAULT_MAP_AT, qe: int = 0) -> List[str]:
    """All metric key names one RetrievalMetrics computation produces (``_qe`` ones if qe > 0)."""
    return (_scored_names(ks, map_at) + [NUM_QUERIES_NAME, NUM_EVALUATED_NAME]
            + ([n + QE_SUFFIX for n in _scored_names(ks, map_at)] if qe else []))


class RetrievalMetrics(metric_types.Metric):
    """Leave-one-out retrieval mAP, mAP@k and recall@k over all examples of a slice.

    Config (the JSON ``MetricConfig.config``; all optional):
      name: which output key a threshold on this MetricConfig applies to (default
        ``retrieval_mAP``); must be one of :func:`metric_names`.
      embedding_key: prediction output holding the [D] embedding (default ``embedding``).
      label_feature: raw feature holding the label, compared as bytes (default ``label``).
      ks: recall cut-offs (default [1, 5, 10]); map_at: mAP@k cut-off (default 100).
      block_size: query rows scored at once by the protocol (memory O(block_size * N)).
      qe: K of the α-weighted query expansion also reported (``_qe`` keys); 0 (default): off.
      qe_alpha: its weight exponent (default 3).
    """

    def __init__(self, name: str = MAP_NAME, embedding_key: str = EMBEDDING_OUTPUT,
                 label_feature: str = "label", ks: Sequence[int] = DEFAULT_KS,
                 map_at: int = DEFAULT_MAP_AT, block_size: int = 1024, qe: int = 0,
                 qe_alpha: float = DEFAULT_ALPHA):
        ks = [int(k) for k in ks]
        qe, qe_alpha = check_settings(qe, qe_alpha)
        names = metric_names(ks, map_at, qe)
        if name not in names:
            # A threshold keyed by an unknown name would fail every run with "Metric not found".
            raise ValueError(f"RetrievalMetrics name must be one of {names}, got {name!r}")
        super().__init__(_retrieval_computations, name=name, embedding_key=embedding_key,
                         label_feature=label_feature, ks=ks, map_at=int(map_at),
                         block_size=int(block_size), qe=qe, qe_alpha=qe_alpha)

    @property
    def compute_confidence_interval(self) -> bool:
        # Jackknife would rerun the O(N^2 D) scoring per resample, and leave-one-out scores
        # of a subsample are not comparable to the full set's (fewer distractors).
        return False


metric_types.register_metric(RetrievalMetrics)


def _retrieval_computations(name: str = MAP_NAME, embedding_key: str = EMBEDDING_OUTPUT,
                            label_feature: str = "label", ks: Sequence[int] = DEFAULT_KS,
                            map_at: int = DEFAULT_MAP_AT, block_size: int = 1024,
                            qe: int = 0, qe_alpha: float = DEFAULT_ALPHA,
                            model_names: Optional[List[str]] = None,
                            output_names: Optional[List[str]] = None,
                            example_weighted: bool = False,
                            ) -> metric_types.MetricComputations:
    """One computation per (model, output): candidate and baseline are scored separately.

    ``name`` only picks the thresholded key (see the module docstring); the computation's keys
    do not depend on it, so MetricConfigs differing only in name share one computation.
    ``example_weighted`` is accepted because TFMA passes it, but weights are ignored: every
    example is one query (the keys still carry the flag so thresholds match them).
    TFMA fills model_names, output_names and example_weighted in by parameter name.
    """
    del name
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            keys = {n: metric_types.MetricKey(name=n, model_name=model_name,
                                              output_name=output_name,
                                              example_weighted=example_weighted)
                    for n in metric_names(ks, map_at, qe)}
            computations.append(metric_types.MetricComputation(
                keys=list(keys.values()),
                # Raw label bytes from the features, plus the default inputs (predictions).
                preprocessors=[metric_types.FeaturePreprocessor(feature_keys=[label_feature])],
                combiner=_RetrievalCombiner(keys, model_name, output_name, embedding_key,
                                            label_feature, ks, map_at, block_size, qe, qe_alpha)))
    return computations


class _Accumulator:
    """Embeddings and labels of one slice: completed chunks plus the rows since the last compact."""

    __slots__ = ("chunks", "label_chunks", "rows", "row_labels")

    def __init__(self):
        self.chunks: List[np.ndarray] = []        # [n_i, D] float32 blocks
        self.label_chunks: List[List[bytes]] = []
        self.rows: List[np.ndarray] = []          # pending [D] or [b, D] rows
        self.row_labels: List[bytes] = []

    def compact(self) -> "_Accumulator":
        if self.rows:
            self.chunks.append(np.concatenate([np.atleast_2d(r) for r in self.rows], axis=0))
            self.label_chunks.append(self.row_labels)
            self.rows, self.row_labels = [], []
        return self


def _as_bytes(value: Any) -> bytes:
    """One label value as bytes (TFMA gives bytes, numpy bytes_ or, rarely, str)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.generic):
        return _as_bytes(value.item())
    return str(value).encode("utf-8")


class _RetrievalCombiner(beam.CombineFn):
    """Collects (embedding, label) per example; scores the slice once in extract_output."""

    def __init__(self, keys: Dict[str, metric_types.MetricKey], model_name: str,
                 output_name: str, embedding_key: str, label_feature: str,
                 ks: Sequence[int], map_at: int, block_size: int, qe: int = 0,
                 qe_alpha: float = DEFAULT_ALPHA):
        self._keys = keys
        self._model_name = model_name
        self._output_name = output_name
        self._embedding_key = embedding_key
        self._label_feature = label_feature
        self._ks = tuple(int(k) for k in ks)
        self._map_at = int(map_at)
        self._block_size = int(block_size)
        self._qe, self._qe_alpha = int(qe), float(qe_alpha)

    # ------------------------------------------------------------------ inputs
    def _embedding(self, element: metric_types.StandardMetricInputs) -> np.ndarray:
        """The example's embedding as float32 [b, D] (b = 1 for unbatched extracts)."""
        preds = element.get_predictions(self._model_name or None, self._output_name or None)
        if isinstance(preds, dict):
            if self._embedding_key in preds:
                preds = preds[self._embedding_key]
            elif len(preds) == 1:  # a single-output model may be keyed by another name
                preds = next(iter(preds.values()))
            else:
                raise ValueError(f"prediction key {self._embedding_key!r} not found among "
                                 f"{sorted(preds)}; set embedding_key in the metric config")
        if preds is None:
            raise ValueError("no predictions in the extracts; does the ModelSpec point at the "
                             "embedding signature?")
        emb = np.asarray(preds, dtype=np.float32)
        return emb.reshape(1, -1) if emb.ndim <= 1 else emb.reshape(emb.shape[0], -1)

    def _labels(self, element: metric_types.StandardMetricInputs) -> List[bytes]:
        features = element.features or {}
        if self._label_feature not in features:
            raise ValueError(f"raw feature {self._label_feature!r} not in the extracts' features "
                             f"({sorted(features)}); set label_feature in the metric config")
        values = features[self._label_feature]
        if hasattr(values, "values") and not isinstance(values, np.ndarray):
            values = values.values  # a sparse/ragged feature value
        return [_as_bytes(v) for v in np.asarray(values, dtype=object).ravel()]

    # ------------------------------------------------------------------ CombineFn
    def create_accumulator(self) -> _Accumulator:
        return _Accumulator()

    def add_input(self, accumulator: _Accumulator,
                  element: metric_types.StandardMetricInputs) -> _Accumulator:
        emb, labels = self._embedding(element), self._labels(element)
        if len(labels) != emb.shape[0]:
            raise ValueError(f"{len(labels)} values of label feature {self._label_feature!r} "
                             f"for {emb.shape[0]} embeddings; each example needs one label")
        accumulator.rows.append(emb)
        accumulator.row_labels.extend(labels)
        if len(accumulator.rows) >= _COMPACT_ROWS:
            accumulator.compact()
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_Accumulator]) -> _Accumulator:
        # List concatenation only: no array is copied until extract_output.
        accumulators = iter(accumulators)
        result = next(accumulators).compact()
        for acc in accumulators:
            acc.compact()
            result.chunks.extend(acc.chunks)
            result.label_chunks.extend(acc.label_chunks)
        return result

    def compact(self, accumulator: _Accumulator) -> _Accumulator:
        # Beam calls this before shipping an accumulator between stages.
        return accumulator.compact()

    def extract_output(self, accumulator: _Accumulator) -> Dict[metric_types.MetricKey, Any]:
        accumulator.compact()
        labels = np.asarray([l for chunk in accumulator.label_chunks for l in chunk],
                            dtype=object)
        n = labels.size
        if n == 0:
            return {key: (0 if name in (NUM_QUERIES_NAME, NUM_EVALUATED_NAME) else float("nan"))
                    for name, key in self._keys.items()}
        embeddings = np.concatenate(accumulator.chunks, axis=0)
        accumulator.chunks = []  # drop the pieces early; embeddings is the only copy now
        embeddings, labels = _canonical_order(embeddings, labels)
        result = leave_one_out_retrieval(embeddings, labels, ks=self._ks, map_at=self._map_at,
                                         block_size=self._block_size)
        values = self._scores(result)
        values.update({NUM_QUERIES_NAME: result.n_queries, NUM_EVALUATED_NAME: result.n_evaluated})
        if self._qe:
            # Each example's expansion leaves its own row out, as its ranking does.
            db = np.ascontiguousarray(embeddings, dtype=np.float32)
            queries = expand_queries(db, lambda q, n: exact_search(q, db, n), lambda rows: db[rows],
                                     self._qe, self._qe_alpha, exclude=np.arange(n))
            expanded = leave_one_out_retrieval(embeddings, labels, ks=self._ks, map_at=self._map_at,
                                               block_size=self._block_size, queries=queries)
            values.update({name + QE_SUFFIX: v for name, v in self._scores(expanded).items()})
        return {key: values[name] for name, key in self._keys.items()}

    def _scores(self, result) -> Dict[str, float]:
        values = {MAP_NAME: result.mAP, map_at_name(self._map_at): result.mAP_at_k}
        values.update({recall_name(k): v for k, v in result.recall_at_k.items()})
        return values


def _canonical_order(embeddings: np.ndarray, labels: np.ndarray):
    """Rows sorted by (label, embedding values): the result no longer depends on Beam's order.

    Exact score ties no longer depend on the order (the protocol breaks them pessimistically),
    but the protocol scores blocks of rows, so the order in which Beam delivered examples
    could still change a score's last bits, and so the rank of two near-tied items. The
    lexsort costs O(D N log N), small next to the O(N^2 D) scoring.
    """
    _, label_codes = np.unique(labels, return_inverse=True)
    order = np.lexsort(tuple(embeddings.T[::-1]) + (label_codes.ravel(),))
    return np.ascontiguousarray(embeddings[order]), labels[order]


# ----------------------------------------------------------------------------------------------
# EvalConfig for the pipeline's Evaluator
# ----------------------------------------------------------------------------------------------
def eval_config(min_map: Optional[float] = None, max_map_drop: Optional[float] = None, *,
                signature_name: str = EXAMPLES_SIGNATURE, embedding_key: str = EMBEDDING_OUTPUT,
                label_feature: str = "label", ks: Sequence[int] = DEFAULT_KS,
                map_at: int = DEFAULT_MAP_AT, block_size: int = 1024,
                qe: int = 0, qe_alpha: float = DEFAULT_ALPHA, bless_on_qe: bool = False,
                ) -> config_pb2.EvalConfig:
    """EvalConfig: RetrievalMetrics on the tf.Example signature, gated on retrieval_mAP.

    Args:
      min_map: absolute lower bound on retrieval_mAP (GenericValueThreshold); None = no bound.
      max_map_drop: largest tolerated drop of retrieval_mAP against the baseline model
        (GenericChangeThreshold, HIGHER_IS_BETTER, absolute = -max_map_drop); None = no
        change threshold. The TFX Evaluator rubber-stamps: without a baseline (first run) it
        drops change thresholds, so passing it always is fine there. Standalone TFMA without a
        baseline refuses a config with change thresholds unless the model is rubber-stamped.
      signature_name: SavedModel signature taking serialized tf.Examples (input ``examples``)
        and returning ``{embedding_key: [None, D]}``.
      qe, qe_alpha: also report the α-query-expanded scores (``_qe`` keys); qe = 0: not.
      bless_on_qe: put both thresholds on ``retrieval_mAP_qe`` instead of ``retrieval_mAP``
        (needs qe > 0).
      Other arguments go to RetrievalMetrics.

    On a first run only ``min_map`` can bless: once the change threshold is dropped, a config
    without a value threshold has no thresholds left, and TFMA then reports
    ``missing_thresholds`` (not blessed). With neither set, the Evaluator never blesses.

    The ModelSpec has no name and no label_key: TFX names candidate and baseline itself, and
    the label reaches the metric as a raw feature (eval labels are unseen in training).
    Built on tensorflow_model_analysis.proto.config_pb2 because ``tfma.EvalConfig`` only exists
    once tfx has been imported.
    """
    options = {"embedding_key": embedding_key, "label_feature": label_feature,
               "ks": [int(k) for k in ks], "map_at": int(map_at), "block_size": int(block_size)}
    qe, qe_alpha = check_settings(qe, qe_alpha)
    if bless_on_qe and not qe:
        raise ValueError("bless_on_qe needs qe > 0: there is no expanded mAP to bless on")
    if qe:  # only then: the default config stays exactly what it was before the option
        options.update(qe=qe, qe_alpha=qe_alpha)
    metric = config_pb2.MetricConfig(
        class_name=METRIC_CLASS_NAME, module=METRIC_MODULE,
        config=json.dumps(dict(options, name=MAP_NAME + (QE_SUFFIX if bless_on_qe else "")), sort_keys=True))
    if min_map is not None:
        metric.threshold.value_threshold.lower_bound.value = float(min_map)
    if max_map_drop is not None:
        if max_map_drop < 0:
            raise ValueError(f"max_map_drop must be >= 0, got {max_map_drop}")
        change = metric.threshold.change_threshold
        change.direction = config_pb2.MetricDirection.HIGHER_IS_BETTER
        change.absolute.value = -float(max_map_drop)
    return config_pb2.EvalConfig(
        model_specs=[config_pb2.ModelSpec(signature_name=signature_name,
                                          preprocessing_function_names=[])],
        metrics_specs=[config_pb2.MetricsSpec(metrics=[metric])],
        slicing_specs=[config_pb2.SlicingSpec()])
