"""The bundled default checkpoint, end to end on the bundled example photo, exactly as the README's
main command runs it (no --checkpoint, no --flame_model): the open head model's mesh, parameters
that reproduce it through FLAME, the neutral mesh, and landmarks that a trained network puts on the
face better than its own starting point does."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import demo
from flame.io import load_flame
from ringnet_tf import preprocess
from ringnet_tf.evaluate.synthetic import nme, predictor_mean_params
from ringnet_tf.inference import load_predictor
from ringnet_tf.params import ParamSpec
from tests.conftest import check_demo_outputs

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "astronaut.jpg"
CHECKPOINT = ROOT / "checkpoints" / "ringnet_default"


def test_the_bundled_checkpoint_is_complete_and_matches_the_open_head_model(monkeypatch):
    config = json.loads((CHECKPOINT / "config.json").read_text())
    assert config["flame_fingerprint"] == load_flame(None).fingerprint()
    assert config["weights_dtype"] == "float16"
    assert (CHECKPOINT / "weights.npz").stat().st_size < 60 * 2**20  # the budget
    # How it was trained: each stage's flagfile beside the weights is the one in configs/ (stages
    # 1-2 train.py's, the rest train_head's), and train_head's parse to the recorded settings.
    assert "--backbone=resnet50" in (CHECKPOINT / "stage1.flags").read_text()
    assert "--init_from=" in (CHECKPOINT / "stage2.flags").read_text()
    stages = ["", "_stage2", "_head", "_head2", "_landmarks", "_landmarks2"]
    for i, suffix in enumerate(stages, 1):
        assert (CHECKPOINT / f"stage{i}.flags").read_bytes() == \
            (ROOT / "configs" / f"default_checkpoint{suffix}.flags").read_bytes(), i
    assert not (CHECKPOINT / f"stage{len(stages) + 1}.flags").exists()
    from ringnet_tf.train_head import _parser, expand_flagfiles

    monkeypatch.chdir(ROOT)  # flagfiles name each other from the repository's root, as their commands run
    last = _parser().parse_args(expand_flagfiles(
        [f"--flagfile=checkpoints/ringnet_default/stage{len(stages)}.flags", "--init_from", "i",
         "--data", "d", "--out", "o"]))
    recorded = config["training"]["training"]
    for key in ("learning_rate", "num_steps", "rings_per_batch", "ring_size", "dropout", "seed"):
        assert getattr(last, key) == recorded[key], key
    assert {k: getattr(last, f"w_{k}") for k in recorded["loss"] if k != "eta"} == \
        {k: v for k, v in recorded["loss"].items() if k != "eta"}
    results = json.loads((CHECKPOINT / "synthetic_benchmark.json").read_text())["results"]
    assert {"network", "mean shape", "landmark fitting"} <= set(results)
    assert (CHECKPOINT / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_outputs(tmp_path_factory):
    pytest.importorskip("dlib")
    out = tmp_path_factory.mktemp("default") / "astronaut.obj"
    assert demo.main(["--img", str(EXAMPLE), "--out", str(out), "--params", "--neutral", "--overlay"]) == 0
    return out


def test_demo_defaults_write_the_head_models_mesh_and_reproducible_parameters(demo_outputs):
    size = json.loads((CHECKPOINT / "config.json").read_text())["model"]["image_size"]
    check_demo_outputs(demo_outputs, load_flame(None), size)  # mesh, landmarks, neutral mesh
    assert demo_outputs.with_name("astronaut_neutral.obj").exists()
    assert demo_outputs.with_name("astronaut_overlay.png").stat().st_size > 10_000


def test_landmarks_land_on_the_face_better_than_the_untrained_start(demo_outputs):
    """The network's 68 landmarks against dlib's on the photo, NME (outer-eye-corner distance),
    compared with the regressor's starting parameters decoded through the same crop and camera."""
    p = np.load(demo_outputs.with_suffix(".npz"))
    detected = p["detected_landmarks"]
    trained = nme(p["landmarks2d"], detected)

    predictor = load_predictor(CHECKPOINT)
    size = predictor.image_size
    box = preprocess.box_from_landmarks(detected)
    spec = ParamSpec(predictor.flame_layer.num_shape, predictor.flame_layer.num_expression)
    start_crop = predictor.decode(predictor_mean_params(predictor, spec)[None])["landmarks2d"][0]
    start_photo = preprocess.transform_points(start_crop, cv2.invertAffineTransform(box.affine(size)))
    untrained = nme(start_photo, detected)
    assert trained < 0.12, trained
    assert trained < 0.6 * untrained, (trained, untrained)
