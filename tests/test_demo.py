"""demo.py end to end on the bundled photo, with a tiny network: meshes, parameters that reproduce
them, neutral meshes, SavedModel parity, a corrupt file among good ones, a head-model mismatch."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import demo
from flame.io import load_flame
from flame.layer import FlameLayer
from flame.mesh_io import read_mesh
from flame.model import save_flame_files
from ringnet_tf.export import export_saved_model
from ringnet_tf.model import ModelConfig
from tests.conftest import make_tiny_checkpoint, make_tiny_model

PHOTO = Path(__file__).parent / "data" / "astronaut.jpg"
CONFIG = ModelConfig(image_size=64, backbone="tiny", num_shape=10, num_expression=5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("dlib")
    root = tmp_path_factory.mktemp("demo")
    net = make_tiny_checkpoint(root, CONFIG)
    export_saved_model(net, root / "sm")
    return root


def _run(setup, *args):
    return demo.main(["--checkpoint", str(setup / "ckpt"), "--flame_model", str(setup / "flame"), *args])


def test_single_image_outputs_reproduce_through_flame(setup, tmp_path):
    out = tmp_path / "mesh.obj"
    assert _run(setup, "--img", str(PHOTO), "--out", str(out), "--params", "--neutral", "--overlay") == 0
    vertices, faces = read_mesh(out)
    model = load_flame(setup / "flame")
    assert vertices.shape == (model.num_vertices, 3)
    np.testing.assert_array_equal(faces, model.faces)
    p = np.load(tmp_path / "mesh.npz")
    assert p["cam"].shape == (3,) and p["pose"].shape == (6,) and p["flame_pose"].shape == (15,)
    assert p["landmarks2d"].shape == (68, 2) and p["now_landmarks"].shape == (7, 3)
    layer = FlameLayer(model, 10, 5)
    again = layer(tf.constant(p["shape"][None]), tf.constant(p["expression"][None]), tf.constant(p["pose"][None]))
    np.testing.assert_allclose(again["vertices"][0].numpy(), vertices, atol=2e-6)
    neutral, _ = read_mesh(tmp_path / "mesh_neutral.obj")
    zero = layer(tf.constant(p["shape"][None]), tf.zeros((1, 5)), tf.zeros((1, 6)))
    np.testing.assert_allclose(neutral, zero["vertices"][0].numpy(), atol=2e-6)
    assert (tmp_path / "mesh_overlay.png").stat().st_size > 1000
    # The detected landmarks lie on the face, in the photo's pixels.
    det = p["detected_landmarks"]
    assert det.shape == (68, 3) and 0 < det[:, 0].min() and det[:, 0].max() < 256


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
    # A compact checkpoint re-exported from a checkpoint gives the same meshes.
    assert export.main(args + ["--out", str(tmp_path / "compact"), "--compact"]) == 0
    assert _run(setup, "--img", str(PHOTO), "--out", str(tmp_path / "d.obj")) == 0
    assert demo.main(["--checkpoint", str(tmp_path / "compact"), "--flame_model", str(setup / "flame"),
                      "--img", str(PHOTO), "--out", str(tmp_path / "e.obj")]) == 0
    np.testing.assert_allclose(read_mesh(tmp_path / "d.obj")[0], read_mesh(tmp_path / "e.obj")[0], atol=1e-4)
