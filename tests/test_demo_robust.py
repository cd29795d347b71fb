"""demo.py and export.py under careless or hostile use (issue 14): unique outputs, argument checks,
whole-or-nothing output sets, damaged checkpoints, an unwritable or taken --out, the overlay figure.

Tiny network, --no_detect (no dlib needed): each case takes a second or two.
"""
from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import demo
import export
from flame.io import load_flame
from flame.mesh_io import read_mesh
from ringnet_tf import camera, demo_lib, preprocess
from ringnet_tf.model import ModelConfig
from tests.conftest import TINY_DEMO_CONFIG

PHOTO = Path(__file__).parent / "data" / "astronaut.jpg"
CONFIG = ModelConfig(**TINY_DEMO_CONFIG)


@pytest.fixture(scope="module")
def setup(tiny_demo_root):
    """Read only: flame/, ckpt/, run/ (ringnet.keras) and sm/ (conftest.tiny_demo_root)."""
    return tiny_demo_root


def _run(setup, *args, checkpoint=None):
    return demo.main(["--checkpoint", str(checkpoint or setup / "ckpt"), "--flame_model",
                      str(setup / "flame"), "--no_detect", *args])


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ---------------------------------------------------------------------------------------------
# 1. Unique outputs per input


def test_same_stem_inputs_get_distinct_outputs(setup, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(PHOTO, folder / "face.jpg")
    rgb = preprocess.read_image(PHOTO)
    import cv2
    cv2.imwrite(str(folder / "face.png"), cv2.cvtColor(rgb[:, ::-1].copy(), cv2.COLOR_RGB2BGR))
    shutil.copy(PHOTO, folder / "a.jpg")
    shutil.copy(PHOTO, folder / "a_neutral.jpg")  # a.jpg's neutral mesh would be a_neutral.obj
    out = tmp_path / "out"
    assert _run(setup, "--img", str(folder), "--out", str(out), "--neutral", "--params") == 0
    assert "4 image(s) written, 0 failed" in capsys.readouterr().out
    meshes = {p.name for p in out.glob("*.obj")}
    assert {"face_jpg.obj", "face_png.obj", "face_jpg_neutral.obj", "face_png_neutral.obj"} <= meshes
    assert {"a_jpg.obj", "a_jpg_neutral.obj", "a_neutral_jpg.obj", "a_neutral_jpg_neutral.obj"} <= meshes
    # The two faces are different photos (one mirrored): their meshes differ, none overwrote the other.
    jpg, png = read_mesh(out / "face_jpg.obj")[0], read_mesh(out / "face_png.obj")[0]
    assert np.abs(jpg - png).max() > 0
    assert np.load(out / "face_jpg.npz")["shape"].shape == (10,)
    # Rerunning without --force refuses every image and changes nothing.
    before = {p: p.read_bytes() for p in out.iterdir()}
    assert _run(setup, "--img", str(folder), "--out", str(out), "--neutral", "--params") == 1
    assert capsys.readouterr().err.count("exists (pass --force") == 4
    assert {p: p.read_bytes() for p in out.iterdir()} == before


def test_a_glob_takes_its_matches_only_named_from_their_common_folder(setup, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "sub/c.jpg", "d.png"):
        shutil.copy(PHOTO, folder / name)
    out = tmp_path / "out"
    assert _run(setup, "--img", str(folder / "*.jpg"), "--out", str(out)) == 0
    assert "2 image(s) written, 0 failed" in capsys.readouterr().out
    assert _files(out) == ["a.obj", "b.obj"]


def test_no_detect_regresses_ringnets_centre_crop(setup, tmp_path):
    out = tmp_path / "m.obj"
    assert _run(setup, "--img", str(PHOTO), "--out", str(out), "--params") == 0
    p = np.load(tmp_path / "m.npz")
    assert "detected_landmarks" not in p.files
    np.testing.assert_allclose(p["crop_box"], [127.5, 127.5, 256.0])  # the whole photo, centred
    # RingNet's crop of a square 256 px photo is a plain bilinear resize to the input size.
    rgb = preprocess.read_image(PHOTO)
    assert rgb.shape == (256, 256, 3)
    import cv2
    from ringnet_tf.inference import load_predictor

    predictor = load_predictor(setup / "ckpt", str(setup / "flame"))
    want = predictor.predict(cv2.resize(rgb, (CONFIG.image_size,) * 2)[None])
    np.testing.assert_allclose(read_mesh(out)[0], want["vertices"][0], atol=1e-5)
    np.testing.assert_allclose(p["shape"], want["shape"][0], atol=1e-5)


def test_plan_outputs_reports_an_unresolvable_collision(tmp_path):
    # b/x.jpg qualified is b/x_jpg.obj, which b/x_jpg.jpg also claims: the later one is refused.
    images = [tmp_path / "b" / "x.jpg", tmp_path / "b" / "x.png", tmp_path / "b" / "x_jpg.png"]
    plans = demo_lib.plan_outputs(images, tmp_path, tmp_path / "out", demo_lib.DemoOptions())
    assert isinstance(plans[0], dict) and isinstance(plans[1], dict)
    targets = [p["mesh"] for p in plans if isinstance(p, dict)]
    assert len(targets) == len(set(targets))
    assert isinstance(plans[2], str) and "also an output of" in plans[2]


@pytest.mark.parametrize("group", ["all", "folder"])
def test_an_image_named_person_does_not_take_the_persons_outputs(tmp_path, group):
    # person.jpg's parameters would be person.npz, the person's shape file: the image's names are
    # qualified instead, with --same_person (out/) and --group_by_folder (out/<folder>/) alike.
    sub = tmp_path if group == "all" else tmp_path / "ann"
    images = [sub / "person.jpg", sub / "b.jpg"]
    out = tmp_path / "out"
    plans = demo_lib.plan_outputs(images, tmp_path, out, demo_lib.DemoOptions(group=group, params=True))
    folder = demo_lib.person_folder(images[0], tmp_path, out, group)
    reserved = set(demo_lib.person_paths(folder).values())
    assert folder == out / sub.relative_to(tmp_path)
    claimed = [p for plan in plans for p in plan.values()]
    assert len(claimed) == len(set(claimed)) and not reserved & set(claimed)
    assert plans[0]["params"].name == "person_jpg.npz"


# ---------------------------------------------------------------------------------------------
# 7. Argument checks


@pytest.mark.parametrize("args, message", [
    (["--batch_size", "-1"], "--batch_size must be at least 1"),
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--refine", "-5"], "--refine must be 0"),
])
def test_bad_numbers_are_one_line_errors(setup, tmp_path, capsys, args, message):
    assert _run(setup, "--img", str(PHOTO), "--out", str(tmp_path / "m.obj"), *args) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "m.obj").exists()


def test_empty_img_does_not_process_the_current_folder(setup, tmp_path, capsys, monkeypatch):
    shutil.copy(PHOTO, tmp_path / "here.jpg")
    monkeypatch.chdir(tmp_path)
    assert _run(setup, "--img", "", "--out", str(tmp_path / "out")) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "--img is empty" in err[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# 8. Whole output sets


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_now_out_leaves_no_meshes_behind_permissions(setup, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert _run(setup, "--img", str(PHOTO), "--out", str(tmp_path / "o" / "m.obj"), "--neutral",
                    "--now_out", str(locked / "now")) == 1
    finally:
        locked.chmod(0o700)
    assert _files(tmp_path / "o") == []


def test_unwritable_now_out_leaves_no_meshes_behind(setup, tmp_path, capsys):
    # A --now_out under a regular file cannot be created, also as root.
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    out = tmp_path / "o"
    assert _run(setup, "--img", str(PHOTO), "--out", str(out / "m.obj"), "--neutral", "--params",
                "--overlay", "--now_out", str(blocker / "now")) == 1
    assert "failed" in capsys.readouterr().err
    assert _files(out) == [], "a failed image left part of its outputs"
    # Fixed, the same command then runs (nothing left behind to refuse).
    assert _run(setup, "--img", str(PHOTO), "--out", str(out / "m.obj"), "--neutral", "--params",
                "--overlay", "--now_out", str(tmp_path / "now")) == 0
    assert _files(out) == ["m.npz", "m.obj", "m_neutral.obj", "m_overlay.png"]
    assert _files(tmp_path / "now") == ["astronaut.npy", "astronaut.obj"]


def test_a_failed_export_leaves_nothing_and_a_rerun_succeeds(setup, tmp_path, capsys, monkeypatch):
    import ringnet_tf.export as E

    args = ["--checkpoint", str(setup / "ckpt"), "--flame_model", str(setup / "flame")]
    real = E._write_archive

    def dies_midway(net, out):
        (out / "variables").mkdir()
        (out / "variables" / "half").write_bytes(b"partial")
        raise KeyboardInterrupt  # as a kill would interrupt it

    monkeypatch.setattr(E, "_write_archive", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        export.main(args + ["--out", str(tmp_path / "sm")])
    assert _files(tmp_path) == []
    monkeypatch.setattr(E, "_write_archive", real)
    assert export.main(args + ["--out", str(tmp_path / "sm")]) == 0
    assert (tmp_path / "sm" / "saved_model.pb").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["sm"]
    # --force replaces a finished export; without it the export is refused.
    marker = tmp_path / "sm" / "marker"
    marker.write_text("old")
    assert export.main(args + ["--out", str(tmp_path / "sm")]) == 2
    assert "pass --force" in capsys.readouterr().err and marker.exists()
    assert export.main(args + ["--out", str(tmp_path / "sm"), "--force"]) == 0
    assert not marker.exists() and (tmp_path / "sm" / "saved_model.pb").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["sm"]


# ---------------------------------------------------------------------------------------------
# 9. export.py --out an existing file or an impossible place


@pytest.mark.parametrize("where", ["existing_file", "under_a_file"])
def test_export_out_that_cannot_be_a_folder(setup, tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("precious")
    out = blocker if where == "existing_file" else blocker / "sm"
    args = ["--checkpoint", str(setup / "ckpt"), "--flame_model", str(setup / "flame"), "--out", str(out)]
    assert export.main(args) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: ") and str(blocker) in err[0]
    assert blocker.read_text() == "precious" and [p.name for p in tmp_path.iterdir()] == ["blocker"]


# ---------------------------------------------------------------------------------------------
# 5. Damaged inference checkpoints: one line naming the file, in demo, export and evaluate


def _damage(setup, tmp_path, kind: str) -> tuple[Path, Path]:
    """A damaged copy of a checkpoint; returns (checkpoint folder, the damaged file)."""
    source = {"weights_truncated": "ckpt", "weights_not_zip": "ckpt", "config_binary": "ckpt",
              "config_list": "ckpt", "keras_truncated": "run", "saved_model_garbage": "sm"}[kind]
    ckpt = tmp_path / kind
    shutil.copytree(setup / source, ckpt)
    if kind == "weights_truncated":
        f = ckpt / "weights.npz"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "weights_not_zip":
        f = ckpt / "weights.npz"
        f.write_bytes(b"this is not a zip archive at all")
    elif kind == "config_binary":
        f = ckpt / "config.json"
        f.write_bytes(bytes(range(256)) * 4)
    elif kind == "config_list":
        f = ckpt / "config.json"
        f.write_text(json.dumps([1, 2, 3]))
    elif kind == "keras_truncated":
        f = ckpt / "ringnet.keras"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    else:
        f = ckpt / "saved_model.pb"
        f.write_bytes(os.urandom(2000))
    return ckpt, f


KINDS = ["weights_truncated", "weights_not_zip", "config_binary", "config_list", "keras_truncated",
         "saved_model_garbage"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_checkpoint_in_demo(setup, tmp_path, capsys, kind):
    ckpt, damaged = _damage(setup, tmp_path, kind)
    out = tmp_path / "m.obj"
    flag = ["--saved_model", str(ckpt)] if kind == "saved_model_garbage" else []
    assert _run(setup, "--img", str(PHOTO), "--out", str(out), *flag, checkpoint=ckpt) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: ") and str(damaged) in err[0], err
    assert "File not found" not in err[0]
    assert not out.exists()


@pytest.mark.parametrize("kind", ["weights_truncated", "config_binary", "keras_truncated"])
def test_damaged_checkpoint_in_export_and_evaluate(setup, tmp_path, capsys, kind):
    ckpt, damaged = _damage(setup, tmp_path, kind)
    assert export.main(["--checkpoint", str(ckpt), "--flame_model", str(setup / "flame"),
                        "--out", str(tmp_path / "sm")]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and str(damaged) in err[0]
    assert not (tmp_path / "sm").exists()
    from ringnet_tf.evaluate.__main__ import main as evaluate_main

    code = evaluate_main(["synthetic", "--checkpoint", str(ckpt), "--flame_model", str(setup / "flame"),
                          "--data", str(tmp_path / "no_data"), "--out", str(tmp_path / "r.json")])
    assert code != 0
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and str(damaged) in err[0], err
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------------------------------------
# The overlay: the whole head over the photo, memory bounded by the figure's size


def test_overlay_draws_the_head_beyond_the_crop_box():
    model = load_flame(None)
    vertices = model.v_template.astype(np.float64)
    size = 64
    # A box covering only the middle of a 400 x 300 photo, a camera that makes the head larger
    # than the box: the old figure cut it at the box's edges.
    rgb = np.full((300, 400, 3), 60, np.uint8)
    box = preprocess.Box(200.0, 150.0, 80.0)
    cam = np.array([25.0, -vertices[:, 0].mean(), -vertices[:, 1].mean()])
    fig = demo_lib._figure(rgb, box, size, vertices, model.faces, cam)
    scale = demo_lib.FIGURE_SIZE / 400
    assert fig.shape == (int(round(300 * scale)), int(round(400 * scale)) + int(round(300 * scale)), 3)
    photo_part = fig[:, : int(round(400 * scale))]
    changed = np.any(photo_part != 60, axis=2)
    # Where the head's vertices land in the figure, through the crop's camera and the box.
    crop_px = camera.project(vertices, cam, size)
    photo_px = preprocess.transform_points(crop_px, __import__("cv2").invertAffineTransform(box.affine(size)))
    fig_px = (photo_px + 0.5) * scale - 0.5
    box_left, box_right = (200 - 40) * scale, (200 + 40) * scale
    assert fig_px[:, 0].min() < box_left - 10 and fig_px[:, 0].max() > box_right + 10
    cols = np.nonzero(changed.any(axis=0))[0]
    assert cols.min() < box_left - 5 and cols.max() > box_right + 5
    # The drawn region matches the projected extent to within two figure pixels.
    assert abs(cols.min() - fig_px[:, 0].min()) < 2 and abs(cols.max() - fig_px[:, 0].max()) < 2


def test_overlay_memory_does_not_grow_with_the_photo():
    model = load_flame(None)
    vertices = model.v_template.astype(np.float64)
    cam = np.array([7.0, -vertices[:, 0].mean(), -vertices[:, 1].mean()])
    photo = np.full((3000, 3000, 3), 90, np.uint8)  # 27 MB
    box = preprocess.Box(1500.0, 1500.0, 2000.0)
    tracemalloc.start()
    try:
        demo_lib._figure(photo, box, 224, vertices, model.faces, cam)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The old figure made several float copies of the photo (> 500 MB here).
    assert peak < 60e6, f"{peak / 1e6:.0f} MB"


@pytest.mark.parametrize("box", [(200.0, 150.0, 90.0), (10.0, 20.0, 600.0), (380.0, 280.0, 70.0),
                                 (200.0, 150.0, 290.0)])
def test_crop_reads_only_its_window_with_the_same_pixels(box):
    """crop() cuts the box's window before blurring (bounded memory on huge photos); the pixels
    equal blurring and warping the whole photo, the direct way."""
    import cv2

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    b = preprocess.Box(*box)
    for size in (32, 64):
        full = image
        if b.size / size > 2.0:
            sigma = 0.5 * b.size / size
            full = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
        want = cv2.warpAffine(full, b.affine(size), (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        np.testing.assert_array_equal(preprocess.crop(image, b, size), want)


def test_texture_option_writes_a_textured_obj_trio(tmp_path, capsys):
    """demo.py --texture on the bundled checkpoint: OBJ + MTL + PNG that trimesh opens with UVs, the
    OBJ in the model's vertex order, the visible face coloured from the photo."""
    import trimesh

    out = tmp_path / "a.obj"
    assert demo.main(["--img", str(PHOTO), "--out", str(out), "--texture", "--refine", "0"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["a.obj", "a_textured.mtl", "a_textured.obj", "a_textured.png"]
    mesh, _ = read_mesh(out)
    textured, _ = read_mesh(tmp_path / "a_textured.obj")
    np.testing.assert_allclose(textured, mesh, atol=1e-6)
    loaded = trimesh.load(tmp_path / "a_textured.obj", process=False)
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals) and loaded.visual.uv is not None
    tex = preprocess.read_image(tmp_path / "a_textured.png")
    # Part of the atlas took the photo's colours: more than one distinct colour.
    assert len(np.unique(tex.reshape(-1, 3), axis=0)) > 100
    # --flame_texture without --texture is refused; a bad texture file is one line naming it.
    assert demo.main(["--img", str(PHOTO), "--out", str(tmp_path / "b.obj"), "--flame_texture", "x.npz"]) == 2
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert demo.main(["--img", str(PHOTO), "--out", str(tmp_path / "c.obj"), "--texture",
                      "--flame_texture", str(bad)]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert err[-1].startswith("error: ") and str(bad) in err[-1]
    assert not (tmp_path / "c.obj").exists()
