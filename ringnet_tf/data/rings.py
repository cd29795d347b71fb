"""Ring batches in tf.data: R - 1 images of one identity and 1 of another, augmented in step.

A batch is a dict:
  images: [NB, R, S, S, 3] float32 in [-1, 1] (the shared preprocessing's normalisation);
  landmarks: [NB, R, 68, 3] float32: x, y in pixels of the S x S network input, confidence;
  landmarks3d: [NB, R, 68, 3] float32: the 3D landmark labels (x, y in network-input pixels, z
    depth in pixels), with has_landmarks3d [NB, R] 1 where the image has them, else 0;
  shape: [NB, R, S'] float32 true shape coefficients, with has_shape [NB, R] (0 also for a
    mirrored image); datasets without ground truth give zeros and weight 0 (S' = 1).

Ring sampling rule (documented once, tested): identities with fewer than `min_images` images
(default 2) never anchor a ring (they can still be the odd one out). Each epoch, every anchor
identity's images are shuffled and cut into groups of R - 1; a last short group, or an identity
with fewer than R - 1 images, is filled by drawing its own images again (each copy gets its own
augmentation). Each group gets one image of another identity, drawn uniformly among all images
of the other identities. The rings of an epoch are then shuffled. Everything follows from
(seed, epoch), so the stream is deterministic and resumable from a ring position without replay.

Sharding rule (several workers, `Shard`): the ring stream is the same on every worker; global
batch b is rings [b * NB, (b + 1) * NB) of it, and input pipeline p of P (one per worker) takes the
p-th contiguous block of NB / P of them, cut into per-replica batches. So P workers train exactly
the rings one worker would, each ring once per step; the other rings are dropped by index before
anything is read or decoded.

Augmentation (the same affine map for pixels and landmarks): scale, translation, rotation,
horizontal flip (landmark order mirrored), and colour jitter. It runs inside tf.data, outside the
compiled train step (image warps have no XLA CPU kernel).
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from flame import constants as C
from ringnet_tf import preprocess
from ringnet_tf.data import dataset as D


@dataclasses.dataclass(frozen=True)
class RingConfig:
    ring_size: int = 6  # R: the paper's value
    rings_per_batch: int = 2  # NB
    image_size: int = 224  # S, the network input
    min_images: int = 2
    seed: int = 0
    augment: bool = True
    max_scale: float = 0.1  # relative zoom in [-max_scale, +max_scale]
    max_shift: float = 0.06  # translation, fraction of the image side
    max_rotation_deg: float = 15.0
    flip_probability: float = 0.5
    max_brightness: float = 0.15  # colour jitter, in [0, 1] image units
    max_contrast: float = 0.2
    max_saturation: float = 0.2

    def __post_init__(self) -> None:
        if self.ring_size < 3:
            raise ValueError(f"ring_size must be at least 3 (R - 1 >= 2 images of one identity); got {self.ring_size}")
        if self.rings_per_batch < 1:
            raise ValueError(f"rings_per_batch must be at least 1; got {self.rings_per_batch}")
        if self.min_images < 1:
            raise ValueError(f"min_images must be at least 1; got {self.min_images}")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Input pipeline `index` of `count` (module docstring: sharding rule), batches of `batch` rings
    (the per-replica batch; NB / count must be a multiple of it)."""

    index: int
    count: int
    batch: int

    def block(self, rings_per_batch: int) -> int:
        """Rings of each global batch that this pipeline takes (NB / count); checks the sizes."""
        if not 0 <= self.index < self.count or rings_per_batch % self.count:
            raise ValueError(f"rings_per_batch {rings_per_batch} cannot be split into {self.count} "
                             f"input pipelines (pipeline {self.index})")
        block = rings_per_batch // self.count
        if self.batch < 1 or block % self.batch:
            raise ValueError(f"{block} rings per pipeline is not a multiple of the per-replica batch {self.batch}")
        return block

    def keeps(self, ring_index: tf.Tensor, rings_per_batch: int) -> tf.Tensor:
        """[] bool: whether the ring of this global index belongs to this pipeline."""
        block = self.block(rings_per_batch)
        return tf.equal((ring_index % rings_per_batch) // block, self.index)


def _shard_and_batch(rings: tf.data.Dataset, config: RingConfig, batch: bool,
                     shard: Shard | None) -> tf.data.Dataset:
    """(global index, ring) elements -> this pipeline's ring dicts, decoded and (if `batch`)
    batched: NB rings a batch, or the shard's per-replica batch. A ring is a dict of R rows:
    "path" (manifest form) or "data" (encoded image bytes), "landmarks" and `LABEL_KEYS`. Rings of
    other pipelines are dropped before anything is read.

    Each ring is split into its R images, which are read, decoded and augmented by one function
    (traced once, not once per ring position, and run in parallel) and then grouped again."""
    size = config.rings_per_batch
    if shard is not None:
        rings = rings.filter(lambda index, ring: shard.keeps(index, config.rings_per_batch))
        size = shard.batch
    r_size = config.ring_size

    def members(index, ring):
        # Image `pos` of ring `index` draws its augmentation from seed (seed, index * R + pos).
        seeds = tf.stack([tf.fill([r_size], tf.cast(config.seed, tf.int64)),
                          index * r_size + tf.range(r_size, dtype=tf.int64)], axis=1)
        return tf.data.Dataset.from_tensor_slices({**ring, "seed": seeds})

    ds = (rings.flat_map(members)
          .map(lambda member: _load_member(member, config), num_parallel_calls=tf.data.AUTOTUNE,
               deterministic=True)
          .batch(r_size, drop_remainder=True))
    if batch:
        ds = ds.batch(size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)


class RingSampler:
    """Ring index sampling over a manifest's identities (NumPy, deterministic per epoch)."""

    def __init__(self, identities: list[str], config: RingConfig, source: str = "dataset"):
        self.config = config
        ids = np.asarray(identities)
        names, inverse = np.unique(ids, return_inverse=True)
        self.groups = [np.flatnonzero(inverse == k) for k in range(len(names))]
        self.anchors = [k for k, g in enumerate(self.groups) if len(g) >= config.min_images]
        if len(self.groups) < 2:
            raise ValueError(f"{source}: {len(self.groups)} identity; rings need at least 2")
        if not self.anchors:
            raise ValueError(f"{source}: no identity has {config.min_images} images (min_images)")
        self.identity_of = inverse
        self.num_images = len(ids)
        per_ring = config.ring_size - 1
        self.rings_per_epoch = sum(math.ceil(len(self.groups[k]) / per_ring) for k in self.anchors)

    def epoch(self, epoch: int) -> np.ndarray:
        """[rings_per_epoch, R] int64 image indices; the last column is the odd one out."""
        cfg = self.config
        per_ring = cfg.ring_size - 1
        rng = np.random.default_rng([cfg.seed, epoch])
        rings = []
        for k in self.anchors:
            members = rng.permutation(self.groups[k])
            n_rings = math.ceil(len(members) / per_ring)
            fill = n_rings * per_ring - len(members)
            if fill:
                members = np.concatenate([members, rng.choice(self.groups[k], fill, replace=True)])
            for r in range(n_rings):
                # Odd one out: uniform over the images of all other identities.
                while True:
                    odd = int(rng.integers(self.num_images))
                    if self.identity_of[odd] != k:
                        break
                rings.append(np.concatenate([members[r * per_ring:(r + 1) * per_ring], [odd]]))
        rings = np.stack(rings)
        return rings[rng.permutation(len(rings))]

    def stream(self, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Endless (global ring index, [R] indices), starting at ring `start` of the whole stream."""
        epoch, offset = divmod(start, self.rings_per_epoch)
        while True:
            rings = self.epoch(epoch)
            for i in range(offset, len(rings)):
                yield epoch * self.rings_per_epoch + i, rings[i]
            epoch, offset = epoch + 1, 0


# ----------------------------------------------------------------------------- augmentation

# NumPy, not a tf.constant: an eager tensor at import would set TensorFlow up before a
# MultiWorkerMirroredStrategy can configure its collectives.
_MIRROR = np.asarray(C.IBUG68_MIRROR, np.int32)


def _affine_params(config: RingConfig, seed: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Random scale, shift (x, y), rotation (rad) and flip for one image, from a stateless seed."""
    if not config.augment:
        return tf.constant(1.0), tf.zeros([2]), tf.constant(0.0), tf.constant(False)
    u = tf.random.stateless_uniform([5], seed=seed, minval=-1.0, maxval=1.0)
    scale = 1.0 + config.max_scale * u[0]
    shift = config.max_shift * u[1:3]
    angle = math.radians(config.max_rotation_deg) * u[3]
    flip = (u[4] + 1.0) / 2.0 < config.flip_probability
    return scale, shift, angle, flip


def _warp_matrix(src_size: tf.Tensor, out_size: int, scale, shift, angle, flip) -> tf.Tensor:
    """[3, 3] map from stored-image pixels to network-input pixels (pixel centres at integers)."""
    src_size = tf.cast(src_size, tf.float32)  # [H, W]
    c_src = (src_size - 1.0) / 2.0
    c_out = (out_size - 1.0) / 2.0
    s = scale * out_size / tf.reduce_max(src_size)
    cos, sin = tf.cos(angle) * s, tf.sin(angle) * s
    sign = tf.where(flip, -1.0, 1.0)
    # out = R * S * F * (p - c_src) + c_out + shift * out_size
    a = tf.stack([cos * sign, -sin, sin * sign, cos])
    tx = c_out + shift[0] * out_size - (a[0] * c_src[1] + a[1] * c_src[0])
    ty = c_out + shift[1] * out_size - (a[2] * c_src[1] + a[3] * c_src[0])
    return tf.stack([[a[0], a[1], tx], [a[2], a[3], ty], [0.0, 0.0, 1.0]])


def augment_image(image: tf.Tensor, landmarks: tf.Tensor, config: RingConfig,
                  seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Warps one stored image to the network input and moves its landmarks the same way.

    Args:
      image: [H, W, 3] uint8; landmarks: [68, 3] (x, y, confidence) in its pixels;
      seed: [2] int32/int64 stateless seed.
    Returns:
      image [S, S, 3] float32 in [-1, 1]; landmarks [68, 3] in network-input pixels.
    """
    out = _augment(image, landmarks, tf.zeros([C.NUM_LANDMARKS, 3]), config, seed)
    return out[0], out[1]


def _augment(image: tf.Tensor, landmarks: tf.Tensor, landmarks3d: tf.Tensor, config: RingConfig,
             seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """`augment_image`, also moving 3D landmarks [68, 3] (x, y pixels, z depth in pixels: the
    dataset's convention) and returning whether the image was mirrored ([] bool).

    The warp is a similarity of the image plane (and a mirror), so 3D points follow it exactly:
    x, y as the 2D landmarks, z scaled by the warp's scale (a rotation about the viewing axis and a
    mirror in x leave depth alone); a mirror also swaps left and right landmarks.
    """
    size = config.image_size
    scale, shift, angle, flip = _affine_params(config, seed)
    m = _warp_matrix(tf.shape(image)[:2], size, scale, shift, angle, flip)
    warped = preprocess.warp(tf.cast(image, tf.float32), m, size)
    # 2D and 3D landmarks side by side: one map, one mirror reordering.
    both = tf.concat([landmarks[:, :2], landmarks3d[:, :2]], axis=0)
    moved = both @ tf.transpose(m[:2, :2]) + m[:2, 2]
    xy, xy3 = moved[:C.NUM_LANDMARKS], moved[C.NUM_LANDMARKS:]
    z3 = landmarks3d[:, 2:] * tf.sqrt(tf.abs(tf.linalg.det(m[:2, :2])))
    joined = tf.concat([xy, landmarks[:, 2:], xy3, z3], axis=-1)  # [68, 6]
    joined = tf.cond(flip, lambda: tf.gather(joined, _MIRROR), lambda: joined)
    lm, lm3 = joined[:, :3], joined[:, 3:]
    # Landmarks pushed out of the frame by the augmentation carry no usable signal.
    inside = tf.reduce_all((xy >= 0.0) & (xy <= size - 1.0), axis=-1)
    inside = tf.cond(flip, lambda: tf.gather(inside, _MIRROR), lambda: inside)
    lm = tf.concat([lm[:, :2], lm[:, 2:] * tf.cast(inside, tf.float32)[:, None]], axis=-1)
    pixels = warped / 255.0
    if config.augment:
        c = tf.random.stateless_uniform([3], seed=seed + 1, minval=-1.0, maxval=1.0)
        pixels = pixels + config.max_brightness * c[0]
        mean = tf.reduce_mean(pixels, axis=[0, 1], keepdims=True)
        pixels = (pixels - mean) * (1.0 + config.max_contrast * c[1]) + mean
        gray = tf.reduce_mean(pixels, axis=-1, keepdims=True)
        pixels = (pixels - gray) * (1.0 + config.max_saturation * c[2]) + gray
        pixels = tf.clip_by_value(pixels, 0.0, 1.0)
    return preprocess.normalise(pixels * 255.0), lm, lm3, flip


def _decode(data: tf.Tensor) -> tf.Tensor:
    """data: [] string, an encoded image file. Returns [H, W, 3] uint8 RGB: the pixels the demo and
    the data preparation read (EXIF orientation applied, alpha over grey, 16-bit scaled)."""
    # preprocess's decoder, not tf.io.decode_image (no EXIF, no alpha): one decoder; speed within noise (train_speed.py).
    image = tf.numpy_function(lambda b: preprocess.decode_image(b, "<ring image>"), [data], tf.uint8,
                              stateful=False)
    image.set_shape([None, None, 3])
    return image


# ----------------------------------------------------------------------------- datasets

def ring_dataset(dataset_dir: str | os.PathLike, config: RingConfig, start_ring: int = 0,
                 batch: bool = True, shard: Shard | None = None) -> tf.data.Dataset:
    """Endless ring batches from a dataset directory (manifest form), from ring `start_ring` on.

    Resuming after N batches: pass start_ring = N * rings_per_batch for the same stream (global
    ring indices, also with a `shard`: this input pipeline's part of each global batch).
    """
    records = D.read_manifest(dataset_dir)
    sampler = RingSampler([r.identity for r in records], config, str(Path(dataset_dir) / D.MANIFEST_NAME))
    paths = tf.constant([str(Path(dataset_dir) / r.image) for r in records])
    landmarks = tf.constant(np.stack([r.landmarks for r in records]), tf.float32)
    labels = manifest_labels(dataset_dir, records)
    r_size = config.ring_size

    def ring_indices():
        for index, ring in sampler.stream(start_ring):
            yield index, ring

    rings = tf.data.Dataset.from_generator(
        ring_indices, output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([r_size], tf.int64)))

    def gather(index, ring):
        return index, {"path": tf.gather(paths, ring), "landmarks": tf.gather(landmarks, ring),
                       **{k: tf.gather(v, ring) for k, v in labels.items()}}

    return _shard_and_batch(rings.map(gather), config, batch, shard)


LABEL_KEYS = ("landmarks3d", "has_landmarks3d", "shape", "has_shape")


def manifest_labels(dataset_dir: str | os.PathLike, records: list[D.Record]) -> dict[str, tf.Tensor]:
    """The optional 3D labels of a manifest-form dataset, one row per record (see `labels_of`)."""
    gt = D.read_ground_truth(dataset_dir) or {}
    n = len(records)
    if gt and "image" in gt:
        row = {str(name): i for i, name in enumerate(gt["image"])}
        order = np.array([row.get(r.image, -1) for r in records])
        if (order < 0).any():
            missing = records[int(np.flatnonzero(order < 0)[0])].image
            raise D.DatasetError(Path(dataset_dir) / D.GROUND_TRUTH_NAME, f"has no row for {missing}")
        gt = {k: v[order] for k, v in gt.items() if k in ("landmarks3d", "shape")}
    return labels_of(gt.get("landmarks3d"), gt.get("shape"), n)


def labels_of(landmarks3d, shape, n) -> dict[str, tf.Tensor]:
    """Per-image 3D labels with their presence: landmarks3d [n, 68, 3] and has_landmarks3d [n],
    shape [n, S] (S = 1 when absent) and has_shape [n]. Absent labels are zeros with weight 0: a
    whole key missing (None), or single rows of NaN (a dataset mixing labelled and unlabelled
    images, e.g. renders with 3D landmarks and photos without). n: an int or a [] tensor."""
    zeros = tf.zeros([n], tf.float32)
    out = {"landmarks3d": tf.zeros([n, C.NUM_LANDMARKS, 3], tf.float32), "has_landmarks3d": zeros,
           "shape": tf.zeros([n, 1], tf.float32), "has_shape": zeros}

    def present(values, row_shape):
        values = tf.reshape(tf.cast(values, tf.float32), [n, *row_shape])
        finite = tf.math.is_finite(values)
        row_ok = tf.reduce_all(tf.reshape(finite, [n, -1]), axis=1)
        return tf.where(finite, values, tf.zeros_like(values)), tf.cast(row_ok, tf.float32)

    if landmarks3d is not None:
        out["landmarks3d"], out["has_landmarks3d"] = present(landmarks3d, [C.NUM_LANDMARKS, 3])
    if shape is not None:
        out["shape"], out["has_shape"] = present(shape, [-1])
    return out


def _load_member(member: dict[str, tf.Tensor], config: RingConfig) -> dict[str, tf.Tensor]:
    """One image of a ring, read ("path") or given ("data"), decoded and augmented with its
    "seed"; `LABEL_KEYS` rows. A mirrored image keeps its 3D landmarks (mirrored with it) but not
    its shape label: the mirror image of a face is not the face of its coefficients."""
    data = tf.io.read_file(member["path"]) if "path" in member else member["data"]
    image, lm, lm3, flip = _augment(_decode(data), member["landmarks"], member["landmarks3d"],
                                    config, member["seed"])
    return {"images": image, "landmarks": lm, "landmarks3d": lm3,
            "has_landmarks3d": member["has_landmarks3d"], "shape": member["shape"],
            "has_shape": member["has_shape"] * (1.0 - tf.cast(flip, tf.float32))}


def ring_dataset_tfrecords(tfrecord_dir: str | os.PathLike, config: RingConfig, start_ring: int = 0,
                           batch: bool = True, shuffle_buffer: int = 256,
                           shard: Shard | None = None) -> tf.data.Dataset:
    """Endless ring batches streamed from the TFRecord form (one example per identity).

    Stream rule: identity records are read from the shards and shuffled (buffer `shuffle_buffer`,
    seeded), records with fewer than `min_images` images are dropped, and consecutive records are
    paired (A, B), a pair of one identity with itself being dropped: A yields ceil(K_A / (R - 1)) rings of its images (a short last group filled by
    drawing A's images again) and each ring's odd one out is a random image of B. No random access:
    rings come from a stream. Deterministic for a seed; `start_ring` skips rings before decoding.
    """
    files = [str(f) for f in D.tfrecord_files(tfrecord_dir)]
    gt_dims = D.read_meta(tfrecord_dir)["tfrecords"].get("ground_truth", {})
    per_ring = config.ring_size - 1
    records = (tf.data.TFRecordDataset(files).repeat()
               .shuffle(shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
               .map(lambda raw: D.parse_identity_example(raw, gt_dims))
               .map(lambda ex: {"image": ex["image"], "landmarks": ex["landmarks"],
                                "identity": ex["identity"],
                                "count": tf.shape(ex["image"], out_type=tf.int64)[0],
                                **labels_of(ex.get("gt/landmarks3d"), ex.get("gt/shape"),
                                            tf.shape(ex["image"])[0])})
               .filter(lambda ex: ex["count"] >= config.min_images)
               .padded_batch(2, drop_remainder=True)  # pads the shorter identity; counts say where
               # Across the repeat, one identity can meet itself: such a pair makes no ring.
               .filter(lambda pair: pair["identity"][0] != pair["identity"][1])
               .enumerate())

    def rings_of_pair(pair_index, pair):
        a_images, b_images = pair["image"][0], pair["image"][1]
        a_lms, b_lms = pair["landmarks"][0], pair["landmarks"][1]
        k_a, k_b = pair["count"][0], pair["count"][1]
        n_rings = (k_a + per_ring - 1) // per_ring
        seed = tf.stack([tf.cast(config.seed, tf.int64), pair_index])
        order = tf.argsort(tf.random.stateless_uniform([k_a], seed=seed))
        fill = tf.random.stateless_uniform([n_rings * per_ring], seed=seed + 1, maxval=k_a, dtype=tf.int64)
        members = tf.concat([tf.cast(order, tf.int64), fill], 0)[:n_rings * per_ring]
        members = tf.reshape(members, [n_rings, per_ring])
        odd = tf.random.stateless_uniform([n_rings, 1], seed=seed + 2, maxval=k_b, dtype=tf.int64)
        def pick(key):
            return tf.concat([tf.gather(pair[key][0], members), tf.gather(pair[key][1], odd)], 1)

        return tf.data.Dataset.from_tensor_slices({
            "data": tf.concat([tf.gather(a_images, members), tf.gather(b_images, odd)], 1),
            "landmarks": tf.concat([tf.gather(a_lms, members), tf.gather(b_lms, odd)], 1),
            **{key: pick(key) for key in LABEL_KEYS}})

    rings = records.flat_map(rings_of_pair).skip(start_ring).enumerate(start=start_ring)
    return _shard_and_batch(rings, config, batch, shard)


def dataset_form(path: str | os.PathLike) -> str:
    """"manifest" or "tfrecords": how a dataset directory is read (the one rule, for training's
    checks and for reading). A manifest wins; a folder without one is the TFRecord form if its
    dataset.json describes TFRecords; anything else is taken as a manifest folder, whose reader
    then names what is missing."""
    path = Path(path)
    if (path / D.MANIFEST_NAME).exists() or not (path / D.META_NAME).exists():
        return "manifest"
    try:
        return "tfrecords" if D.read_meta(path).get("tfrecords") else "manifest"
    except ValueError:  # an unreadable dataset.json: the manifest reader reports the folder
        return "manifest"


def open_rings(path: str | os.PathLike, config: RingConfig, start_ring: int = 0,
               shard: Shard | None = None) -> tf.data.Dataset:
    """Ring batches from a dataset directory, in its form (`dataset_form`)."""
    if dataset_form(path) == "manifest":
        return ring_dataset(path, config, start_ring, shard=shard)
    return ring_dataset_tfrecords(path, config, start_ring, shard=shard)
