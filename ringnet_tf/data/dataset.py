"""The ring dataset format: a folder of images with a manifest, and its sharded-TFRecord twin.

A dataset directory holds:
- `manifest.csv`: one row per image: `image` (path relative to the directory, `/`-separated),
  `identity`, then the 68 iBUG landmarks as `x0, y0, c0, ..., x67, y67, c67`: pixels of the stored
  image (x right, y down, origin at the top-left pixel's centre) and a confidence in [0, 1]
  (0 = absent).
- `dataset.json`: metadata (format version, counts, what produced it, image size, and for
  synthetic data the head model's fingerprint).
- the images (JPEG or PNG, RGB), usually `images/<identity>/<name>`.
- optional `ground_truth.npz` (synthetic data): per-image rows in manifest order
  (`image`, `shape` [N, S], `expression` [N, E], `pose` [N, 15], `cam` [N, 3], and optionally
  `landmarks3d` [N, 68, 3]: the 68 landmarks in 3D, x and y in the stored image's pixels as in the
  manifest, z the depth towards the camera in pixels of the same scale, origin arbitrary, hidden
  landmarks included; the convention of 300W-LP-style 3D labels) and per-identity neutral meshes
  (`neutral_identity` [I], `neutral_vertices` [I, V, 3] float32). Every key is optional: training
  uses `shape` and `landmarks3d` for the supervised losses when a dataset has them; a row of NaN
  marks one image without that label (a dataset mixing labelled and unlabelled images).

The TFRecord form (`tfrecords/shard-XXXXX-of-YYYYY.tfrecord` plus `dataset.json`) holds the same
data with one `tf.train.Example` per identity (all its images, their bytes untouched), so a
stream of records yields whole identities and a ring can be drawn without random access.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flame import constants as C
from flame.fileutil import atomic_write, staged_dir

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.csv"
META_NAME = "dataset.json"
GROUND_TRUTH_NAME = "ground_truth.npz"
TFRECORD_DIR = "tfrecords"
# Per-image ground-truth keys and where they live in a TFRecord example.
GT_IMAGE_KEYS = ("shape", "expression", "pose", "cam", "landmarks3d")
# Per-image ground truth that is not a flat vector: its row shape (TFRecords store it flattened).
GT_ROW_SHAPES = {"landmarks3d": (C.NUM_LANDMARKS, 3)}
_HEADER = ["image", "identity"] + [f"{a}{i}" for i in range(C.NUM_LANDMARKS) for a in "xyc"]


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message is one line naming the file."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True, eq=False)
class Record:
    """One image of a dataset. landmarks: [68, 3] float32 (x, y, confidence), stored-image pixels."""

    image: str
    identity: str
    landmarks: np.ndarray


def write_manifest(dataset_dir: str | os.PathLike, records: Iterable[Record]) -> Path:
    """Writes `manifest.csv` atomically (landmarks with 3 decimals: 1/1000 pixel)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_HEADER)
    for r in records:
        lm = np.asarray(r.landmarks, np.float64).reshape(C.NUM_LANDMARKS, 3)
        writer.writerow([r.image, r.identity] + [f"{v:.3f}" for v in lm.ravel()])
    return atomic_write(Path(dataset_dir) / MANIFEST_NAME, lambda f: f.write(buf.getvalue().encode()))


def read_manifest(dataset_dir: str | os.PathLike, check_images: bool = True) -> list[Record]:
    """Reads and validates `manifest.csv`; errors name the file and the line."""
    path = Path(dataset_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DatasetError(path, "missing: not a dataset directory (no manifest)")
    records = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != _HEADER:
            raise DatasetError(path, f"header is not the dataset format's (image, identity, x0, y0, c0, ...)")
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(_HEADER):
                raise DatasetError(path, f"line {line_no}: {len(row)} columns, expected {len(_HEADER)}")
            try:
                lm = np.array(row[2:], np.float32).reshape(C.NUM_LANDMARKS, 3)
            except ValueError:
                raise DatasetError(path, f"line {line_no}: landmark values are not numbers") from None
            if not np.isfinite(lm).all() or (lm[:, 2] < 0).any() or (lm[:, 2] > 1).any():
                raise DatasetError(path, f"line {line_no}: landmarks must be finite with confidences in [0, 1]")
            if not row[0] or not row[1]:
                raise DatasetError(path, f"line {line_no}: empty image path or identity")
            if check_images and not (path.parent / row[0]).is_file():
                raise DatasetError(path, f"line {line_no}: image {row[0]} does not exist")
            records.append(Record(row[0], row[1], lm))
    return records


def group_by_identity(records: list[Record]) -> dict[str, list[int]]:
    """identity -> indices of its records, identities in sorted order, images in manifest order."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.identity, []).append(i)
    return dict(sorted(groups.items()))


def write_meta(dataset_dir: str | os.PathLike, meta: dict[str, Any]) -> Path:
    meta = {"format_version": FORMAT_VERSION, **meta}
    return atomic_write(Path(dataset_dir) / META_NAME,
                        lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True).encode()))


def read_meta(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(dataset_dir) / META_NAME
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(path, "missing: not a dataset directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"not valid JSON ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(path, f"format_version {meta.get('format_version')!r}; this code reads {FORMAT_VERSION}")
    return meta


def write_ground_truth(dataset_dir: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Writes `ground_truth.npz` (see the module docstring for the keys)."""
    def write(f):
        np.savez_compressed(f, **arrays)
    return atomic_write(Path(dataset_dir) / GROUND_TRUTH_NAME, write)


def read_ground_truth(dataset_dir: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The ground-truth arrays, or None for a dataset without them (real photos)."""
    path = Path(dataset_dir) / GROUND_TRUTH_NAME
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise DatasetError(path, f"unreadable ground truth ({e})") from None


# ----------------------------------------------------------------------------- TFRecords

def _shard_name(i: int, n: int) -> str:
    return f"shard-{i:05d}-of-{n:05d}.tfrecord"


def write_tfrecords(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                    num_shards: int | None = None) -> Path:
    """Converts a dataset directory to sharded TFRecords (one example per identity).

    Identities go round-robin over the shards in sorted order; image bytes are copied, not
    re-encoded. Writes the folder `out_dir` (default `<dataset_dir>/tfrecords`), which must be new
    or empty, whole or not at all (built in a hidden sibling, `fileutil.staged_dir`). Returns the
    output folder (with its own `dataset.json`).
    """
    import tensorflow as tf

    src = Path(dataset_dir)
    out = Path(out_dir) if out_dir is not None else src / TFRECORD_DIR
    records = read_manifest(src)
    meta = read_meta(src)
    gt = read_ground_truth(src)
    groups = group_by_identity(records)
    if num_shards is None:
        num_shards = max(1, min(64, len(groups) // 100))
    num_shards = max(1, min(num_shards, len(groups)))
    if out.exists() and any(out.glob("shard-*.tfrecord")):
        raise DatasetError(out, "already holds TFRecord shards; remove them or choose another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(out, "exists and is not an empty folder; choose a new folder")
    neutral = {}
    if gt is not None and "neutral_vertices" in gt:
        neutral = {str(k): i for i, k in enumerate(gt["neutral_identity"])}
    gt_dims = {}
    if gt is not None:
        gt_dims = {k: int(np.prod(gt[k].shape[1:])) for k in GT_IMAGE_KEYS if k in gt}
        if neutral:
            gt_dims["neutral_vertices"] = int(np.prod(gt["neutral_vertices"].shape[1:]))

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32).ravel()))

    def byte_list(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

    with staged_dir(out) as staging, contextlib.ExitStack() as writers_open:
        writers = [tf.io.TFRecordWriter(str(staging / _shard_name(i, num_shards))) for i in range(num_shards)]
        for w in writers:
            writers_open.callback(w.close)  # closed before the folder is renamed or removed
        for n, (identity, idx) in enumerate(groups.items()):
            feats = {
                "identity": byte_list([identity.encode()]),
                "row": tf.train.Feature(int64_list=tf.train.Int64List(value=idx)),
                "image_name": byte_list([records[i].image.encode() for i in idx]),
                "image": byte_list([(src / records[i].image).read_bytes() for i in idx]),
                "landmarks": floats([records[i].landmarks for i in idx]),
            }
            if gt is not None:
                for key in GT_IMAGE_KEYS:
                    if key in gt:
                        feats[f"gt/{key}"] = floats(gt[key][idx])
                if identity in neutral:
                    feats["gt/neutral_vertices"] = floats(gt["neutral_vertices"][neutral[identity]])
            example = tf.train.Example(features=tf.train.Features(feature=feats))
            writers[n % num_shards].write(example.SerializeToString())
        writers_open.close()
        write_meta(staging, {**{k: v for k, v in meta.items() if k != "format_version"},
                             "tfrecords": {"num_shards": num_shards, "num_identities": len(groups),
                                           "num_images": len(records), "ground_truth": gt_dims}})
    return out


def tfrecord_files(tfrecord_dir: str | os.PathLike) -> list[Path]:
    """The shard files of a TFRecord dataset, checked against its metadata."""
    folder = Path(tfrecord_dir)
    meta = read_meta(folder)
    info = meta.get("tfrecords")
    if not info:
        raise DatasetError(folder / META_NAME, "describes no TFRecords (no 'tfrecords' entry)")
    files = [folder / _shard_name(i, info["num_shards"]) for i in range(info["num_shards"])]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DatasetError(folder, f"missing shards: {', '.join(missing[:3])}")
    return files


def parse_identity_example(serialized, gt_dims: dict[str, int] | None = None) -> dict[str, Any]:
    """Parses one identity example (TF). Returns identity [], row [K] (manifest rows), image_name [K], image [K] (bytes),
    landmarks [K, 68, 3] float32, and gt/<key> [K, dim] (gt/neutral_vertices [V*3]) when present."""
    import tensorflow as tf

    spec = {
        "identity": tf.io.FixedLenFeature([], tf.string),
        "row": tf.io.VarLenFeature(tf.int64),
        "image_name": tf.io.VarLenFeature(tf.string),
        "image": tf.io.VarLenFeature(tf.string),
        "landmarks": tf.io.VarLenFeature(tf.float32),
    }
    for key in gt_dims or {}:
        spec[f"gt/{key}"] = tf.io.VarLenFeature(tf.float32)
    ex = tf.io.parse_single_example(serialized, spec)
    out = {"identity": ex["identity"], "row": tf.sparse.to_dense(ex["row"])}
    for key in ("image_name", "image"):
        out[key] = tf.sparse.to_dense(ex[key], default_value=b"")
    out["landmarks"] = tf.reshape(tf.sparse.to_dense(ex["landmarks"]), [-1, C.NUM_LANDMARKS, 3])
    for key, dim in (gt_dims or {}).items():
        dense = tf.sparse.to_dense(ex[f"gt/{key}"])
        out[f"gt/{key}"] = dense if key == "neutral_vertices" else tf.reshape(dense, [-1, dim])
    return out


def iterate_tfrecords(tfrecord_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every identity example of a TFRecord dataset as NumPy values, shard by shard."""
    import tensorflow as tf

    files = tfrecord_files(tfrecord_dir)
    gt_dims = read_meta(tfrecord_dir)["tfrecords"].get("ground_truth", {})
    for raw in tf.data.TFRecordDataset([str(f) for f in files]):
        ex = parse_identity_example(raw, gt_dims)
        yield {k: v.numpy() for k, v in ex.items()}


def tfrecords_to_directory(tfrecord_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """The inverse of `write_tfrecords`: images, manifest, metadata and ground truth back in a folder."""
    out = Path(out_dir)
    if (out / MANIFEST_NAME).exists():
        raise DatasetError(out, "already holds a dataset; choose an empty folder")
    meta = read_meta(tfrecord_dir)
    info = meta.pop("tfrecords")
    rows: list[tuple[int, Record, dict[str, np.ndarray]]] = []
    neutral: dict[str, np.ndarray] = {}
    for ex in iterate_tfrecords(tfrecord_dir):
        identity = ex["identity"].decode()
        for k, (name, data) in enumerate(zip(ex["image_name"], ex["image"])):
            name = name.decode()
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise DatasetError(tfrecord_dir, f"image name {name!r} leaves the dataset folder")
            atomic_write(out / name, lambda f, d=data: f.write(d))
            gt_row = {key: ex[f"gt/{key}"][k] for key in GT_IMAGE_KEYS if f"gt/{key}" in ex}
            rows.append((int(ex["row"][k]), Record(name, identity, ex["landmarks"][k]), gt_row))
        if "gt/neutral_vertices" in ex:
            neutral[identity] = ex["gt/neutral_vertices"].reshape(-1, 3)
    rows.sort(key=lambda r: r[0])  # the original manifest order
    write_manifest(out, [r[1] for r in rows])
    if info.get("ground_truth"):
        arrays: dict[str, np.ndarray] = {"image": np.array([r[1].image for r in rows])}
        for key in GT_IMAGE_KEYS:
            if key in info["ground_truth"]:
                arrays[key] = np.stack([r[2][key] for r in rows])
                if key in GT_ROW_SHAPES:
                    arrays[key] = arrays[key].reshape(-1, *GT_ROW_SHAPES[key])
        if neutral:
            ids = sorted(neutral)
            arrays["neutral_identity"] = np.array(ids)
            arrays["neutral_vertices"] = np.stack([neutral[i] for i in ids]).astype(np.float32)
        write_ground_truth(out, arrays)
    write_meta(out, {k: v for k, v in meta.items() if k != "format_version"})
    return out
