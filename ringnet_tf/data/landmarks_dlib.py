"""Face detection and the 68 iBUG landmarks with dlib, with a per-landmark confidence.

Optional dependencies (`pip install -r requirements-data.txt`): `dlib-bin` (dlib without a
compiler) and `face-recognition-models`, which ships dlib's 68-point predictor
`shape_predictor_68_face_landmarks.dat` (trained on iBUG 300-W). Nothing is downloaded at run time.

Detection
---------
dlib's HOG frontal face detector (frontal and moderately turned faces, roughly up to 45 degrees of
yaw). Its sliding window is about `DETECTOR_WINDOW` = 80 pixels, so it finds faces of about that
size and larger. To find faces down to `min_face` pixels, the image handed to the detector is
resized by `s = DETECTOR_WINDOW / min_face` (s = 2 for the default 40 px: dlib's usual single 2x
upsampling; s < 1 for min_face > 80, which makes detection faster), capped so that the resized
image has at most `MAX_DETECT_PIXELS` pixels (in very large photos the smallest findable face
then grows). Boxes are mapped back to the source image. A detection's size is the side of its box
(about brow-to-chin and ear-to-ear), in source pixels; its score is dlib's SVM margin (dlib's own
threshold is 0; real faces typically score 0.5 to 3).

Landmarks and their confidence
------------------------------
dlib's predictor gives 68 integer pixel positions and no confidence. We run it twice: on the image
in the detector's box (p), and on the horizontally mirrored image in the mirrored box, mapping the
result back (x -> W - 1 - x, landmark i -> `IBUG68_MIRROR[i]`) (q). A regression-tree predictor has
no reason to make the same mistake on a face and on its mirror image, while a well-determined
landmark comes out the same (up to the 1-pixel rounding). So, per landmark i:

    point_i = (p_i + q_i) / 2                                  (the stored landmark)
    S       = max(width, height) of the bounding box of the 68 points   (face size, as the crop)
    r_i     = |p_i - q_i| / (2 S)     (each prediction's distance to their mean, relative to S)
    c_i     = exp(-r_i^2 / (2 tau^2)) * inside_i

with tau = `DEFAULT_TOLERANCE` = 0.03 (3 % of the face size) and inside_i = 1 when point_i lies in
the source image (pixel centres at integers: -0.5 <= x <= W - 0.5, likewise y), else 0 (a point
outside the photo is the predictor's guess from the face shape alone, with no image evidence).
c_i = 0.61 at r_i = tau, 0.14 at 2 tau. The agreement term alone (without inside_i) is kept as
`FaceLandmarks.agreement`; its mean over the 68 points says how well the predictor's shape fits the
detection, which the several-faces policy uses to discard doubtful detections (`min_confidence`).

Measured on the NASA astronaut photo (tests/data; 256 to 800 px): the face gives r_i of 0 to 1 %
(c >= 0.88, mean 0.97 to 0.99); rotated 35 degrees in the image plane, mean 0.50 (the predictor is
unsure, as it should be); a false detection on the suit's mission patch (which dlib scores 0.05
to 0.35 in some framings) 0.27 to 0.73. So the mean agreement is no face/non-face test on its own;
the policy below combines it with the detector's score.

Which face (the several-faces policy, `choose_face`)
----------------------------------------------------
Used by data preparation (`ringnet_tf.data.prepare`, whose flags set `FacePolicy`) and the demo:
- detections: dlib's, scoring at least the landmarker's threshold (prepare's
  `--detector_threshold`; dlib's own 0); overlapping ones (IoU >= `DUPLICATE_IOU` = 0.5) are one
  face; at most the `MAX_CANDIDATES` = 5 largest are looked at;
- a detection is a face only if its landmarks agree with those of the mirror image: mean
  agreement (the confidence before the inside-the-image factor) at least `min_confidence`
  (0.4); none left: "no face";
- a face is clear if its detection score is at least `clear_score` (0.5), else weak. Weak faces
  never make an image ambiguous; they are only candidates when there is no clear face;
- the subject is the largest candidate (detector box area); if another candidate has more than
  1 / `face_ratio` (2) of its area, the image is rejected as "several faces" (ambiguous: an
  identity label may belong to either); smaller faces in the background do not matter;
- a subject whose box side is below `min_face` pixels (40): "face too small".
Why both tests: in 640 x 480 frames of the test photo, dlib also fires on the suit's mission patch,
as large as the face, scoring 0.05 to 0.35 (the face: 0.7 to 1.4) with a mirror agreement of 0.27
to 0.73 (the face: 0.98 to 0.99). The agreement test alone left 17 of 48 such frames "several
faces"; the score tier settles them all. The agreement test still decides among weak detections
when there is no clear face.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
from pathlib import Path

import cv2
import numpy as np

from flame import constants as C

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
INSTALL_HINT = ("pip install -r requirements-data.txt (dlib-bin for dlib, face-recognition-models "
                f"for {PREDICTOR_FILE})")
DETECTOR_WINDOW = 80.0  # pixels: the face size dlib's HOG frontal detector finds without resizing
MAX_DETECT_PIXELS = 4_000_000  # cap on the detector's (resized) image
DEFAULT_MIN_FACE = 40.0
DEFAULT_THRESHOLD = 0.0  # dlib's own detection threshold
DEFAULT_TOLERANCE = 0.03
_MIRROR = np.asarray(C.IBUG68_MIRROR)
# The several-faces policy (module docstring).
MAX_CANDIDATES = 5  # detections (largest first) whose landmarks are checked
DUPLICATE_IOU = 0.5  # detections overlapping this much are one face
DEFAULT_FACE_RATIO = 2.0
DEFAULT_MIN_CONFIDENCE = 0.4
DEFAULT_CLEAR_SCORE = 0.5
# Why no face is kept (data preparation's skip reasons).
NO_FACE = "no face"
SEVERAL_FACES = "several faces"
FACE_TOO_SMALL = "face too small"


class MissingDependency(ImportError):
    """dlib or the predictor file is not installed; the message says what to install."""


def _import_dlib():
    try:
        import dlib
    except ImportError:
        raise MissingDependency(f"dlib is not installed: {INSTALL_HINT}") from None
    return dlib


def find_predictor() -> Path:
    """The path of the 68-point predictor shipped by `face-recognition-models`.

    Found by path first, without importing the package (its __init__ needs pkg_resources, which
    recent setuptools no longer provides); then through the package's own function.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None:
        for folder in spec.submodule_search_locations or []:
            path = Path(folder) / "models" / PREDICTOR_FILE
            if path.is_file():
                return path
        try:
            import face_recognition_models

            path = Path(face_recognition_models.pose_predictor_model_location())
            if path.is_file():
                return path
        except Exception:  # noqa: BLE001 - any failure means "not usable"
            pass
    raise MissingDependency(f"{PREDICTOR_FILE} not found: {INSTALL_HINT}, or pass its path")


def check_installed(predictor_path: str | os.PathLike | None = None) -> Path:
    """Raises MissingDependency (saying what to install) unless dlib and the predictor are there;
    returns the predictor's path. Cheap: loads neither model."""
    _import_dlib()
    path = Path(predictor_path) if predictor_path else find_predictor()
    if not path.is_file():
        raise MissingDependency(f"{path}: predictor file not found")
    return path


def dlib_version() -> str:
    return str(getattr(_import_dlib(), "__version__", "unknown"))


@dataclasses.dataclass(frozen=True)
class Detection:
    """A detector box in source-image pixels (pixel centres at integers) and dlib's score."""

    left: float
    top: float
    right: float
    bottom: float
    score: float

    @property
    def size(self) -> float:
        return max(self.right - self.left, self.bottom - self.top)

    @property
    def area(self) -> float:
        return max(0.0, self.right - self.left) * max(0.0, self.bottom - self.top)

    def iou(self, other: "Detection") -> float:
        w = min(self.right, other.right) - max(self.left, other.left)
        h = min(self.bottom, other.bottom) - max(self.top, other.top)
        inter = max(0.0, w) * max(0.0, h)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class FaceLandmarks:
    """points [68, 2] (source pixels); confidence [68] in [0, 1]; agreement [68] (the confidence
    before the inside-the-image factor); disagreement [68] (r_i, relative to the face size)."""

    points: np.ndarray
    confidence: np.ndarray
    agreement: np.ndarray
    disagreement: np.ndarray

    @property
    def mean_agreement(self) -> float:
        return float(self.agreement.mean())

    def as_array(self) -> np.ndarray:
        """[68, 3] (x, y, confidence), the dataset format's landmark rows."""
        return np.concatenate([self.points, self.confidence[:, None]], axis=1)


def detection_scale(height: int, width: int, min_face: float) -> float:
    """Resize factor of the detector's image (see the module docstring)."""
    s = DETECTOR_WINDOW / float(min_face)
    cap = math.sqrt(MAX_DETECT_PIXELS / float(height * width))
    return min(s, cap)


def mirror_confidence(p: np.ndarray, q: np.ndarray, height: int, width: int,
                      tolerance: float = DEFAULT_TOLERANCE) -> FaceLandmarks:
    """The landmarks and their confidence from two predictions of the same 68 points (p on the
    image, q from the mirror image already mapped back), as defined in the module docstring."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    points = (p + q) / 2.0
    extent = float((points.max(axis=0) - points.min(axis=0)).max())
    r = np.linalg.norm(p - q, axis=1) / (2.0 * max(extent, 1e-6))
    agreement = np.exp(-0.5 * (r / tolerance) ** 2)
    inside = ((points[:, 0] >= -0.5) & (points[:, 0] <= width - 0.5)
              & (points[:, 1] >= -0.5) & (points[:, 1] <= height - 0.5))
    return FaceLandmarks(points, agreement * inside, agreement, r)


class DlibLandmarker:
    """dlib's HOG face detector and 68-point predictor, loaded once (about 1 s, 100 MB)."""

    def __init__(self, predictor_path: str | os.PathLike | None = None,
                 min_face: float = DEFAULT_MIN_FACE, threshold: float = DEFAULT_THRESHOLD,
                 tolerance: float = DEFAULT_TOLERANCE):
        path = check_installed(predictor_path)
        dlib = _import_dlib()
        self._dlib = dlib
        self.predictor_path = path
        self.detector = dlib.get_frontal_face_detector()
        try:
            self.predictor = dlib.shape_predictor(str(path))
        except RuntimeError as e:
            raise MissingDependency(f"{path}: not a dlib shape predictor ({e})") from None
        self.min_face = float(min_face)
        self.threshold = float(threshold)
        self.tolerance = float(tolerance)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an [H, W, 3] uint8 RGB image, largest first (ties: higher score first)."""
        h, w = rgb.shape[:2]
        s = detection_scale(h, w, self.min_face)
        image = rgb
        if abs(s - 1.0) > 1e-3:
            image = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))),
                               interpolation=cv2.INTER_LINEAR if s > 1 else cv2.INTER_AREA)
            s_x, s_y = image.shape[1] / w, image.shape[0] / h
        else:
            s_x = s_y = 1.0
        rects, scores, _ = self.detector.run(image, 0, self.threshold)

        def back(v, k):  # resized-image pixel -> source pixel (pixel centres at integers)
            return (v + 0.5) / k - 0.5

        dets = [Detection(back(r.left(), s_x), back(r.top(), s_y), back(r.right(), s_x),
                          back(r.bottom(), s_y), float(sc)) for r, sc in zip(rects, scores)]
        dets.sort(key=lambda d: (-d.area, -d.score, d.left, d.top))
        return dets

    def _predict(self, image: np.ndarray, rect) -> np.ndarray:
        shape = self.predictor(image, rect)
        return np.array([(pt.x, pt.y) for pt in shape.parts()], np.float64)

    def landmarks(self, rgb: np.ndarray, det: Detection) -> FaceLandmarks:
        """68 landmarks in the detection's box, with the mirror-agreement confidence."""
        h, w = rgb.shape[:2]
        dlib = self._dlib
        l, t, r, b = (int(round(v)) for v in (det.left, det.top, det.right, det.bottom))
        p = self._predict(rgb, dlib.rectangle(l, t, r, b))
        # Mirror only a window around the face (one box side of margin, more than the predictor
        # looks at): a mirrored copy of a whole 8000 x 8000 photo would cost 190 MB.
        side = max(r - l, b - t, 1)
        r0, r1 = max(0, t - side), min(h, b + side + 1)
        c0, c1 = max(0, l - side), min(w, r + side + 1)
        mirrored = np.ascontiguousarray(rgb[r0:r1, c0:c1][:, ::-1])
        # Source column x is column c1 - 1 - x of the mirrored window; rows shift by r0.
        q = self._predict(mirrored, dlib.rectangle(c1 - 1 - r, t - r0, c1 - 1 - l, b - r0))
        q[:, 0] = c1 - 1 - q[:, 0]
        q[:, 1] += r0
        q = q[_MIRROR]
        return mirror_confidence(p, q, h, w, self.tolerance)


@functools.lru_cache(maxsize=1)
def default_landmarker() -> DlibLandmarker:
    """One DlibLandmarker with the default settings per process (loading its model takes about a
    second and 100 MB; the demo's and the evaluations' detectors share it)."""
    return DlibLandmarker()


# ----------------------------------------------------------------------------- which face

class Rejected(Exception):
    """An image left out: reason (a short code, as recorded in data preparation's skipped.csv) and
    a one-line detail. `FaceRejected` is the face policy's verdict; data preparation's `Skip` is a
    file's other fates (unreadable, misplaced, ...): one exception caught, one way of recording."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


class FaceRejected(Rejected):
    """No face to keep under the policy. reason: NO_FACE, SEVERAL_FACES or FACE_TOO_SMALL;
    detail: one line of numbers saying why (naming data preparation's flags)."""


@dataclasses.dataclass(frozen=True)
class FacePolicy:
    """The several-faces policy's settings (module docstring); data preparation's flags of the
    same names. min_face: pixels of the detector box's side."""

    min_face: float = DEFAULT_MIN_FACE
    face_ratio: float = DEFAULT_FACE_RATIO
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    clear_score: float = DEFAULT_CLEAR_SCORE


def choose_face(landmarker: DlibLandmarker, rgb: np.ndarray,
                policy: FacePolicy = FacePolicy()) -> tuple[Detection, FaceLandmarks]:
    """The subject's face in an [H, W, 3] uint8 RGB photo under the several-faces policy (module
    docstring): its detection and landmarks. Raises FaceRejected."""
    detections = landmarker.detect(rgb)
    if not detections:
        raise FaceRejected(NO_FACE, "no detection")
    faces: list[tuple[Detection, FaceLandmarks]] = []
    best_rejected = None
    for det in detections[:MAX_CANDIDATES]:
        if any(det.iou(f[0]) >= DUPLICATE_IOU for f in faces):
            continue
        lm = landmarker.landmarks(rgb, det)
        if lm.mean_agreement >= policy.min_confidence:
            faces.append((det, lm))
        elif best_rejected is None or lm.mean_agreement > best_rejected:
            best_rejected = lm.mean_agreement
    if not faces:
        raise FaceRejected(NO_FACE, f"{len(detections)} detection(s), landmarks unreliable (mean "
                                    f"agreement {best_rejected:.2f} < --min_confidence "
                                    f"{policy.min_confidence:g})")
    clear = [f for f in faces if f[0].score >= policy.clear_score]
    candidates = clear or faces  # still largest first
    det, lm = candidates[0]
    if len(candidates) > 1 and det.area < policy.face_ratio * candidates[1][0].area:
        raise FaceRejected(SEVERAL_FACES, f"{len(candidates)} faces, the largest only "
                                          f"{det.area / candidates[1][0].area:.2f}x the next in area "
                                          f"(--face_ratio {policy.face_ratio:g})")
    if det.size < policy.min_face:
        raise FaceRejected(FACE_TOO_SMALL, f"{det.size:.0f} px < --min_face {policy.min_face:g}")
    return det, lm
