"""Data preparation (`python -m ringnet_tf.data.prepare`) on a real face photo (tests/data/astronaut.jpg).

The tests that run dlib skip when it or its predictor is not installed
(`pip install -r requirements-data.txt`).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from flame import constants as C
from ringnet_tf import preprocess
from ringnet_tf.data import dataset as D
from ringnet_tf.data import landmarks_dlib as L
from ringnet_tf.data import prepare as P
from tests.conftest import write_exif_jpeg

PHOTO = Path(__file__).parent / "data" / "astronaut.jpg"
REPO = Path(__file__).resolve().parents[1]

# What the input folder below holds and what should become of each file.
KEPT = {
    "collins/a.jpg", "collins/b_mirror.png", "collins/c_rgba.png", "collins/d_exif.jpg",
    "collins_b/e_crop.jpg", "collins_b/f_grey.png", "collins_b/g_16bit.png",
}
SKIPPED = {
    "collins_b/corrupt.jpg": P.R_UNREADABLE,
    "collins_b/empty.jpg": P.R_EMPTY,
    "collins_b/notes.txt": P.R_NOT_IMAGE,
    "collins_b/noise.png": P.R_NO_FACE,
    "collins_b/pair.jpg": P.R_SEVERAL,
    "loner/h.jpg": P.R_FEW,
    "stray.jpg": P.R_OUTSIDE,
}


def _need_dlib() -> None:
    """Skips unless dlib and its 68-point predictor are installed (requirements-data.txt)."""
    pytest.importorskip("dlib")
    try:
        L.find_predictor()
    except L.MissingDependency as e:
        pytest.skip(str(e))


def make_input(root: Path) -> Path:
    """Two identities made from the photo (flips, crops, colour and format changes), a one-image
    identity, and files that must be skipped."""
    bgr = cv2.imread(str(PHOTO))
    assert bgr is not None and bgr.shape == (256, 256, 3)
    a, b, loner = root / "collins", root / "collins_b", root / "loner"
    for d in (a, b, loner):
        d.mkdir(parents=True)
    cv2.imwrite(str(a / "a.jpg"), bgr)
    cv2.imwrite(str(a / "b_mirror.png"), bgr[:, ::-1])
    rgba = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])
    rgba[:, :24, 3] = 0  # a transparent strip
    cv2.imwrite(str(a / "c_rgba.png"), rgba)
    # Stored turned a quarter to the left, with the EXIF tag saying "turn right to view".
    write_exif_jpeg(a / "d_exif.jpg", cv2.cvtColor(cv2.rotate(bgr, cv2.ROTATE_90_COUNTERCLOCKWISE),
                                                   cv2.COLOR_BGR2RGB), 6)
    warm = np.clip(bgr[10:230, 16:240].astype(np.float32) * [0.8, 1.0, 1.25], 0, 255).astype(np.uint8)
    cv2.imwrite(str(b / "e_crop.jpg"), warm)
    cv2.imwrite(str(b / "f_grey.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(b / "g_16bit.png"), bgr.astype(np.uint16) * 200 + 5000)
    (b / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (b / "empty.jpg").write_bytes(b"")
    (b / "notes.txt").write_text("not a photo\n")
    cv2.imwrite(str(b / "noise.png"), np.random.default_rng(0).integers(0, 256, (240, 240, 3), np.uint8))
    cv2.imwrite(str(b / "pair.jpg"), np.concatenate([bgr, bgr[:, ::-1]], axis=1))
    cv2.imwrite(str(loner / "h.jpg"), bgr[:, ::-1])
    cv2.imwrite(str(root / "stray.jpg"), bgr)
    return root


def _read_skipped(out: Path) -> dict[str, tuple[str, str]]:
    with open(out / P.SKIPPED_NAME, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason", "detail"]
    return {r[0]: (r[1], r[2]) for r in rows[1:]}


def _journal(out: Path) -> dict[str, dict]:
    lines = (out / P.WORK_DIR / P.JOURNAL_NAME).read_text().splitlines()
    return {e["src"]: e for e in map(json.loads, lines)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return make_input(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def prepared(photos, tmp_path_factory):
    """One complete run (one worker, with TFRecords), shared by the read-only tests."""
    _need_dlib()
    out = tmp_path_factory.mktemp("prepared") / "ds"
    summary = P.prepare(photos, out, P.Settings(), workers=1, tfrecords=True, progress=False)
    return out, summary


# ----------------------------------------------------------------------------- without dlib

def test_mirror_confidence_formula():
    p = np.stack([np.linspace(10, 110, 68), np.linspace(20, 120, 68)], axis=1)  # extent S = 100
    same = L.mirror_confidence(p, p, 200, 200, tolerance=0.03)
    np.testing.assert_allclose(same.confidence, 1.0)
    q = p.copy()
    q[5, 0] += 6.0  # |p - q| = 6 -> r = 6 / (2 * 100) = 0.03 = tau -> exp(-1/2)
    q[7, 1] += 12.0  # r = 2 tau -> exp(-2)
    lm = L.mirror_confidence(p, q, 200, 200, tolerance=0.03)
    assert lm.confidence[5] == pytest.approx(np.exp(-0.5), rel=1e-2)
    assert lm.confidence[7] == pytest.approx(np.exp(-2.0), rel=1e-2)
    np.testing.assert_allclose(lm.points[5], p[5] + [3.0, 0.0])  # the mean of both predictions
    outside = L.mirror_confidence(p, p, 100, 200, tolerance=0.03)  # image only 100 px tall
    assert (outside.confidence[p[:, 1] > 99.5] == 0).all() and outside.agreement.min() == 1.0


def test_pixel_formats_become_8bit_rgb():
    grey16 = np.full((4, 5), 65535, np.uint16)
    assert preprocess.to_rgb8(grey16).shape == (4, 5, 3) and (preprocess.to_rgb8(grey16) == 255).all()
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0] = 255  # blue
    bgra[0, 0, 3] = 255  # opaque pixel; the others transparent -> mid-grey background
    rgb = preprocess.to_rgb8(bgra)
    assert rgb[0, 0].tolist() == [0, 0, 255] and rgb[1, 1].tolist() == [128, 128, 128]
    assert preprocess.to_rgb8(np.array([[[0, 0, 200]]], np.uint8)).tolist() == [[[200, 0, 0]]]  # BGR -> RGB


def test_output_names_avoid_clashes():
    names = P._output_names(["a.jpg", "a.PNG", "b.png", "v1/a.jpg"])
    assert names == {"a.jpg": "a_jpg.jpg", "a.PNG": "a_PNG.jpg", "b.png": "b.jpg", "v1/a.jpg": "v1/a.jpg"}


class _FakeLandmarker:
    """Stands in for dlib: given detections, each with the mean mirror agreement of its landmarks."""

    def __init__(self, faces: list[tuple[L.Detection, float]]):
        self.faces = faces

    def detect(self, rgb):
        return [d for d, _ in self.faces]  # largest first, as DlibLandmarker's

    def landmarks(self, rgb, det):
        agreement = dict((d, a) for d, a in self.faces)[det]
        ones = np.full(68, agreement)
        return L.FaceLandmarks(np.zeros((68, 2)), ones, ones, np.zeros(68))


def _box(left: float, side: float, score: float) -> L.Detection:
    return L.Detection(left, 0.0, left + side, side, score)


@pytest.mark.parametrize("faces, reason, kept", [
    ([], L.NO_FACE, None),
    ([(_box(0, 100, 1.0), 0.2)], L.NO_FACE, None),  # landmarks disagree with the mirror image
    ([(_box(0, 100, 1.0), 0.9), (_box(200, 80, 1.0), 0.9)], L.SEVERAL_FACES, None),  # 1.56x < 2x
    ([(_box(0, 100, 1.0), 0.9), (_box(200, 60, 1.0), 0.9)], None, 0),  # 2.8x: the background face
    ([(_box(0, 100, 0.2), 0.9), (_box(200, 90, 1.0), 0.9)], None, 200),  # a weak detection never wins
    ([(_box(0, 100, 0.2), 0.9), (_box(200, 90, 0.3), 0.9)], L.SEVERAL_FACES, None),  # two weak ones
    ([(_box(0, 100, 1.0), 0.9), (_box(10, 95, 1.0), 0.9)], None, 0),  # overlapping: one face
    ([(_box(0, 30, 1.0), 0.9)], L.FACE_TOO_SMALL, None),  # 30 px < min_face 40
])
def test_face_policy(faces, reason, kept):
    landmarker = _FakeLandmarker(faces)
    if reason is not None:
        with pytest.raises(L.FaceRejected) as e:
            L.choose_face(landmarker, None, P.Settings().face_policy())
        assert e.value.reason == reason and "\n" not in e.value.detail
        return
    det, _ = L.choose_face(landmarker, None)  # the default policy is data preparation's
    assert det.left == kept
    assert L.FacePolicy() == P.Settings().face_policy()


def test_bad_arguments_one_line_error(tmp_path, capsys):
    assert P.main(["--images", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a folder" in err
    (tmp_path / "empty").mkdir()
    assert P.main(["--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "empty" in err
    assert not (tmp_path / "o").exists()  # nothing written
    with pytest.raises(SystemExit) as e:
        P.main(["--images", str(tmp_path), "--out", str(tmp_path / "o"), "--size", "big"])
    assert e.value.code == 2 and "\n" not in capsys.readouterr().err.strip()


def test_missing_dlib_says_what_to_install(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now fails
    assert P.main(["--images", str(photos), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "requirements-data.txt" in err and "dlib-bin" in err
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(L.MissingDependency, match="face-recognition-models"):
        L.find_predictor()


def test_command_line_help_and_error():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "ringnet_tf.data.prepare", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "--min_images" in run.stdout and "--tfrecords" in run.stdout
    run = subprocess.run([sys.executable, "-m", "ringnet_tf.data.prepare", "--images", "/nonexistent/x",
                          "--out", "/tmp/never"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- with dlib

def test_detector_landmarks_inside_face_box():
    _need_dlib()
    rgb = cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)
    lm = P._landmarker(P.Settings())
    dets = lm.detect(rgb)
    assert len(dets) == 1 and dets[0].score > 0.5
    det = dets[0]
    face = lm.landmarks(rgb, det)
    m = 0.25 * det.size  # dlib's box runs brows to chin; the jaw line may leave it a little
    x, y = face.points[:, 0], face.points[:, 1]
    assert ((x > det.left - m) & (x < det.right + m) & (y > det.top - m) & (y < det.bottom + m)).all()
    assert face.confidence.min() > 0.5 and face.mean_agreement > 0.9


def _assert_ibug_layout(lm: np.ndarray) -> None:
    eyes_y = lm[36:48, 1].mean()
    assert eyes_y < lm[30, 1] < lm[48:68, 1].mean() < lm[8, 1], "eyes, nose tip, mouth, chin: top to bottom"
    assert lm[36:42, 0].mean() < lm[27:36, 0].mean() < lm[42:48, 0].mean(), "subject's right eye at image left"
    assert lm[17:22, 1].mean() < eyes_y, "brows above eyes"


def test_prepare_writes_dataset(prepared):
    out, summary = prepared
    records = D.read_manifest(out)
    assert {r.image for r in records} == {f"images/{k.rsplit('.', 1)[0]}.jpg" for k in KEPT}
    assert [(r.identity, r.image) for r in records] == sorted((r.identity, r.image) for r in records)
    assert summary.num_images == 7 and summary.num_identities == 2
    meta = D.read_meta(out)
    assert meta["source"] == "prepare" and meta["image_size"] == 256 and meta["num_images"] == 7
    assert meta["crop"]["scale"] == preprocess.CROP_SCALE
    journal = _journal(out)
    for r in records:
        image = cv2.imread(str(out / r.image))
        assert image.shape == (256, 256, 3)
        lm = r.landmarks
        assert lm.shape == (68, 3) and (lm[:, :2] > 0).all() and (lm[:, :2] < 255).all()
        assert (lm[:, 2] > 0.5).all() and (lm[:, 2] <= 1).all()
        _assert_ibug_layout(lm)
        # Back in the source photo, the landmarks lie in (or just around) the detector's box.
        entry = journal[next(k for k in journal if journal[k]["image"] == r.image)]
        to_source = cv2.invertAffineTransform(preprocess.Box(*entry["crop_box"]).affine(256))
        src = preprocess.transform_points(lm[:, :2], to_source)
        left, top, right, bottom, score = entry["face"]
        m = 0.25 * (right - left)
        assert (src[:, 0] > left - m).all() and (src[:, 0] < right + m).all()
        assert (src[:, 1] > top - m).all() and (src[:, 1] < bottom + m).all()
    # The mirrored copy's landmarks mirror the original's (same crop box side up to rounding).
    by_image = {r.image: r.landmarks for r in records}
    a, b = by_image["images/collins/a.jpg"], by_image["images/collins/b_mirror.jpg"]
    mirrored = a[list(C.IBUG68_MIRROR)]
    np.testing.assert_allclose(255.0 - b[:, 0], mirrored[:, 0], atol=4.0)
    np.testing.assert_allclose(b[:, 1], mirrored[:, 1], atol=4.0)


def test_skips_are_listed_with_reasons(prepared):
    out, summary = prepared
    skipped = _read_skipped(out)
    assert {k: v[0] for k, v in skipped.items()} == SKIPPED
    assert summary.skipped == {reason: list(SKIPPED.values()).count(reason) for reason in set(SKIPPED.values())}
    text = P.format_summary(summary, out)
    for reason in SKIPPED.values():
        assert reason in text
    assert not (out / "images" / "loner").exists()  # a dropped identity leaves no files


def test_tfrecords_round_trip(prepared, tmp_path):
    out, _ = prepared
    records = D.read_manifest(out)
    examples = list(D.iterate_tfrecords(out / D.TFRECORD_DIR))
    assert sorted(e["identity"].decode() for e in examples) == ["collins", "collins_b"]
    for ex in examples:
        for name, data in zip(ex["image_name"], ex["image"]):
            assert data == (out / name.decode()).read_bytes()
    back = D.tfrecords_to_directory(out / D.TFRECORD_DIR, tmp_path / "back")
    assert (back / D.MANIFEST_NAME).read_bytes() == (out / D.MANIFEST_NAME).read_bytes()
    assert len(D.read_manifest(back)) == len(records)


def test_several_faces_and_small_faces_policy():
    _need_dlib()
    bgr = cv2.imread(str(PHOTO))
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    # A second, much smaller face beside the subject does not matter (area ratio >= --face_ratio).
    canvas = np.full((256, 384, 3), 255, np.uint8)
    canvas[:, :256] = rgb
    canvas[:128, 256:384] = cv2.resize(rgb, (128, 128), interpolation=cv2.INTER_AREA)
    settings = P.Settings(min_face=20)
    dets = P._landmarker(settings).detect(canvas)
    small = [d for d in dets if d.left > 256]
    assert len(small) == 1 and small[0].score > 0.5  # the small face is found...
    det, _ = L.choose_face(P._landmarker(settings), canvas, settings.face_policy())
    assert det.left < 256 and det.size > 40 and det.score > 0.5  # ... and the subject kept
    # (at this scale dlib also fires on the suit's mission patch, as large as the face: a weak
    # detection, score 0.11, whose landmarks disagree with their mirror image.)
    # The face is 43 px wide at this size: --min_face 48 rejects it as too small.
    strict = P.Settings(min_face=48)
    with pytest.raises(L.FaceRejected) as e:
        L.choose_face(P._landmarker(strict), rgb, strict.face_policy())
    assert e.value.reason == P.R_SMALL


def test_resume_after_interruption(photos, prepared, tmp_path, monkeypatch):
    reference = prepared[0]
    out = tmp_path / "ds"
    real = P.worker.process_image  # what the run calls (P.process_image is a re-export)
    calls = []

    def interrupted(*args):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(args[2].rel)
        return real(*args)

    monkeypatch.setattr(P.worker, "process_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        P.prepare(photos, out, P.Settings(), workers=1, progress=False)
    assert not (out / D.MANIFEST_NAME).exists()  # unfinished: no manifest
    assert len(_journal(out)) == 5
    with open(out / P.WORK_DIR / P.JOURNAL_NAME, "a") as f:
        f.write('{"src": "collins/a.jp')  # a line torn by the interruption
    monkeypatch.setattr(P.worker, "process_image", real)

    summary = P.prepare(photos, out, P.Settings(), workers=1, progress=False)
    n = len(KEPT) + len(SKIPPED) - 1  # all files in identity folders
    assert (summary.reused, summary.computed) == (5, n - 5)
    for name in (D.MANIFEST_NAME, D.META_NAME, P.SKIPPED_NAME):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name

    # Delete one finished image: a rerun makes only that one again; the others are untouched.
    victim = out / "images/collins_b/f_grey.jpg"
    before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.jpg") if p != victim}
    victim.unlink()
    summary = P.prepare(photos, out, P.Settings(), workers=1, progress=False)
    assert (summary.reused, summary.computed) == (n, 1)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert (out / D.MANIFEST_NAME).read_bytes() == (reference / D.MANIFEST_NAME).read_bytes()
    assert victim.read_bytes() == (reference / "images/collins_b/f_grey.jpg").read_bytes()


def test_refuses_other_settings_unless_forced(photos, tmp_path):
    _need_dlib()
    out = tmp_path / "ds"
    out.mkdir()
    (out / "something.txt").write_text("not ours")
    with pytest.raises(P.PrepareError, match="not a prepare output"):
        P.prepare(photos, out, P.Settings(), progress=False)
    (out / "something.txt").unlink()
    P.prepare(photos, out, P.Settings(size=128, min_images=4), progress=False)
    with pytest.raises(P.PrepareError, match="size: 128 -> 256"):
        P.prepare(photos, out, P.Settings(), progress=False)
    assert (out / D.MANIFEST_NAME).exists()  # a refused run leaves the dataset alone
    # --min_images 4 kept only the identity with 4 images.
    assert {r.identity for r in D.read_manifest(out)} == {"collins"}
    assert _read_skipped(out)["collins_b/e_crop.jpg"][0] == P.R_FEW
    summary = P.prepare(photos, out, P.Settings(), force=True, progress=False)
    assert summary.reused == 0 and summary.num_images == len(KEPT)
    assert cv2.imread(str(out / "images/collins/a.jpg")).shape == (256, 256, 3)


def test_two_workers_same_dataset(photos, prepared, tmp_path):
    reference = prepared[0]
    out = tmp_path / "ds"
    P.prepare(photos, out, P.Settings(), workers=2, progress=False)
    for name in (D.MANIFEST_NAME, D.META_NAME, P.SKIPPED_NAME):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_one_run_at_a_time(photos, tmp_path):
    _need_dlib()
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "ds"
    (out / P.WORK_DIR).mkdir(parents=True)
    with open(out / P.WORK_DIR / "lock", "w") as held:  # as a running prepare holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(P.PrepareError, match="another prepare run"):
            P.prepare(photos, out, P.Settings(), progress=False)
