"""Turns identity folders of photos into a ring dataset: faces found, landmarked, cropped.

    python -m ringnet_tf.data.prepare --images DIR --out DIR [--size 256] [--workers N] [--tfrecords]

Input: `DIR/<identity>/<image>` (VGGFace2's layout); files deeper in an identity's folder belong to
it too (`DIR/<identity>/<video>/<frame>`, as frames extracted from VoxCeleb2). Any format OpenCV
decodes; every image becomes 8-bit RGB: grey is repeated over the channels, 16-bit and float images
are scaled to 8 bits, an alpha channel is composited over mid-grey (128, zero after the model's
normalisation), and a JPEG's EXIF orientation is applied (OpenCV does it when decoding a JPEG).

Per image (in parallel over `--workers` processes, each with its own dlib):
1. faces: dlib's HOG detector and 68-point predictor (`landmarks_dlib`, where the per-landmark
   confidence is defined: agreement of the predictions on the image and on its mirror image).
2. which face: the several-faces policy `landmarks_dlib.choose_face` (defined in that module's
   docstring; `--detector_threshold`, `--min_confidence`, `--clear_score`, `--face_ratio` and
   `--min_face` set it). Images it rejects are skipped as "no face", "several faces" or
   "face too small".
3. crop: `preprocess.box_from_landmarks` (the model's loose crop, `--crop_scale`) resampled to
   `--size` pixels (default 256: the same box as the model's 224 input, with resolution to spare
   for training's scale augmentation); landmarks mapped into the crop's pixels.
After all images: identities with fewer than `--min_images` kept images are dropped.

Output (`--out`):
- the dataset format of `ringnet_tf.data.dataset`: `images/<identity>/<name>.jpg`, `manifest.csv`
  (sorted by identity, then image path, whatever the number of workers), `dataset.json`
  (source "prepare", counts, image size, crop, landmark and confidence settings, skip counts);
  with `--tfrecords` also `tfrecords/` (`dataset.write_tfrecords`);
- `skipped.csv`: `path` (relative to --images), `reason`, `detail`, one row per file left out.
  Reasons: "not in an identity folder", "empty file", "not an image", "unreadable image",
  "no face", "several faces", "face too small", "output name clash", "processing error",
  "too few images in identity";
- `.prepare/`: the run's settings, a journal of finished images (for resuming) and a lock (one
  run at a time per --out).

Resuming: every finished image is appended to `.prepare/journal.jsonl` (its crop is written
atomically first). Rerunning the same command skips images already in the journal (unless the
source file's size or modification time changed, or it met a processing error) and gives the same
dataset, byte for byte. An
`--out` prepared from other `--images` or with other settings is refused unless `--force`, which
deletes what an earlier run wrote there. The derived files (manifest, metadata, skipped.csv,
TFRecords) are removed when a run starts and written at its end, the manifest last but for the
TFRecords: a folder without `manifest.csv` is an unfinished run.

The parts: `settings` (the settings, names, skip reasons and errors), `scan` (the input folder),
`worker` (one image, and the pool), `journal` (finished images, for resuming), `output` (the
--out folder: checks, lock, the dataset's files), `run` (`prepare`, the whole run) and `cli`
(`main`, the command line).
"""
from ringnet_tf.data.prepare.settings import (ALGORITHM_VERSION, IMAGES_DIR, JOURNAL_NAME, OWNED,
                                              R_CLASH, R_EMPTY, R_ERROR, R_FEW, R_NO_FACE,
                                              R_NOT_IMAGE, R_OUTSIDE, R_SEVERAL, R_SMALL,
                                              R_UNREADABLE, SETTINGS_NAME, SKIPPED_NAME, WORK_DIR,
                                              NothingKept, PrepareError, Settings, Skip, Source,
                                              Summary)
from ringnet_tf.data.prepare.scan import _output_names, scan
from ringnet_tf.data.prepare.worker import _landmarker, crop_face, process_image, read_rgb
from ringnet_tf.data.prepare.journal import Result, load_journal
from ringnet_tf.data.prepare.output import check_output, open_output
from ringnet_tf.data.prepare.run import prepare
from ringnet_tf.data.prepare.cli import build_parser, default_workers, format_summary, main

__all__ = ["ALGORITHM_VERSION", "IMAGES_DIR", "JOURNAL_NAME", "OWNED", "R_CLASH", "R_EMPTY", "R_ERROR",
           "R_FEW", "R_NO_FACE", "R_NOT_IMAGE", "R_OUTSIDE", "R_SEVERAL", "R_SMALL", "R_UNREADABLE",
           "SETTINGS_NAME", "SKIPPED_NAME", "WORK_DIR", "NothingKept", "PrepareError", "Result",
           "Settings", "Skip", "Source", "Summary", "build_parser", "check_output", "crop_face",
           "default_workers", "format_summary", "load_journal", "main", "open_output", "prepare",
           "process_image", "read_rgb", "scan"]
