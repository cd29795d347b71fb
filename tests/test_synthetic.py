"""Synthetic rings: landmarks are FLAME's projected landmarks for the stored ground truth, same seed
gives the same bytes, the dataset reads back, and the framing is the shared crop box."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from flame.io import load_flame
from flame.layer import FlameLayer
from ringnet_tf import camera, preprocess
from ringnet_tf.data import dataset as D
from ringnet_tf.data.synthetic import SynthConfig, framing_camera, generate, main

CFG = SynthConfig(identities=3, images_per_identity=2, seed=5, size=64, num_shape=10, num_expression=5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, flame_dir):
    return generate(tmp_path_factory.mktemp("syn") / "d", CFG, str(flame_dir), workers=1, progress=False)


def test_landmarks_are_flames_projected_landmarks(dataset, flame_dir):
    records = D.read_manifest(dataset)
    gt = D.read_ground_truth(dataset)
    assert len(records) == 6 and list(gt["image"]) == [r.image for r in records]
    layer = FlameLayer(load_flame(flame_dir), CFG.num_shape, CFG.num_expression)
    out = layer(tf.constant(gt["shape"]), tf.constant(gt["expression"]), tf.constant(gt["pose"]))
    expected = camera.project(out["landmarks"].numpy(), gt["cam"], CFG.size)
    got = np.stack([r.landmarks for r in records])
    np.testing.assert_allclose(got[..., :2], expected, atol=2e-3)  # manifest keeps 1/1000 px
    assert set(np.unique(got[..., 2]).tolist()) <= {1.0, np.float32(0.3).item()}
    # Neutral meshes are FLAME(shape, 0, 0) of each identity.
    zeros = [tf.zeros((3, CFG.num_expression)), tf.zeros((3, 6))]
    shapes = gt["shape"][::CFG.images_per_identity]
    neutral = layer(tf.constant(shapes), *zeros)["vertices"].numpy()
    np.testing.assert_allclose(gt["neutral_vertices"], neutral, atol=1e-6)


def test_framing_is_the_shared_crop_box(dataset):
    gt = D.read_ground_truth(dataset)
    for r in D.read_manifest(dataset):
        box = preprocess.box_from_landmarks(r.landmarks)
        # Jitter moves the box by at most 10 % in size and 5 % of the side in position.
        assert abs(box.size / CFG.size - 1) <= 0.12
        assert abs(box.cx - (CFG.size - 1) / 2) <= 0.06 * CFG.size
    lm3d = np.random.default_rng(0).normal(size=(68, 3))
    cam = framing_camera(lm3d)
    px = camera.project(lm3d, cam, 100)
    box = preprocess.box_from_landmarks(px)
    assert box.size == pytest.approx(100, rel=1e-6) and box.cx == pytest.approx(49.5, abs=1e-6)
    assert len(gt["cam"]) == 6


def test_same_seed_same_bytes_other_seed_other_identities(tmp_path, dataset, flame_dir):
    again = generate(tmp_path / "again", CFG, str(flame_dir), workers=2, progress=False)
    for name in (D.MANIFEST_NAME, D.GROUND_TRUTH_NAME):
        assert (again / name).read_bytes() == (dataset / name).read_bytes()
    for r in D.read_manifest(dataset):
        assert (again / r.image).read_bytes() == (dataset / r.image).read_bytes()
    other = generate(tmp_path / "other", SynthConfig(**{**CFG.__dict__, "seed": 6}), str(flame_dir),
                     workers=1, progress=False)
    ids = {r.identity for r in D.read_manifest(other)}
    assert not ids & {r.identity for r in D.read_manifest(dataset)}


def test_cli_refuses_an_existing_folder_and_writes_a_preview(tmp_path, flame_dir, dataset, capsys):
    args = ["--identities", "2", "--images-per-identity", "2", "--size", "48", "--workers", "1",
            "--flame_model", str(flame_dir)]
    assert main(["--out", str(dataset)] + args) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "new"), "--preview", str(tmp_path / "grid.png"),
                 "--tfrecords"] + args) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert D.tfrecord_files(tmp_path / "new" / D.TFRECORD_DIR)


def test_framing_camera_default_is_no_jitter_and_stays_so():
    lm3d = np.random.default_rng(1).normal(size=(68, 3))
    np.testing.assert_array_equal(framing_camera(lm3d), framing_camera(lm3d, np.zeros(3)))
    jittered = framing_camera(lm3d, np.array([0.1, 0.05, -0.05]))
    assert not np.array_equal(jittered, framing_camera(lm3d))
    np.testing.assert_array_equal(framing_camera(lm3d), framing_camera(lm3d, None))  # no state kept


def test_preview_marks_visible_landmarks_green_and_hidden_red(dataset, tmp_path):
    from ringnet_tf.data.synthetic import preview

    grid = preprocess.read_image(preview(dataset, tmp_path / "grid.png", count=1))  # RGB
    records = D.read_manifest(dataset)
    assert grid.shape == (CFG.size, CFG.size, 3)
    for x, y, c in records[0].landmarks[::-1]:  # the last dot drawn first: nothing covers it
        col, row = int(round(x)), int(round(y))
        if 0 <= col < CFG.size and 0 <= row < CFG.size:
            assert grid[row, col].tolist() == ([0, 200, 0] if c >= 1 else [255, 0, 0])
            break
    else:
        pytest.fail("no landmark inside the image")


def test_force_replaces_a_dataset_only_once_the_new_one_is_complete(tmp_path, flame_dir, monkeypatch):
    from ringnet_tf.data import synthetic

    out = tmp_path / "d"
    out.mkdir()
    (out / "old.txt").write_text("an earlier dataset")
    with pytest.raises(FileExistsError, match="not empty"):
        generate(out, CFG, str(flame_dir), workers=1, progress=False)
    real, done = synthetic._render_job, []

    def fails_half_way(job):
        if len(done) == 3:
            raise OSError("disk full")
        done.append(job)
        return real(job)

    monkeypatch.setattr(synthetic, "_render_job", fails_half_way)
    with pytest.raises(OSError, match="disk full"):
        generate(out, CFG, str(flame_dir), workers=1, progress=False, force=True)
    monkeypatch.setattr(synthetic, "_render_job", real)
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # the old dataset stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no staging folder left
    generate(out, CFG, str(flame_dir), workers=1, progress=False, force=True)
    assert not (out / "old.txt").exists() and D.read_manifest(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no staging folder left
