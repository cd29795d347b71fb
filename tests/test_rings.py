"""Ring sampling invariants, augmentation that moves landmarks with pixels, determinism, resume."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import tensorflow as tf

from flame import constants as C
from ringnet_tf.data.rings import RingConfig, RingSampler, augment_image, ring_dataset
from tests.conftest import make_tiny_dataset, write_exif_jpeg

IDENTITIES = ["a"] * 7 + ["b"] * 3 + ["c"] * 1 + ["d"] * 5


def test_rings_hold_one_identity_and_one_other():
    cfg = RingConfig(ring_size=4, min_images=2)
    sampler = RingSampler(IDENTITIES, cfg)
    ids = np.asarray(IDENTITIES)
    rings = sampler.epoch(0)
    assert rings.shape == (sampler.rings_per_epoch, 4)
    for ring in rings:
        assert len(set(ids[ring[:-1]])) == 1 and ids[ring[-1]] != ids[ring[0]]
    anchors = set(ids[rings[:, 0]])
    assert anchors == {"a", "b", "d"}  # "c" has 1 < min_images image: never an anchor
    # Every image of an anchor identity appears in its rings each epoch.
    members = set(rings[:, :-1].ravel())
    assert all(i in members for i, name in enumerate(IDENTITIES) if name != "c")
    # ceil(7/3) + ceil(3/3) + ceil(5/3) rings
    assert sampler.rings_per_epoch == 3 + 1 + 2


def test_sampling_is_deterministic_and_resumable():
    cfg = RingConfig(ring_size=3, seed=7)
    a, b = RingSampler(IDENTITIES, cfg), RingSampler(IDENTITIES, cfg)
    np.testing.assert_array_equal(a.epoch(3), b.epoch(3))
    assert not np.array_equal(a.epoch(0), a.epoch(1))
    stream = a.stream()
    full = [next(stream) for _ in range(30)]
    resumed = a.stream(start=17)
    for index, ring in full[17:]:
        i, r = next(resumed)
        assert i == index and np.array_equal(r, ring)


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="at least 3.*got 2"):
        RingConfig(ring_size=2)
    with pytest.raises(ValueError, match="at least 2"):
        RingSampler(["a", "a", "a"], RingConfig())


def _dot_image(points: np.ndarray, size: int = 128) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    for x, y in points:
        cv2.circle(image, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)
    return image


@pytest.mark.parametrize("seed", range(6))
def test_landmarks_move_with_the_pixels(seed):
    cfg = RingConfig(image_size=96, max_rotation_deg=25, max_shift=0.05, max_scale=0.15,
                     max_brightness=0, max_contrast=0, max_saturation=0)
    rng = np.random.default_rng(seed)
    points = rng.uniform(30, 98, (3, 2))
    lm = np.zeros((68, 3), np.float32)
    lm[:3, :2], lm[:3, 2] = points, 1.0
    img, out = augment_image(tf.constant(_dot_image(points)), tf.constant(lm), cfg,
                             tf.constant([seed, 1], tf.int64))
    img, out = img.numpy(), out.numpy()
    bright = (img[..., 0] + 1) / 2 > 0.5
    # Each dot's centroid (near its landmark) sits at the transformed landmark.
    for x, y, c in out[out[:, 2] > 0]:
        ys, xs = np.nonzero(bright[int(y) - 5:int(y) + 6, int(x) - 5:int(x) + 6])
        assert len(xs) > 3
        assert abs(xs.mean() + int(x) - 5 - x) < 0.8 and abs(ys.mean() + int(y) - 5 - y) < 0.8


def test_flip_mirrors_positions_and_landmark_order():
    cfg = RingConfig(image_size=64, flip_probability=1.0, max_scale=0, max_shift=0,
                     max_rotation_deg=0, max_brightness=0, max_contrast=0, max_saturation=0)
    lm = np.zeros((68, 3), np.float32)
    lm[:, 0] = np.linspace(5, 58, 68)
    lm[:, 1] = 20
    lm[:, 2] = np.linspace(0.1, 1.0, 68)
    _, out = augment_image(tf.zeros((64, 64, 3), tf.uint8), tf.constant(lm), cfg, tf.constant([0, 0]))
    out = out.numpy()
    mirror = np.asarray(C.IBUG68_MIRROR)
    np.testing.assert_allclose(out[:, 0], 63 - lm[mirror, 0], atol=1e-4)
    np.testing.assert_allclose(out[:, 2], lm[mirror, 2])


def test_ring_dataset_batches_are_deterministic_and_resume(tmp_path):
    make_tiny_dataset(tmp_path, IDENTITIES)
    cfg = RingConfig(ring_size=4, rings_per_batch=2, image_size=32, seed=3)
    first = [b for b in ring_dataset(tmp_path, cfg).take(5)]
    assert first[0]["images"].shape == (2, 4, 32, 32, 3)
    assert first[0]["landmarks"].shape == (2, 4, 68, 3)
    assert float(tf.reduce_min(first[0]["images"])) >= -1 and float(tf.reduce_max(first[0]["images"])) <= 1
    again = [b for b in ring_dataset(tmp_path, cfg).take(5)]
    resumed = [b for b in ring_dataset(tmp_path, cfg, start_ring=3 * 2).take(2)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["images"].numpy(), b["images"].numpy())
    for a, b in zip(first[3:], resumed):
        np.testing.assert_array_equal(a["images"].numpy(), b["images"].numpy())
        np.testing.assert_array_equal(a["landmarks"].numpy(), b["landmarks"].numpy())


def test_tfrecord_stream_gives_rings_of_one_identity_plus_another(tmp_path):
    # Identities are told apart by their landmarks here: each identity's x coordinates are its index.
    from ringnet_tf.data import dataset as D
    from ringnet_tf.data.rings import open_rings
    make_tiny_dataset(tmp_path, IDENTITIES)
    records = D.read_manifest(tmp_path)
    names = sorted(set(IDENTITIES))
    D.write_manifest(tmp_path, [D.Record(r.image, r.identity, np.concatenate(
        [np.full((68, 1), 10.0 + names.index(r.identity)), r.landmarks[:, 1:]], 1)) for r in records])
    tfr = D.write_tfrecords(tmp_path, num_shards=2)
    cfg = RingConfig(ring_size=3, rings_per_batch=2, image_size=48, seed=1, augment=False)
    batches = [b for b in open_rings(tfr, cfg).take(6)]
    assert batches[0]["images"].shape == (2, 3, 48, 48, 3)
    for b in batches:
        ident = np.round(b["landmarks"].numpy()[:, :, 0, 0]).astype(int)  # [NB, R]
        for ring in ident:
            assert ring[0] == ring[1] and ring[2] != ring[0]
            assert ring[0] != 10 + names.index("c")  # 1 image < min_images: never an anchor
    again = [b for b in open_rings(tfr, cfg).take(6)]
    resumed = [b for b in open_rings(tfr, cfg, start_ring=4).take(2)]
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["images"].numpy(), b["images"].numpy())
    for a, b in zip(batches[2:], resumed):
        np.testing.assert_array_equal(a["landmarks"].numpy(), b["landmarks"].numpy())


def _jitter_pair(seed: int, **colour) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """augment_image with and without colour jitter (the same seed: the same warp) of a mid-grey
    noise image; images in [0, 1] units. Returns (jittered, plain, its landmarks, plain landmarks)."""
    rng = np.random.default_rng(100 + seed)
    # Values in [0.3, 0.7]: the jitter bounds below never push a pixel out of [0, 1] (no clipping).
    image = tf.constant(rng.uniform(0.3 * 255, 0.7 * 255, (80, 72, 3)).astype(np.uint8))
    lm = np.concatenate([rng.uniform(10, 60, (68, 2)), np.ones((68, 1))], 1).astype(np.float32)
    cfg = RingConfig(image_size=64, **colour)
    plain_cfg = dataclasses.replace(cfg, max_brightness=0, max_contrast=0, max_saturation=0)
    seed_t = tf.constant([seed, 3], tf.int64)
    out = [augment_image(image, tf.constant(lm), c, seed_t) for c in (cfg, plain_cfg)]
    (img, lm_out), (plain, lm_plain) = [(i.numpy() / 2.0 + 0.5, l.numpy()) for i, l in out]
    return img, plain, lm_out, lm_plain


@pytest.mark.parametrize("seed", range(4))
def test_colour_jitter_stays_in_bounds_and_leaves_geometry_alone(seed):
    tol = 1e-5
    # Brightness: one shift of every channel of every pixel, at most max_brightness.
    img, plain, lm, lm_plain = _jitter_pair(seed, max_brightness=0.15, max_contrast=0, max_saturation=0)
    np.testing.assert_array_equal(lm, lm_plain)  # landmarks untouched by colour
    shift = img - plain
    assert np.ptp(shift) < tol and 1e-4 < abs(shift.mean()) <= 0.15 + tol
    # Contrast: deviations from the image's mean (per channel) scaled by 1 +- max_contrast.
    img, plain, lm, lm_plain = _jitter_pair(seed, max_brightness=0, max_contrast=0.2, max_saturation=0)
    np.testing.assert_array_equal(lm, lm_plain)
    mean = plain.mean(axis=(0, 1))
    np.testing.assert_allclose(img.mean(axis=(0, 1)), mean, atol=tol)
    factor = (img - mean) / np.where(np.abs(plain - mean) > 1e-2, plain - mean, np.nan)
    factor = factor[np.isfinite(factor)]
    assert np.ptp(factor) < 1e-3 and 1e-4 < abs(factor.mean() - 1) <= 0.2 + 1e-4
    # Saturation: each pixel's grey (the channels' mean) kept, its colour's distance from it
    # scaled by 1 +- max_saturation.
    img, plain, lm, lm_plain = _jitter_pair(seed, max_brightness=0, max_contrast=0, max_saturation=0.2)
    np.testing.assert_array_equal(lm, lm_plain)
    grey = plain.mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(img.mean(axis=-1, keepdims=True), grey, atol=tol)
    chroma = np.where(np.abs(plain - grey) > 1e-2, plain - grey, np.nan)
    factor = ((img - grey) / chroma)[np.isfinite(chroma)]
    assert np.ptp(factor) < 1e-3 and 1e-4 < abs(factor.mean() - 1) <= 0.2 + 1e-4


def test_colour_jitter_draws_differ_between_seeds_and_repeat_for_one():
    means = [(_jitter_pair(s)[0] - _jitter_pair(s)[1]).mean() for s in range(4)]
    assert len({round(m, 4) for m in means}) == 4  # every seed its own draw
    a, b = _jitter_pair(1)[0], _jitter_pair(1)[0]
    np.testing.assert_array_equal(a, b)  # stateless: the same seed, the same pixels


def _exif_rotated_jpeg(path, orientation: int = 6) -> None:
    """A 32 x 32 JPEG whose EXIF orientation tag says how to turn it for viewing (6: a quarter to
    the right). Smooth and asymmetric, so every turn and mirror of it is told apart."""
    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    rgb = np.stack([8 * x, 8 * y, 255 - 4 * (x + y)], -1)
    rgb[:10, :10] = (250, 250, 0)  # a block in one corner
    write_exif_jpeg(path, np.clip(rgb, 0, 255).astype(np.uint8), orientation)


@pytest.mark.parametrize("form", ["manifest", "tfrecords"])
def test_training_decodes_an_exif_rotated_jpeg_as_the_demo_does(tmp_path, form):
    from ringnet_tf import preprocess
    from ringnet_tf.data import dataset as D
    from ringnet_tf.data.rings import open_rings

    records = []
    for i, ident in enumerate(["a", "a", "b", "b"]):
        name = f"{ident}/{i}.jpg"
        (tmp_path / ident).mkdir(exist_ok=True)
        _exif_rotated_jpeg(tmp_path / name)
        records.append(D.Record(name, ident, np.tile(np.float32([16, 16, 1]), (68, 1))))
    D.write_manifest(tmp_path, records)
    D.write_meta(tmp_path, {"source": "test"})
    path = D.write_tfrecords(tmp_path, num_shards=1) if form == "tfrecords" else tmp_path
    # Without augmentation a 32 px image at a 32 px input is warped by the identity.
    cfg = RingConfig(ring_size=3, rings_per_batch=1, image_size=32, augment=False)
    images = next(iter(open_rings(path, cfg)))["images"].numpy()[0]  # [R, 32, 32, 3] in [-1, 1]
    demo = preprocess.read_image(tmp_path / records[0].image)
    stored = cv2.cvtColor(cv2.imread(str(tmp_path / records[0].image), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert np.abs(np.rot90(stored, -1).astype(int) - demo).max() <= 4  # the demo turns it right
    for image in images:
        np.testing.assert_allclose((image + 1) * 127.5, demo, atol=1.0)
        assert np.abs((image + 1) * 127.5 - stored).mean() > 40  # not the stored orientation
