"""Training: a multi-replica step equals a single-device step; a short run improves retrieval."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO

from components.retrieval.protocols import leave_one_out_retrieval
from dolg_model import model as dolg_lib
from dolg_model import training
from dolg_model.config import DOLGConfig
from pipeline.demo_data import generate_landmarks

SMALL = dict(backbone="mobilenetv3small", image_size=64, embedding_dim=32, local_dim=48)


def test_mirrored_step_over_two_logical_cpus_matches_single_device():
    """Two replicas, each with its own images and labels (frozen BatchNorm), against one
    device on the whole batch: the same loss and the same updated weights.

    In a fresh process with oneDNN's CPU kernels off: once, under heavy load, the first
    convolution's weights after a mirrored step differed by 0.03 from the single-device step
    while the loss agreed, which points at oneDNN kernels run concurrently for two logical
    devices of one CPU (not a configuration anyone trains on: the multi-replica path is for
    GPUs). TensorFlow's own kernels make the comparison exact up to summation order. (How run_fn's
    own dataset is split over the replicas: tests/pipeline/test_dataset.py.)"""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0")
    run = subprocess.run([sys.executable, str(REPO / "tests" / "fixtures" / "mirrored_step.py")],
                         env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["replicas"] == 2
    assert result["loss_mirrored"] == pytest.approx(result["loss_single"], rel=1e-4)
    assert len(set(result["n_weights"])) == 1
    assert result["worst_excess_over_tolerance"] <= 0.0, result  # |wm - ws| <= 1e-4 + 1e-3 |ws|
    assert result["moved"] > result["n_weights"][0] // 2  # the step really updated the network


def test_choose_strategy_uses_given_devices():
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert training.choose_strategy(cpus[:2]).num_replicas_in_sync == 2
    assert training.choose_strategy().num_replicas_in_sync == 1  # no GPU here


def test_warmup_cosine_schedule():
    s = training.WarmupCosine(0.1, total_steps=100, warmup_steps=10)
    assert float(s(0)) == pytest.approx(0.01)
    assert float(s(9)) == pytest.approx(0.1)
    assert float(s(55)) == pytest.approx(0.05, abs=1e-6)
    assert float(s(100)) == pytest.approx(0.0, abs=1e-7)
    assert training.WarmupCosine(**s.get_config()).get_config() == s.get_config()


def _load(paths):
    from PIL import Image
    return np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths])


def test_short_training_improves_held_out_retrieval(tmp_path):
    info = generate_landmarks(tmp_path, n_landmarks=10, views_per_landmark=8, size=64, seed=5)
    paths, labels = info["paths"], info["path_labels"]
    names = sorted(set(labels))
    y = np.array([names.index(l) for l in labels], np.int32)
    x = _load(paths)
    view = np.array([int(str(p).rsplit("_", 1)[1].split(".")[0]) for p in paths])
    train, held = view < 5, view >= 5  # held-out views of every landmark

    tf.keras.utils.set_random_seed(0)
    config = DOLGConfig(**SMALL, head="arcface", scale=16.0, margin=0.1, bn_momentum=0.9)
    dolg = dolg_lib.build_dolg(config)
    assert dolg.get_layer("local_attention").bn.momentum == 0.9

    def held_out_map():
        e = dolg.predict(x[held], batch_size=32, verbose=0)
        return leave_one_out_retrieval(e, y[held]).mAP

    before = held_out_map()
    steps = 100
    opt = training.make_optimizer("sgd", 0.05, total_steps=steps, warmup_steps=10, weight_decay=1e-4)
    trainer = training.compile_training_model(dolg, config, len(names), opt)
    aug = tf.keras.Sequential([tf.keras.layers.RandomFlip("horizontal"),
                               tf.keras.layers.RandomTranslation(0.1, 0.1)])
    data = (tf.data.Dataset.from_tensor_slices((x[train], y[train])).shuffle(64, seed=0).repeat()
            .batch(16).map(lambda i, l: ({"image": aug(i, training=True), "label": l}, l)))
    history = trainer.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    after = held_out_map()
    assert np.isfinite(history.history["loss"][0])
    assert after > before + 0.08, (before, after)  # measured: 0.357 -> 0.525


def test_stop_at_step_ends_training_at_exactly_that_many_steps():
    """7 steps in epochs of 3: Keras alone would train 9 (three whole epochs)."""
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01), loss="mse")
    data = tf.data.Dataset.from_tensors((tf.ones([4, 2]), tf.zeros([4, 1]))).repeat()
    model.fit(data, epochs=3, steps_per_epoch=3, verbose=0, callbacks=[training.StopAtStep(7)])
    assert int(model.optimizer.iterations.numpy()) == 7
    with pytest.raises(ValueError, match="steps"):
        training.StopAtStep(0)
