"""What a preparation run is: its settings (recorded with the dataset), the names it writes in
--out, its skip reasons, its errors, and the records it passes between its parts."""
from __future__ import annotations

import dataclasses

from ringnet_tf import preprocess
from ringnet_tf.data import dataset as D
from ringnet_tf.data import landmarks_dlib as L

# Bump when a change alters per-image results: an --out prepared by another version is refused.
ALGORITHM_VERSION = 1
WORK_DIR = ".prepare"
SETTINGS_NAME = "settings.json"
JOURNAL_NAME = "journal.jsonl"
SKIPPED_NAME = "skipped.csv"
IMAGES_DIR = "images"
# What a run owns in --out (what --force deletes).
OWNED = (D.MANIFEST_NAME, D.META_NAME, SKIPPED_NAME, D.TFRECORD_DIR, IMAGES_DIR, WORK_DIR)

# Skip reasons (the `reason` column of skipped.csv).
R_OUTSIDE = "not in an identity folder"
R_EMPTY = "empty file"
R_NOT_IMAGE = "not an image"
R_UNREADABLE = "unreadable image"
R_NO_FACE = L.NO_FACE
R_SEVERAL = L.SEVERAL_FACES
R_SMALL = L.FACE_TOO_SMALL
R_CLASH = "output name clash"
R_ERROR = "processing error"
R_FEW = "too few images in identity"


class PrepareError(RuntimeError):
    """A problem with the arguments or the output folder; the message is one line."""

    exit_code = 2


class NothingKept(PrepareError):
    """Every file was skipped (skipped.csv says why)."""

    exit_code = 1


class Skip(L.Rejected):
    """One source file left out for a reason other than the face policy's (`L.FaceRejected`, the
    demo's too): unreadable, misplaced, a name clash, ...; reason is an R_* above."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that shapes the dataset (recorded in `.prepare/settings.json` and dataset.json)."""

    size: int = 256
    crop_scale: float = preprocess.CROP_SCALE
    min_face: float = L.DEFAULT_MIN_FACE
    face_ratio: float = L.DEFAULT_FACE_RATIO
    min_confidence: float = L.DEFAULT_MIN_CONFIDENCE
    clear_score: float = L.DEFAULT_CLEAR_SCORE
    detector_threshold: float = L.DEFAULT_THRESHOLD
    tolerance: float = L.DEFAULT_TOLERANCE
    jpeg_quality: int = 95
    min_images: int = 2
    predictor: str = ""  # path of the dlib predictor file; "" = the one face-recognition-models ships

    def face_policy(self) -> L.FacePolicy:
        """The several-faces policy these settings choose (`landmarks_dlib.choose_face`)."""
        return L.FacePolicy(min_face=self.min_face, face_ratio=self.face_ratio,
                            min_confidence=self.min_confidence, clear_score=self.clear_score)

    def check(self) -> None:
        """Raises PrepareError naming the first flag out of range."""
        problems = []
        if self.size < 32:
            problems.append(f"--size must be at least 32 (got {self.size})")
        if self.crop_scale <= 0:
            problems.append(f"--crop_scale must be positive (got {self.crop_scale})")
        if self.min_face < 8:
            problems.append(f"--min_face must be at least 8 pixels (got {self.min_face})")
        if self.face_ratio < 1:
            problems.append(f"--face_ratio must be at least 1 (got {self.face_ratio})")
        if not 0 <= self.min_confidence <= 1:
            problems.append(f"--min_confidence must be in [0, 1] (got {self.min_confidence})")
        if self.tolerance <= 0:
            problems.append(f"--tolerance must be positive (got {self.tolerance})")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"--jpeg_quality must be in 1..100 (got {self.jpeg_quality})")
        if self.min_images < 1:
            problems.append(f"--min_images must be at least 1 (got {self.min_images})")
        if problems:
            raise PrepareError(problems[0])


@dataclasses.dataclass(frozen=True)
class Source:
    """One input file of an identity folder."""

    rel: str  # path relative to --images, '/'-separated
    identity: str
    image: str  # output path relative to --out
    size: int
    mtime_ns: int


@dataclasses.dataclass
class Summary:
    """A run's counts (printed by the command line)."""

    num_files: int = 0
    num_images: int = 0
    num_identities: int = 0
    computed: int = 0
    reused: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
