"""Margin heads: logits checked against numpy written from the formulas."""
import math

import numpy as np
import pytest
import tensorflow as tf

from dolg_model import heads
from dolg_model.config import DOLGConfig


def _cosines(head, emb):
    w = head.centres.numpy()
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return e @ (w / np.linalg.norm(w, axis=0, keepdims=True))


def test_arcface_true_class_logit_is_s_cos_theta_plus_m():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 16)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0])
    head = heads.ArcMarginHead(num_classes=5, scale=30.0, margin=0.3)
    logits = head([emb, labels]).numpy()
    cos = _cosines(head, emb)
    for i, y in enumerate(labels):
        theta = math.acos(cos[i, y])
        if theta + 0.3 < math.pi:
            assert logits[i, y] == pytest.approx(30.0 * math.cos(theta + 0.3), abs=1e-4)
        others = np.delete(np.arange(5), y)
        np.testing.assert_allclose(logits[i, others], 30.0 * cos[i, others], atol=1e-4)


def test_easy_margin_leaves_obtuse_angles_alone():
    head = heads.ArcMarginHead(num_classes=2, scale=10.0, margin=0.5, easy_margin=True)
    emb = np.array([[1.0, 0.0]], np.float32)
    head.build([(None, 2), (None,)])
    head.centres.assign(np.array([[-1.0, 1.0], [0.2, 0.0]], np.float32))  # class 0 at > 90 degrees
    logits = head([emb, np.array([0])]).numpy()
    cos0 = _cosines(head, emb)[0, 0]
    assert cos0 < 0 and logits[0, 0] == pytest.approx(10.0 * cos0, abs=1e-4)


def test_subcenter_arcface_takes_the_max_over_subcentres():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(4, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 1])
    head = heads.ArcMarginHead(num_classes=3, scale=1.0, margin=0.0, subcenters=3)
    logits = head([emb, labels]).numpy()
    cos = _cosines(head, emb).reshape(4, 3, 3).max(axis=-1)
    np.testing.assert_allclose(logits, cos, atol=1e-5)
    # And it is not the mean (the test would not notice a wrong reduction otherwise).
    assert np.abs(_cosines(head, emb).reshape(4, 3, 3).mean(-1) - logits).max() > 1e-3


def test_dynamic_margins_match_the_formula():
    counts = np.array([1, 5, 20, 100, 7], np.float64)
    tmp = counts ** -0.25
    expected = (tmp - tmp.min()) / (tmp.max() - tmp.min()) * 0.45 + 0.05
    got = heads.dynamic_margins(counts)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[0] == pytest.approx(0.50) and got[3] == pytest.approx(0.05)  # rarest gets the most
    np.testing.assert_allclose(heads.dynamic_margins([3, 3, 3]), [0.05] * 3)
    with pytest.raises(ValueError, match="positive"):
        heads.dynamic_margins([3, 0])


def test_per_class_margins_are_applied_by_label():
    emb = np.random.default_rng(2).normal(size=(2, 8)).astype(np.float32)
    margins = [0.1, 0.4]
    head = heads.ArcMarginHead(num_classes=2, scale=1.0, class_margins=margins)
    logits = head([emb, np.array([0, 1])]).numpy()
    cos = _cosines(head, emb)
    for i, y in enumerate([0, 1]):
        theta = math.acos(cos[i, y])
        assert logits[i, y] == pytest.approx(math.cos(theta + margins[y]), abs=1e-5)


def test_curricularface_true_class_and_hard_negatives():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=8)
    head = heads.CurricularFaceHead(num_classes=4, scale=2.0, margin=0.2)
    logits = head([emb, labels], training=True).numpy()
    cos = _cosines(head, emb)
    target = cos[np.arange(8), labels]
    th, mm = math.cos(math.pi - 0.2), math.sin(math.pi - 0.2) * 0.2
    target_m = np.where(target > th, np.cos(np.arccos(target) + 0.2), target - mm)
    t = 0.01 * target.mean()  # t starts at 0 and this step updated it
    assert head.t.numpy() == pytest.approx(t, abs=1e-6)
    expected = np.where(cos > target_m[:, None], cos * (t + cos), cos)
    expected[np.arange(8), labels] = target_m
    np.testing.assert_allclose(logits, 2.0 * expected, atol=1e-5)


def test_heads_compute_in_float32_under_mixed_precision():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        head = heads.build_head(DOLGConfig(head="subcenter_arcface", subcenters=3, scale=45.0,
                                           dynamic_margins=True), 3, class_counts=[1, 4, 9])
        logits = head([tf.cast(tf.random.normal((4, 8)), tf.float16), tf.constant([0, 1, 2, 0])])
        assert logits.dtype == tf.float32 and np.all(np.isfinite(logits.numpy()))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_margin_cross_entropy_with_label_smoothing():
    logits = np.array([[2.0, 0.0, -1.0]], np.float32)
    loss = heads.MarginCrossEntropy(3, label_smoothing=0.3)(np.array([0]), logits).numpy()
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    target = np.array([0.8, 0.1, 0.1])
    assert loss == pytest.approx(-(target * np.log(p)).sum(), rel=1e-5)


def test_build_head_needs_counts_for_dynamic_margins():
    with pytest.raises(ValueError, match="counts"):
        heads.build_head(DOLGConfig(head="arcface", dynamic_margins=True), 3)
