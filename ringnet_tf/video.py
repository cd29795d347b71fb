"""Video in and out for the demo: frames sampled from a clip (any format OpenCV's FFmpeg reads), and
an overlay video written frame by frame.

Frames are decoded in order and never held all at once: the demo keeps only each kept frame's crop
and box, and decodes the clip a second time to draw the overlay video.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg",
                            ".wmv", ".flv", ".3gp", ".ts", ".mts"})
# The overlay video: WebM / VP9 plays in every browser and in VLC, and OpenCV's wheels encode it.
OVERLAY_SUFFIX = ".webm"
OVERLAY_FOURCC = "VP90"


class VideoError(ValueError):
    """A clip that cannot be used; the message is one line naming it."""


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclasses.dataclass(frozen=True)
class ClipInfo:
    path: Path
    fps: float  # frames per second as the container says (25 when it says nothing usable)
    frame_count: int  # as the container says; 0 when unknown (some streams)
    width: int
    height: int


def open_clip(path: str | os.PathLike) -> tuple[cv2.VideoCapture, ClipInfo]:
    """Opens a clip and checks that its first frame decodes; raises VideoError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"{path}: cannot open as a video (corrupt, or a format OpenCV cannot read)")
    ok, frame = cap.read()
    if not ok or frame is None or frame.size == 0:
        cap.release()
        raise VideoError(f"{path}: no frame decodes (corrupt, empty, or an unsupported codec)")
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    info = ClipInfo(path, fps if 0 < fps < 1000 else 25.0, max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)),
                    frame.shape[1], frame.shape[0])
    return cap, info


def frames(path: str | os.PathLike, every: int = 1, max_frames: int | None = None
           ) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, [H, W, 3] uint8 RGB) for every `every`-th frame, at most `max_frames` of them.

    Raises VideoError when the clip cannot be opened or its first frame does not decode; a clip
    that stops decoding part way ends early (what decoded is kept).
    """
    if every < 1:
        raise ValueError(f"every must be at least 1; got {every}")
    cap, _ = open_clip(path)
    try:
        index = kept = 0
        while max_frames is None or kept < max_frames:
            if index % every == 0:
                ok, frame = cap.read()
                if not ok:
                    break
                kept += 1
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=frame)
            elif not cap.grab():  # skipped frames: demux only, no colour conversion
                break
            index += 1
    finally:
        cap.release()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silences the process's C-level stderr (OpenCV's FFmpeg backend prints there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class OverlayWriter:
    """Writes [H, W, 3] uint8 RGB frames to a video file; `close()` finishes it."""

    def __init__(self, path: str | os.PathLike, fps: float, width: int, height: int):
        self.path = Path(path)
        self.size = (int(width), int(height))
        with _quiet_stderr():  # FFmpeg's "tag ... not supported, fallback" notice: harmless
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*OVERLAY_FOURCC),
                                          float(fps), self.size)
        if not self.writer.isOpened():
            raise OSError(f"{self.path}: OpenCV cannot write {OVERLAY_FOURCC} video here")

    def write(self, rgb: np.ndarray) -> None:
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.writer.release()
