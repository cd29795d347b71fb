"""demo.py on a video clip, and on several photos of one person (issue 11): one shape per person,
pose and expression per frame, frames without a face listed, an overlay video that decodes, and
one-line errors for clips that cannot be used. Tiny network; dlib finds the faces."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import demo
from flame.mesh_io import read_mesh
from ringnet_tf import preprocess

PHOTO = Path(__file__).parent / "data" / "astronaut.jpg"
BLANK = range(8, 12)  # frames of the test clip that show no face


def _photo_bgr() -> np.ndarray:
    """The bundled photo as OpenCV writes it (BGR), read by the project's one reader."""
    return cv2.cvtColor(preprocess.read_image(PHOTO), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_demo_root):
    pytest.importorskip("dlib")
    root = tmp_path_factory.mktemp("video")
    for name in ("ckpt", "flame"):  # the session's tiny network (conftest.tiny_demo_root)
        (root / name).symlink_to(tiny_demo_root / name)
    # A 20-frame clip: the photo sliding across a dark frame, with four blank frames.
    photo = _photo_bgr()
    writer = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (360, 280))
    for i in range(20):
        frame = np.full((280, 360, 3), 30, np.uint8)
        if i not in BLANK:
            frame[12:268, 4 + 4 * i:260 + 4 * i] = photo
        writer.write(frame)
    writer.release()
    return root


def _run(setup, *args):
    return demo.main(["--checkpoint", str(setup / "ckpt"), "--flame_model", str(setup / "flame"), *args])


def test_video_outputs(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(setup, "--img", str(setup / "clip.avi"), "--out", str(out), "--every", "2",
                "--overlay", "--meshes") == 0
    captured = capsys.readouterr()
    assert "no face in 2 frame(s), skipped: 8, 10" in captured.err
    p = np.load(out / "clip.npz")
    kept = [i for i in range(0, 20, 2) if i not in BLANK]
    assert p["frame"].tolist() == kept and p["frames_without_face"].tolist() == [8, 10]
    np.testing.assert_allclose(p["time"], np.array(kept) / 10.0)
    n = len(kept)
    assert p["pose"].shape == (n, 6) and p["expression"].shape == (n, 5) and p["cam"].shape == (n, 3)
    assert p["landmarks2d"].shape == (n, 68, 2) and p["detected_landmarks"].shape == (n, 68, 3)
    # The face moves right by 8 px per kept frame: so do the detected landmarks.
    shift = np.diff(p["detected_landmarks"][:, :, 0].mean(axis=1))
    assert np.all(np.abs(shift[[0, 1, 2]] - 8) < 3)
    assert p["person_shape"].shape == (10,)
    neutral, _ = read_mesh(out / "clip_neutral.obj")
    assert neutral.shape == (64, 3)
    assert sorted(q.name for q in (out / "clip_meshes").iterdir()) == [f"frame_{i:06d}.obj" for i in kept]
    cap = cv2.VideoCapture(str(out / "clip_overlay.webm"))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == 10  # every kept frame, faces or not, at the kept rate
    assert [q.name for q in out.iterdir() if q.name.startswith(".")] == []
    # Not overwritten without --force.
    assert _run(setup, "--img", str(setup / "clip.avi"), "--out", str(out), "--every", "2") == 2
    assert "exists" in capsys.readouterr().err


def test_max_frames(setup, tmp_path):
    out = tmp_path / "out"
    assert _run(setup, "--img", str(setup / "clip.avi"), "--out", str(out), "--max_frames", "3",
                "--every", "3", "--refine", "0") == 0
    assert np.load(out / "clip.npz")["frame"].tolist() == [0, 3, 6]


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_undecodable_clip_is_a_one_line_error(setup, tmp_path, capsys, content):
    clip = tmp_path / "bad.mp4"
    clip.write_bytes(content)
    assert _run(setup, "--img", str(clip), "--out", str(tmp_path / "out")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and str(clip) in err[0]
    assert not (tmp_path / "out").exists()


def test_clip_without_any_face_is_a_one_line_error(setup, tmp_path, capsys):
    clip = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for _ in range(5):
        writer.write(np.full((120, 160, 3), 90, np.uint8))
    writer.release()
    assert _run(setup, "--img", str(clip), "--out", str(tmp_path / "out")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "no face found in any of the 5 frame(s)" in err[0]
    assert not (tmp_path / "out").exists()


def test_same_person_folder(setup, tmp_path, capsys):
    photos = tmp_path / "alice"
    photos.mkdir()
    rgb = _photo_bgr()
    for i, angle in enumerate((-6, 3, 6)):
        m = cv2.getRotationMatrix2D((128, 128), angle, 1.0)
        cv2.imwrite(str(photos / f"p{i}.jpg"), cv2.warpAffine(rgb, m, (256, 256), borderMode=cv2.BORDER_REPLICATE))
    shutil.copy(PHOTO, photos / "p3.jpg")
    out = tmp_path / "out"
    # The bundled checkpoint and the open head model: the tiny test model cannot fit real faces.
    assert demo.main(["--img", str(photos), "--out", str(out), "--same_person", "--params"]) == 0
    shapes = [np.load(out / f"p{i}.npz")["shape"] for i in range(4)]
    person = np.load(out / "person.npz")
    assert person["images"].tolist() == [str(photos / f"p{i}.jpg") for i in range(4)]
    assert not person["excluded"].any(), person["excluded_reason"]
    # One shape for the person: every image's refined shape is the shared one.
    for s in shapes:
        np.testing.assert_allclose(s, person["shape"], atol=1e-5)
    assert read_mesh(out / "person_neutral.obj")[0].shape[1] == 3


def test_group_by_folder(setup, tmp_path):
    root = tmp_path / "people"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        shutil.copy(PHOTO, root / name / "1.jpg")
        cv2.imwrite(str(root / name / "2.jpg"), _photo_bgr()[:, ::-1])
    out = tmp_path / "out"
    assert demo.main(["--img", str(root), "--out", str(out), "--group_by_folder", "--params"]) == 0
    for name in ("a", "b"):
        person = np.load(out / name / "person.npz")
        assert person["images"].tolist() == [str(root / name / "1.jpg"), str(root / name / "2.jpg")]
        for k in ("1", "2"):
            np.testing.assert_allclose(np.load(out / name / f"{k}.npz")["shape"], person["shape"], atol=1e-5)
        assert (out / name / "person_neutral.obj").exists()
