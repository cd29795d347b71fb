"""The synthetic benchmark: an oracle scores ~0 mm, the mean shape does not, the CLI runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from flame.model import save_flame_files
from ringnet_tf.data import dataset as D
from ringnet_tf.data.synthetic import SynthConfig, generate
from ringnet_tf.evaluate.__main__ import main
from ringnet_tf.evaluate.synthetic import (evaluate_synthetic, format_noise, measure_detector_noise, nme,
                                           person_groups, pose_error_deg, shape_diagnostics)
from ringnet_tf.inference import load_predictor, save_compact
from ringnet_tf.model import ModelConfig, build_ringnet
from tests.conftest import make_tiny_model

CONFIG = ModelConfig(image_size=32, backbone="tiny", num_shape=10, num_expression=5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("synbench")
    # 100 vertices: the random model's triangles span the head, so the scan-to-mesh search of
    # every scored image grows with the vertex count (300: 0.7 s an image, 100: 0.1 s).
    model = make_tiny_model(num_vertices=100)
    save_flame_files(model, root / "flame")
    generate(root / "data", SynthConfig(identities=2, images_per_identity=2, seed=11, size=48,
                                        num_shape=10, num_expression=5),
             str(root / "flame"), workers=1, progress=False)
    save_compact(build_ringnet(model, CONFIG), CONFIG.__dict__, model.fingerprint(), root / "ckpt")
    return root


@pytest.fixture(scope="module")
def inner(setup):
    """The checkpoint's predictor, one for the module: refinement's compiled loops are cached per
    head-model layer, so the benchmark calls below compile each batch bucket once."""
    return load_predictor(setup / "ckpt", str(setup / "flame"))


class Oracle:
    """Predicts the true shape of each image: the metric must then be ~0."""

    def __init__(self, inner, truth_shapes, truth_rotations=None):
        self.inner, self.truth, self.rotations = inner, truth_shapes, truth_rotations
        self.flame_layer, self.faces, self.image_size = inner.flame_layer, inner.faces, inner.image_size
        self.net, self.i = inner.net, 0

    def predict(self, crops):
        out = self.inner.predict(crops)
        out["shape"] = self.truth[self.i:self.i + len(crops)].astype(np.float32)
        if self.rotations is not None:  # params: cam (3), then the global rotation
            out["params"] = out["params"].copy()
            out["params"][:, 3:6] = self.rotations[self.i:self.i + len(crops)]
        self.i += len(crops)
        return out

    def neutral(self, shape):
        return self.inner.neutral(shape)


def test_oracle_scores_zero_and_mean_shape_does_not(setup, inner):
    gt = D.read_ground_truth(setup / "data")
    truth = gt["shape"]
    # Steps past the robust scale's annealing (refine.DEFAULT_ANNEAL_STEPS), as real runs take.
    # The rows asserted on here only (the shared-shape and noisy rows: test_shared_rows_and_noisy_rows).
    results = evaluate_synthetic(Oracle(inner, truth, gt["pose"][:, :3]), setup / "data", fit_steps=300,
                                 shared_sizes=(), noisy=False)
    assert results["network"]["images"] == 4
    assert results["network"]["mean_mm"] < 1e-3
    assert results["mean shape"]["mean_mm"] > 100 * results["network"]["mean_mm"]
    assert np.isfinite(results["landmark fitting"]["median_mm"])
    assert np.isfinite(results["network + refinement"]["median_mm"])
    # Refining the (untrained) network's landmarks against the exact ones brings them closer.
    assert results["network + refinement"]["nme"] < 0.9 * results["network"]["nme"]
    # Oracle shapes track the truth and are identical within a person.
    assert results["network"]["shape_correlation"] == pytest.approx(1.0, abs=1e-5)
    assert results["network"]["identity_spread"] == pytest.approx(0.0, abs=1e-9)
    # The oracle's head rotations are the truth; the mean shape row has none.
    assert results["network"]["pose_deg"] < 1e-4 and results["mean shape"]["pose_deg"] is None
    assert np.isfinite(results["landmark fitting"]["pose_deg"])


def test_pose_error_is_the_geodesic_angle():
    from scipy.spatial.transform import Rotation

    a = Rotation.from_rotvec(np.random.default_rng(1).normal(size=(5, 3)))
    b = a * Rotation.from_euler("z", [[10], [20], [30], [90], [170]], degrees=True)  # known relative turns
    np.testing.assert_allclose(pose_error_deg(a.as_rotvec(), b.as_rotvec()), [10, 20, 30, 90, 170], atol=1e-9)
    np.testing.assert_allclose(pose_error_deg(b.as_rotvec(), a.as_rotvec()), [10, 20, 30, 90, 170], atol=1e-9)


def test_shape_diagnostics_hand_computed():
    rng = np.random.default_rng(0)
    truth = np.repeat(rng.standard_normal((50, 12)), 4, axis=0)  # 50 people x 4 images
    ids = [f"p{i // 4}" for i in range(200)]
    exact = shape_diagnostics(2.0 * truth + 1.0, truth, ids)  # an affine copy: r = 1, no spread
    assert exact["shape_correlation"] == pytest.approx(1.0) and exact["identity_spread"] == pytest.approx(0.0)
    noise = shape_diagnostics(rng.standard_normal((200, 12)), truth, ids)  # no identity at all
    assert abs(noise["shape_correlation"]) < 0.1
    # Within-person variance 12 per image (unbiased: (4-1)/4 of it seen) over between-person
    # variance 12 / 4 (means of 4): about 3.
    assert 2.0 < noise["identity_spread"] < 4.0
    flipped = shape_diagnostics(-truth, truth, ids)
    assert flipped["shape_correlation"] == pytest.approx(-1.0)
    assert shape_diagnostics(np.zeros((4, 3)), truth[:4, :3], ["a"] * 4) == {
        "shape_correlation": None, "identity_spread": None}


def test_nme_hand_computed():
    truth = np.zeros((68, 2))
    truth[36], truth[45] = [0, 0], [10, 0]
    pred = truth + np.array([3.0, 4.0])  # every landmark 5 px off, eyes 10 px apart
    assert nme(pred, truth) == pytest.approx(0.5)


def test_cli_writes_json_and_refuses_a_mismatched_head_model(setup, inner, tmp_path, capsys):
    # --network_only keeps the command quick; the rows of a full run are test_shared_rows_and_noisy_rows'.
    args = ["synthetic", "--checkpoint", str(setup / "ckpt"), "--data", str(setup / "data"),
            "--flame_model", str(setup / "flame"), "--network_only", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "n.json")]) == 0
    assert "mean shape" in capsys.readouterr().out
    quick = json.loads((tmp_path / "n.json").read_text())["results"]
    assert set(quick) == {"network", "mean shape"}
    in_process = evaluate_synthetic(inner, setup / "data", network_only=True)
    assert quick["network"] == pytest.approx(in_process["network"])
    save_flame_files(make_tiny_model(seed=3, num_vertices=100), tmp_path / "other")
    args[args.index(str(setup / "flame"))] = str(tmp_path / "other")
    assert main(args + ["--out", str(tmp_path / "m.json")]) == 2
    assert "trained with head model" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_shared_rows_and_noisy_rows(setup, inner):
    # The command's defaults (shared sizes 2, 4, 8; noisy rows): 2 images per identity allow x2 only.
    results = evaluate_synthetic(inner, setup / "data", fit_steps=20)
    assert set(results) == {"network", "mean shape", "landmark fitting", "network + refinement",
                            "shared shape x2", "network + refinement, noisy", "shared shape x2, noisy"}
    for name in ("shared shape x2", "network + refinement, noisy", "shared shape x2, noisy"):
        assert results[name]["images"] == 4 and np.isfinite(results[name]["median_mm"])
    assert 0 <= results["shared shape x2"]["excluded"] <= 4  # counted (20 steps on a random model
    # leave the fits far off: pairs lose members to the failed-fit rule only)
    only = evaluate_synthetic(inner, setup / "data", fit_steps=20, shared_sizes=(), noisy=False)
    assert set(only) == {"network", "mean shape", "landmark fitting", "network + refinement"}
    assert only["network"] == results["network"]


def test_person_groups():
    ids = ["a", "a", "a", "b", "a", "b", "b"]
    np.testing.assert_array_equal(person_groups(ids, 2), [0, 0, 1, 2, 1, 2, 3])
    np.testing.assert_array_equal(person_groups(ids, 8), [0, 0, 0, 1, 0, 1, 1])


class ShiftedLandmarker:
    """A stand-in for dlib: returns each image's true landmarks moved by a known offset (in face
    sizes) and finds no face in every third image."""

    def __init__(self, records, offset):
        self.records, self.offset, self.i = records, np.asarray(offset), -1

    def detect(self, rgb):
        self.i += 1
        return [] if self.i % 3 == 2 else ["face"]

    def landmarks(self, rgb, det):
        lm = self.records[self.i].landmarks
        size = (lm[:, :2].max(0) - lm[:, :2].min(0)).max()
        return type("F", (), {"points": lm[:, :2] + self.offset * size})()


def test_measure_detector_noise_with_a_known_detector(setup):
    records = D.read_manifest(setup / "data")
    stats = measure_detector_noise(setup / "data", landmarker=ShiftedLandmarker(records, [0.01, 0.0]))
    assert stats["total"] == 4 and stats["detected"] == 3
    assert stats["gross_rate"] == 0.0
    # A constant offset is all systematic: no spread, a bias of 0.01 face sizes everywhere.
    assert max(stats["sigma"].values()) < 1e-6
    assert all(b == pytest.approx(0.01, abs=1e-6) for b in stats["bias"].values())
    assert "detected 3 of 4" in format_noise(stats)
