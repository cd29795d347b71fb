"""Training: losses go down, stop and resume continue exactly, bad configs fail before any work,
NaN stops with a message, and 2 devices give the loss of 1."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ringnet_tf.data.rings import RingConfig
from ringnet_tf.model import ModelConfig
from ringnet_tf.train_lib import ConfigError, TrainConfig, run, validate
from ringnet_tf.trainer import LossConfig
from tests.conftest import TRAIN_IDENTITIES, make_tiny_dataset, make_tiny_model, make_training_root

IDS = TRAIN_IDENTITIES


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    make_training_root(root)
    return root


def _config(setup, out, **kw) -> TrainConfig:
    base = TrainConfig(
        data=str(setup / "data"), val_data=str(setup / "val"), out=str(setup / out),
        flame_model=str(setup / "flame"),
        model=ModelConfig(image_size=32, backbone="tiny", num_shape=10, num_expression=5, dropout=0.0),
        rings=RingConfig(ring_size=4, rings_per_batch=2, image_size=32, seed=1),
        learning_rate=3e-3, num_steps=6, checkpoint_every=2, log_every=2, val_steps=1,
        jit_compile=False, export_saved_model=False)
    return dataclasses.replace(base, **kw)


def _logged(log: str) -> dict[int, dict[str, float]]:
    """The progress lines of a run's log: step -> {loss name: value}."""
    lines = {}
    for line in log.splitlines():
        if line.startswith("step"):
            tokens = line.split()[2:-2]  # "step n/N", then name value pairs, then "rate img/s"
            lines[int(line.split()[1].split("/")[0])] = {k: float(v) for k, v in zip(tokens[::2], tokens[1::2])}
    return lines


def test_short_training_lowers_landmark_and_shape_consistency_losses(setup):
    # (The SavedModel export at the end of a run: test_train_robust's train.py run checks it.
    # Validation, which changes no weight, is the `straight` run's: this one trains without.)
    log = io.StringIO()
    result = run(_config(setup, "lower", num_steps=120, checkpoint_every=60, log_every=20, val_data=None),
                 stream=log)
    lines = [l for l in log.getvalue().splitlines() if l.startswith("step")]
    assert lines and "img/s" in lines[-1]
    first = _logged(log.getvalue())[20]
    assert result["metrics"]["landmarks"] < 0.7 * first["landmarks"]
    assert result["metrics"]["shape_consistency"] < 0.7 * first["shape_consistency"]
    out = Path(result["out"])
    assert (out / "ringnet.keras").is_file()
    assert json.loads((out / "config.json").read_text())["flame_fingerprint"] == make_tiny_model().fingerprint()
    assert list((out / "tensorboard").iterdir())


@pytest.fixture(scope="module")
def straight(setup):
    """One uninterrupted 6-step run (checkpoints at 2, 4, 6), shared by the tests that need a
    trained run: its result and its log."""
    log = io.StringIO()
    return run(_config(setup, "straight"), stream=log), log.getvalue()


def _load(out):
    import keras
    return keras.models.load_model(Path(out) / "ringnet.keras")


def _weights(out) -> list[np.ndarray]:
    return [w.numpy() for w in _load(out).weights]


def _backbone_weights_of(net) -> dict[str, list[np.ndarray]]:
    """A network's backbone weights by layer name (the tiny backbone's conv1..3 _conv and _bn)."""
    backbone = net.get_layer("backbone")
    return {layer.name: [w.numpy() for w in layer.weights] for layer in backbone.layers if layer.weights}


@pytest.fixture(scope="module")
def straight_weights(straight):
    """The `straight` run's final network (its ringnet.keras, loaded once): all its weights, and
    its backbone's by layer name."""
    net = _load(straight[0]["out"])
    return [w.numpy() for w in net.weights], _backbone_weights_of(net)


def test_stop_and_resume_continue_step_count_optimizer_and_data(setup, straight, straight_weights):
    straight, _ = straight
    run(_config(setup, "resumed", num_steps=4), stream=io.StringIO())  # stopped at step 4
    log = io.StringIO()
    resumed = run(_config(setup, "resumed", num_steps=6), stream=log)
    assert "resuming" in log.getvalue() and "step 4" in log.getvalue()
    assert resumed["step"] == straight["step"] == 6
    # Run again when already trained that far: no step more, the final model written again.
    log = io.StringIO()
    again = run(_config(setup, "resumed", num_steps=6), stream=log)
    assert again["step"] == 6 and "already trained 6 steps" in log.getvalue()
    resumed_weights = _weights(resumed["out"])
    assert len(resumed_weights) == len(straight_weights[0])
    for a, b in zip(straight_weights[0], resumed_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_warm_start_copies_a_trained_network_and_refuses_another_architecture(setup, straight,
                                                                              straight_weights):
    from flame.io import load_flame
    from ringnet_tf.inference import save_compact
    from ringnet_tf.model import build_ringnet
    from ringnet_tf.train_lib import warm_start

    source, _ = straight  # a trained run (read only)
    trained = straight_weights[0]
    cfg = _config(setup, "warm_target", val_data=None)  # (validation: the straight run's)
    net = build_ringnet(load_flame(cfg.flame_model), dataclasses.replace(cfg.model))
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(trained, net.weights))  # a new start differs
    warm_start(net, source["out"], cfg.model, cfg.flame_model)
    for a, b in zip(trained, net.weights):
        np.testing.assert_array_equal(a, b.numpy())
    # A compact (float16) checkpoint starts a run too; the run then trains from there.
    compact = save_compact(net, dataclasses.asdict(cfg.model), make_tiny_model().fingerprint(),
                           setup / "warm_compact")
    log = io.StringIO()
    result = run(dataclasses.replace(cfg, init_from=str(compact), num_steps=2), stream=log)
    assert "weights initialised from" in log.getvalue() and result["step"] == 2
    with pytest.raises(ConfigError, match="differs in num_shape"):
        other = dataclasses.replace(cfg.model, num_shape=8)
        warm_start(build_ringnet(load_flame(cfg.flame_model), other), source["out"], other, cfg.flame_model)
    with pytest.raises(ConfigError, match="does not exist"):
        validate(dataclasses.replace(cfg, init_from=str(setup / "nowhere")))


def _backbone_weights(out) -> dict[str, list[np.ndarray]]:
    """A run's backbone weights by layer name."""
    return _backbone_weights_of(_load(out))


def _moved(before: dict, after: dict) -> dict[str, bool]:
    return {name: any(not np.array_equal(a, b) for a, b in zip(weights, after[name]))
            for name, weights in before.items()}


def test_frozen_batchnorm_keeps_its_statistics_while_the_rest_trains(setup, straight, straight_weights):
    # (That BatchNorm's weights move when not frozen: the next test's conv3_bn. Validation, which
    # changes no weight, is the straight run's: the fine-tuning runs train without.)
    source, _ = straight
    before = straight_weights[1]
    bn = [name for name in before if name.endswith("_bn")]
    assert len(bn) == 3 and all(len(before[name]) == 4 for name in bn)  # scale, offset, mean, variance
    cfg = _config(setup, "bn_frozen", init_from=source["out"], num_steps=2, freeze_batchnorm=True,
                  val_data=None)
    moved = _moved(before, _backbone_weights(run(cfg, stream=io.StringIO())["out"]))
    assert moved == {name: not name.endswith("_bn") for name in before}  # the convolutions train


def test_train_backbone_from_keeps_the_earlier_layers_fixed(setup, straight, straight_weights):
    source, _ = straight
    before = straight_weights[1]
    cfg = _config(setup, "from_conv3", init_from=source["out"], num_steps=2, train_backbone_from="conv3",
                  val_data=None)
    moved = _moved(before, _backbone_weights(run(cfg, stream=io.StringIO())["out"]))
    # conv1, conv2 fixed; conv3's convolution and BatchNorm train
    assert moved == {name: name.startswith("conv3") for name in before}
    with pytest.raises(ConfigError, match="no backbone layer's name starts with it"):
        run(dataclasses.replace(cfg, out=str(setup / "from_nowhere"), train_backbone_from="block9"),
            stream=io.StringIO())
    assert not (setup / "from_nowhere").exists()


def test_bad_configurations_fail_before_any_work(setup, tmp_path):
    with pytest.raises(ValueError, match="ring_size must be at least 3"):
        RingConfig(ring_size=2)
    make_tiny_dataset(tmp_path / "one", ["solo"] * 5, size=40)
    with pytest.raises(ConfigError, match="1 identity"):
        validate(_config(setup, "x", data=str(tmp_path / "one")))
    out = tmp_path / "other_run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**_config(setup, "x").to_json(), "learning_rate": 1.0}))
    with pytest.raises(ConfigError, match="another run's checkpoints.*learning_rate"):
        validate(dataclasses.replace(_config(setup, "x"), out=str(out)))
    assert not (setup / "x").exists()


def test_training_reads_the_tfrecord_form_and_restores_the_precision_policy(setup):
    import keras

    from ringnet_tf.data.dataset import write_tfrecords
    from ringnet_tf.data.rings import dataset_form
    tfr = write_tfrecords(setup / "data", setup / "data_tfr", num_shards=2)
    assert (dataset_form(setup / "data"), dataset_form(tfr)) == ("manifest", "tfrecords")
    assert dataset_form(setup / "nowhere") == "manifest"  # whose reader names what is missing
    result = run(_config(setup, "tfr", data=str(tfr), num_steps=2, mixed_precision="bfloat16"),
                 stream=io.StringIO())
    assert result["step"] == 2 and np.isfinite(result["metrics"]["loss"])
    assert keras.mixed_precision.global_policy().name == "float32"  # the caller's, not mixed_bfloat16


def test_nan_loss_stops_with_a_clear_message(setup):
    cfg = _config(setup, "nan", loss=LossConfig(landmarks=float("nan")), val_data=None)
    with pytest.raises(FloatingPointError, match="loss became nan at step 1"):
        run(cfg, stream=io.StringIO())


def test_xla_train_step_matches_eager(setup, straight):
    eager, eager_log = straight  # the same configuration without XLA
    log = io.StringIO()
    xla = run(_config(setup, "jit1", jit_compile=True), stream=log)
    assert xla["step"] == eager["step"] == 6
    logged, eager_logged = _logged(log.getvalue()), _logged(eager_log)
    assert sorted(logged) == sorted(eager_logged) == [2, 4, 6]
    for step, losses in eager_logged.items():  # every interval's, not only the last
        assert logged[step]["loss"] == pytest.approx(losses["loss"], rel=1e-3), step
    assert xla["metrics"]["loss"] == pytest.approx(eager["metrics"]["loss"], rel=1e-3)
    assert xla["metrics"]["val_loss"] == pytest.approx(eager["metrics"]["val_loss"], rel=1e-3)


def test_two_logical_devices_give_the_same_loss(setup):
    script = Path(__file__).parent / "scripts" / "two_devices.py"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(setup)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == [1, 2]
    assert result["loss_2"] == pytest.approx(result["loss_1"], rel=1e-5)
    assert np.isfinite(result["train_loss_2"])


def test_an_unfinished_run_loads_from_its_newest_checkpoint(setup, straight, tmp_path):
    import shutil

    from ringnet_tf.inference import load_predictor

    done = Path(straight[0]["out"])  # (read only: copied)
    stopped = tmp_path / "stopped"
    shutil.copytree(done, stopped)
    (stopped / "ringnet.keras").unlink()  # as if killed after its last checkpoint (step 6)
    crops = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    a = load_predictor(done, str(setup / "flame")).predict(crops)["params"]
    b = load_predictor(stopped, str(setup / "flame")).predict(crops)["params"]
    np.testing.assert_allclose(a, b, atol=1e-6)
    shutil.rmtree(stopped / "checkpoints")
    (stopped / "checkpoints").mkdir()
    from ringnet_tf.inference import CheckpointError
    with pytest.raises(CheckpointError, match="no readable training checkpoint"):
        load_predictor(stopped, str(setup / "flame"))


def test_every_config_field_has_a_flag_whose_default_is_the_dataclass_default():
    import train

    covered = [path for paths, _, _ in train.FLAG_FIELDS.values() for path in paths]
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in train._SECTIONS]
    fields += [f"{k}.{f.name}" for k, cls in train._SECTIONS.items() for f in dataclasses.fields(cls)]
    assert sorted(covered) == sorted(fields)  # each field set by exactly one flag
    train.F.unparse_flags()
    train.F(["train.py", "--data", "d", "--out", "o"])
    assert train.config_from_flags() == TrainConfig(data="d", out="o")
    train.F.unparse_flags()
    train.F(["train.py", "--data", "d", "--out", "o", "--image_size", "64", "--data_seed", "7",
             "--w_landmarks", "3", "--jit_compile", "true", "--noaugment", "--max_rotation_deg", "5"])
    cfg = train.config_from_flags()
    assert (cfg.model.image_size, cfg.rings.image_size, cfg.rings.seed, cfg.loss.landmarks) == (64, 64, 7, 3.0)
    assert (cfg.jit_compile, cfg.rings.augment, cfg.rings.max_rotation_deg) == (True, False, 5.0)
    train.F.unparse_flags()
