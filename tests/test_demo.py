"""demo.py end to end on the bundled photo, with a tiny network: refined parameters that reproduce
the mesh and landmarks written, neutral meshes, SavedModel parity, a corrupt file among good ones,
a head-model mismatch."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import demo
from flame.io import load_flame
from flame.mesh_io import read_mesh
from flame.model import save_flame_files
from ringnet_tf.model import ModelConfig
from tests.conftest import TINY_DEMO_CONFIG, check_demo_outputs, make_tiny_model

PHOTO = Path(__file__).parent / "data" / "astronaut.jpg"
CONFIG = ModelConfig(**TINY_DEMO_CONFIG)


@pytest.fixture(scope="module")
def setup(tiny_demo_root):
    pytest.importorskip("dlib")
    return tiny_demo_root


def _run(setup, *args):
    return demo.main(["--checkpoint", str(setup / "ckpt"), "--flame_model", str(setup / "flame"), *args])


def test_refined_parameters_reproduce_the_mesh_and_landmarks_written(setup, tmp_path):
    raw, fit = tmp_path / "raw.obj", tmp_path / "mesh.obj"
    assert _run(setup, "--img", str(PHOTO), "--out", str(raw), "--params", "--refine", "0") == 0
    assert _run(setup, "--img", str(PHOTO), "--out", str(fit), "--params", "--neutral", "--overlay",
                "--refine", "200") == 0
    model = load_flame(setup / "flame")
    error = {}
    for path in (raw, fit):
        p = check_demo_outputs(path, model, CONFIG.image_size)
        # The detected landmarks lie on the face, in the photo's pixels.
        det = p["detected_landmarks"]
        assert det.shape == (68, 3) and 0 < det[:, 0].min() and det[:, 0].max() < 256
        # the median: the robust objective may leave a few contour points further off
        error[path.stem] = np.median(np.linalg.norm(p["landmarks2d"] - det[:, :2], axis=1))
    # Refinement moved the untrained network's face towards the detected landmarks (the tiny
    # random head model's landmarks are no face: they cannot fit a real one closely).
    assert np.abs(np.load(fit.with_suffix(".npz"))["pose"] - np.load(raw.with_suffix(".npz"))["pose"]).max() > 1e-3
    assert error["mesh"] < error["raw"], error
    assert (tmp_path / "mesh_neutral.obj").exists()  # checked by check_demo_outputs
    assert (tmp_path / "mesh_overlay.png").stat().st_size > 1000


def test_saved_model_gives_the_same_mesh(setup, tmp_path):
    # The raw network on both sides (a SavedModel carries no refinement).
    assert _run(setup, "--img", str(PHOTO), "--out", str(tmp_path / "a.obj"), "--refine", "0") == 0
    assert demo.main(["--saved_model", str(setup / "sm"), "--img", str(PHOTO),
                      "--out", str(tmp_path / "b.obj")]) == 0
    np.testing.assert_allclose(read_mesh(tmp_path / "a.obj")[0], read_mesh(tmp_path / "b.obj")[0], atol=1e-5)


def test_folder_with_a_corrupt_file_still_processes_the_good_ones(setup, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(PHOTO, folder / "a.jpg")
    shutil.copy(PHOTO, folder / "sub" / "b.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert _run(setup, "--img", str(folder), "--out", str(tmp_path / "out"), "--now_out", str(tmp_path / "now")) == 1
    captured = capsys.readouterr()
    assert "broken.jpg: skipped: unreadable" in captured.err
    assert (tmp_path / "out" / "a.obj").exists() and (tmp_path / "out" / "sub" / "b.obj").exists()
    assert np.load(tmp_path / "now" / "sub" / "b.npy").shape == (7, 3)
    assert not (tmp_path / "out" / "broken.obj").exists()
    # Existing outputs are not overwritten without --force.
    assert _run(setup, "--img", str(folder / "a.jpg"), "--out", str(tmp_path / "out" / "a.obj")) == 1
    assert "exists" in capsys.readouterr().err


def test_checkpoint_of_another_head_model_is_refused(setup, tmp_path, capsys):
    save_flame_files(make_tiny_model(seed=9), tmp_path / "other")
    code = demo.main(["--checkpoint", str(setup / "ckpt"), "--flame_model", str(tmp_path / "other"),
                      "--img", str(PHOTO), "--out", str(tmp_path / "x.obj")])
    assert code == 2
    assert "trained with head model" in capsys.readouterr().err
    assert not (tmp_path / "x.obj").exists()


def test_export_command_round_trip(setup, tmp_path, capsys):
    import export
    args = ["--checkpoint", str(setup / "ckpt"), "--flame_model", str(setup / "flame")]
    assert export.main(args + ["--out", str(tmp_path / "sm")]) == 0
    assert export.main(args + ["--out", str(tmp_path / "sm")]) == 2  # never over an existing one
    assert "not empty" in capsys.readouterr().err
    assert demo.main(["--saved_model", str(tmp_path / "sm"), "--img", str(PHOTO),
                      "--out", str(tmp_path / "c.obj")]) == 0
    # A compact checkpoint re-exported from a checkpoint gives the same meshes (the network's:
    # refinement is not what is compared).
    assert export.main(args + ["--out", str(tmp_path / "compact"), "--compact"]) == 0
    assert _run(setup, "--img", str(PHOTO), "--out", str(tmp_path / "d.obj"), "--refine", "0") == 0
    assert demo.main(["--checkpoint", str(tmp_path / "compact"), "--flame_model", str(setup / "flame"),
                      "--img", str(PHOTO), "--out", str(tmp_path / "e.obj"), "--refine", "0"]) == 0
    np.testing.assert_allclose(read_mesh(tmp_path / "d.obj")[0], read_mesh(tmp_path / "e.obj")[0], atol=1e-4)
