"""ringnet_tf.train_head: the regressor trained on features computed once."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TRAIN_IDENTITIES, make_tiny_checkpoint, make_tiny_dataset

CONFIG = {"image_size": 40, "backbone": "tiny", "num_shape": 10, "num_expression": 5}


def test_ring_indices_are_rings():
    from ringnet_tf.train_head import ring_indices

    identity = np.asarray([f"p{i % 5}" for i in range(23)])
    idx = ring_indices(identity, 200, 4, np.random.default_rng(0))
    assert idx.shape == (200, 4)
    for ring in idx:
        assert len(set(identity[ring[:3]])) == 1  # R - 1 of one person ...
        assert len(set(ring[:3])) == 3  # ... distinct images
        assert identity[ring[3]] != identity[ring[0]]  # ... and one of another
    with pytest.raises(ValueError, match="two people"):
        ring_indices(np.asarray(["a"] * 6), 1, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="3 images"):
        ring_indices(np.asarray(["a", "a", "b", "b"]), 1, 4, np.random.default_rng(0))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from ringnet_tf.model import ModelConfig

    root = tmp_path_factory.mktemp("head")
    make_tiny_checkpoint(root, ModelConfig(**CONFIG))
    make_tiny_dataset(root / "data", TRAIN_IDENTITIES, size=40)
    make_tiny_dataset(root / "val", TRAIN_IDENTITIES[:8], size=40, seed=1)
    return root


def test_head_model_is_the_network_after_its_backbone(root):
    from ringnet_tf.inference import load_predictor
    from ringnet_tf.model import ModelConfig, head_model

    net = load_predictor(root / "ckpt", str(root / "flame")).net
    x = np.random.default_rng(0).uniform(-1, 1, (3, 40, 40, 3)).astype(np.float32)
    full = net(x, training=False)
    head = head_model(net, ModelConfig(**CONFIG))
    part = head(net.get_layer("backbone")(x, training=False), training=False)
    assert set(part) == set(full)
    for k in full:
        np.testing.assert_allclose(np.asarray(part[k]), np.asarray(full[k]), rtol=1e-5, atol=1e-6)
    # Shared layers: the head's regressor is the network's.
    assert head.get_layer("regressor") is net.get_layer("regressor")


def _train(root, out, steps, **kw):
    from ringnet_tf.train_head import HeadConfig, train

    config = HeadConfig(init_from=str(root / "ckpt"), data=str(root / "data"), out=str(out),
                        val_data=str(root / "val"), num_steps=steps, rings_per_batch=4,
                        learning_rate=3e-3, lr_schedule="constant", log_every=steps, val_rings=8, **kw)
    return train(config, str(root / "flame"))


def test_trains_the_regressor_only(root, tmp_path):
    from ringnet_tf.inference import load_predictor, stored_weights

    start = _train(root, tmp_path / "one", 1, cache=str(tmp_path / "cache"))
    end = _train(root, tmp_path / "many", 80, cache=str(tmp_path / "cache"), dropout=0.1)
    assert end["val_landmarks"] < 0.8 * start["val_landmarks"]  # it learnt the landmarks

    before = load_predictor(root / "ckpt", str(root / "flame")).net
    after = load_predictor(tmp_path / "many", str(root / "flame")).net
    backbone = {id(w) for w in before.get_layer("backbone").weights}
    changed = []
    for a, b in zip(stored_weights(before), stored_weights(after), strict=True):
        same = np.array_equal(np.asarray(a.numpy(), np.float32), np.asarray(b.numpy(), np.float32))
        if id(a) in backbone:
            assert same, f"backbone weight {a.path} changed"
        else:
            changed.append(not same)
    assert any(changed)
    assert (tmp_path / "many" / "tensorboard").is_dir()
    import json

    saved = json.loads((tmp_path / "many" / "config.json").read_text())
    assert saved["model"]["dropout"] == 0.1 and saved["training"]["init_from"] == str(root / "ckpt")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith("features-"))
    assert len(list((tmp_path / "cache").iterdir())) == 2  # train and val, reused by the second run


def test_feature_key_follows_the_data(root, tmp_path):
    import shutil

    from ringnet_tf.train_head import dataset_key

    weights = [np.ones(3, np.float32)]
    shutil.copytree(root / "data", tmp_path / "data")
    k1 = dataset_key(weights, tmp_path / "data", 40)
    assert dataset_key(weights, tmp_path / "data", 40) == k1
    assert dataset_key([np.zeros(3, np.float32)], tmp_path / "data", 40) != k1
    assert dataset_key(weights, tmp_path / "data", 64) != k1
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text(manifest.read_text().replace(",1.000", ",0.500", 1))
    assert dataset_key(weights, tmp_path / "data", 40) != k1


def test_bad_input_is_one_line_and_writes_nothing(root, tmp_path, capsys):
    from ringnet_tf.train_head import main

    def run(*args):
        code = main([*common, *args])
        return code, capsys.readouterr().err

    make_tiny_dataset(tmp_path / "alone", ["a"] * 4, size=40)
    common = ["--init_from", str(root / "ckpt"), "--flame_model", str(root / "flame"), "--num_steps", "2"]
    code, err = run("--data", str(tmp_path / "alone"), "--out", str(tmp_path / "out"))
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: ") and "two people" in err
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    code, err = run("--data", str(root / "data"), "--out", str(tmp_path / "taken"))
    assert code == 2 and "taken" in err
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    code, err = run("--data", str(root / "data"), "--out", str(tmp_path / "o2"), "--learning_rate", "0")
    assert code == 2 and "learning_rate" in err
    code, err = run("--flagfile", str(tmp_path / "missing.flags"), "--data", str(root / "data"), "--out", str(tmp_path / "o3"))
    assert code == 2 and "missing.flags" in err and not (tmp_path / "o3").exists()


def test_flagfiles_nest_and_later_flags_win(tmp_path):
    from ringnet_tf.train_head import expand_flagfiles

    (tmp_path / "base.flags").write_text("# a comment\n--num_steps=10\n\n--seed=1\n")
    (tmp_path / "top.flags").write_text(f"--flagfile={tmp_path / 'base.flags'}\n--seed=2\n")
    assert expand_flagfiles(["--flagfile", str(tmp_path / "top.flags"), "--seed=3"]) == [
        "--num_steps=10", "--seed=1", "--seed=2", "--seed=3"]


def test_standardised_first_layer_is_the_same_function():
    from ringnet_tf.model import IterativeRegressor, ModelConfig
    from ringnet_tf.train_head import feature_statistics, rescale_first_layer

    rng = np.random.default_rng(0)
    feats = (0.3 + 0.05 * rng.standard_normal((64, 32)) * rng.uniform(0.2, 2, 32)).astype(np.float32)
    reg = IterativeRegressor(ModelConfig(num_shape=4, num_expression=3).mean_params(), 3, 16, 0.0)
    reg.build((None, 32))
    # A last layer far from its near-zero initialisation, so the output depends on the features.
    reg.fc_out.kernel.assign(rng.standard_normal(reg.fc_out.kernel.shape).astype(np.float32))
    before = np.asarray(reg(feats))
    mean, std = feature_statistics(feats)
    rescale_first_layer(reg, mean, std, to_standardised=True)
    z = (feats - mean) / std
    np.testing.assert_allclose(np.asarray(reg(z)), before, rtol=1e-4, atol=1e-5)
    # On raw features the standardised layer computes something else (the test can fail).
    assert not np.allclose(np.asarray(reg(feats)), before, rtol=1e-3, atol=1e-4)
    rescale_first_layer(reg, mean, std, to_standardised=False)
    np.testing.assert_allclose(np.asarray(reg(feats)), before, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, feats.std(0), rtol=1e-5)


def test_coefficient_loss_analytic():
    import tensorflow as tf

    from ringnet_tf.losses import coefficient_loss

    pred = tf.constant([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    target = tf.constant([[1.0, 0.0], [3.0, 4.0]])  # fewer labels than predictions: the first 2 count
    # image 0: (0 + 4) / 2 = 2; image 1: (9 + 16) / 2 = 12.5, weighted 0.5
    value = coefficient_loss(pred, target, tf.constant([1.0, 0.5]))
    np.testing.assert_allclose(float(value), (2.0 + 0.5 * 12.5) / 2, rtol=1e-6)
