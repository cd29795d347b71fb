"""The shared preprocessing: crop boxes, the affine map of pixels and points, the resampling paths
(OpenCV crop, training warp, export resize) agreeing, normalisation."""
import numpy as np
import pytest

from ringnet_tf import preprocess as P


def test_points_follow_pixels_through_the_crop():
    # A white dot at a known place must land where transform_points puts it.
    image = np.zeros((300, 400, 3), np.uint8)
    image[180:183, 250:253] = 255
    box = P.Box(cx=230.0, cy=160.0, size=120.0)
    out = P.crop(image, box, 224)
    dot = P.transform_points(np.array([[251.0, 181.0]]), box.affine(224))[0]
    ys, xs = np.nonzero(out[..., 0] > 128)
    assert abs(xs.mean() - dot[0]) < 1.0 and abs(ys.mean() - dot[1]) < 1.0


def test_box_from_landmarks_is_loose_and_square():
    lm = np.array([[100.0, 100.0, 1.0], [200.0, 250.0, 0.5]])
    box = P.box_from_landmarks(lm)
    assert box.size == pytest.approx(P.CROP_SCALE * 150)
    assert box.cx == pytest.approx(150) and box.cy < 175  # shifted up to keep the forehead
    with pytest.raises(ValueError, match="no area"):
        P.box_from_landmarks(np.ones((68, 2)))


def test_confidence_passes_through_and_centre_box_matches_ringnet():
    pts = P.transform_points(np.array([[10.0, 20.0, 0.3]]), P.Box(50, 50, 100).affine(224))
    assert pts[0, 2] == 0.3
    box = P.centre_box(300, 400)
    assert (box.cx, box.cy, box.size) == (199.5, 149.5, 400)
    # The whole image maps onto the whole crop: corners' pixel centres stay corners.
    corners = P.transform_points(np.array([[0.0, 0.0], [399.0, 399.0]]), P.Box(199.5, 199.5, 400).affine(224))
    np.testing.assert_allclose(corners, [[0.0, 0.0], [223.0, 223.0]], atol=0.3)


def test_normalise_numpy_and_tf():
    import tensorflow as tf
    img = np.array([[[0, 255, 51]]], np.uint8)
    np.testing.assert_allclose(P.normalise(img), [[[-1.0, 1.0, -0.6]]], atol=1e-6)
    np.testing.assert_allclose(P.normalise(tf.constant(img)).numpy(), [[[-1.0, 1.0, -0.6]]], atol=1e-6)
    every = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    np.testing.assert_array_equal(P.denormalise(P.normalise(every)), every)
    np.testing.assert_array_equal(P.denormalise(np.float32([[-1.5, 1.5, 0.0]])), [[0, 255, 128]])


def _smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """[height, width, 3] uint8: smooth colours (bilinear sampling of it is well defined)."""
    import cv2

    small = np.random.default_rng(seed).integers(0, 256, (6, 8, 3)).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _levels_apart(a, b) -> tuple[float, float]:
    """Largest and mean absolute difference, in levels of 0..255."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(d.max()), float(d.mean())


@pytest.mark.parametrize("hw, box, out", [
    ((48, 48), P.Box(23.5, 23.5, 48.0), 32),   # the whole image, shrunk 1.5x
    ((32, 32), P.Box(15.5, 15.5, 32.0), 48),   # enlarged
    ((36, 48), P.Box(23.5, 17.5, 48.0), 40),   # not square: edge replication above and below
    ((60, 60), P.Box(35.0, 22.0, 40.0), 32),   # off centre, partly outside the image
])
def test_training_warp_samples_as_crop(hw, box, out):
    # Two implementations by necessity (tf.data graph vs OpenCV on photos): the same map must
    # give the same pixels, up to OpenCV's fixed-point bilinear weights and its uint8 rounding.
    import tensorflow as tf

    image = _smooth_image(*hw)
    matrix = np.vstack([box.affine(out), [0.0, 0.0, 1.0]]).astype(np.float32)
    warped = P.warp(tf.constant(image, tf.float32), tf.constant(matrix), out).numpy()
    worst, mean = _levels_apart(warped, P.crop(image, box, out))
    assert worst <= 1.5 and mean <= 0.5, (worst, mean)


@pytest.mark.parametrize("side, out", [(32, 32), (32, 48), (40, 56)])
def test_export_resize_samples_as_crop_at_and_above_the_input_size(side, out):
    # The SavedModel's resize (antialiased, for clients' crops of any size) and `crop` of the
    # whole image agree where no shrinking happens; below the input size only the first blurs.
    import tensorflow as tf

    image = _smooth_image(side, side)
    resized = P.resize_to_input(tf.constant(image, tf.float32)[None], out)[0].numpy()
    worst, mean = _levels_apart(resized, P.crop(image, P.Box((side - 1) / 2, (side - 1) / 2, float(side)), out))
    assert worst <= (0.0 if side == out else 1.5) and mean <= 0.5, (worst, mean)


def _ringnet_demo_crop(img: np.ndarray, img_size: int) -> np.ndarray:
    """RingNet's demo preprocessing, step by step as its demo.py and util/image.py do it (without
    the final scaling to [-1, 1]): the reference `centre_box` + `crop` must reproduce."""
    import cv2

    if np.max(img.shape[:2]) != img_size:
        scale = float(img_size) / np.max(img.shape[:2])
    else:
        scale = 1.0
    center = np.round(np.array(img.shape[:2]) / 2).astype(int)[::-1]  # (x, y)
    new_size = np.floor(np.array(img.shape[0:2]) * scale).astype(int)
    scaled = cv2.resize(img, (int(new_size[1]), int(new_size[0])))
    factors = [new_size[1] / float(img.shape[1]), new_size[0] / float(img.shape[0])]
    center_scaled = np.round(center * factors).astype(int)
    margin = int(img_size / 2)
    padded = np.pad(scaled, ((margin,), (margin,), (0,)), mode="edge")
    start, end = center_scaled, center_scaled + 2 * margin  # centre + margin -/+ margin, padded
    return padded[start[1]:end[1], start[0]:end[0], :]


@pytest.mark.parametrize("height,width", [(300, 400), (301, 457), (224, 224), (100, 80), (1000, 333),
                                          (225, 223), (9, 999), (640, 480), (227, 3)])
@pytest.mark.parametrize("size", [224, 128])
def test_centre_box_crop_reproduces_ringnets_demo(height, width, size):
    rng = np.random.default_rng(height * 7 + width)
    # Smooth content plus noise: every resampling difference would show.
    y, x = np.mgrid[0:height, 0:width]
    base = 127 + 100 * np.sin(x[..., None] / 7.0 + y[..., None] / 11.0 + np.arange(3))
    image = np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    ours = P.crop(image, P.centre_box(height, width), size)
    ref = _ringnet_demo_crop(image, size)
    assert ours.shape == ref.shape == (size, size, 3)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("height,width", [(300, 400), (301, 457), (1000, 333), (100, 80)])
def test_centre_box_affine_follows_ringnets_crop(height, width):
    # A dot's centre in the photo lands where the box's affine map puts it (to the resampling's blur).
    image = np.zeros((height, width, 3), np.uint8)
    cy, cx = int(0.37 * height), int(0.61 * width)
    r = max(2, max(height, width) // 40)
    image[cy - r:cy + r + 1, cx - r:cx + r + 1] = 255
    box = P.centre_box(height, width)
    out = P.crop(image, box, 224)
    dot = P.transform_points(np.array([[cx, cy]], np.float64), box.affine(224))[0]
    weights = out[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:224, 0:224]
    centroid = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
    np.testing.assert_allclose(centroid, dot, atol=0.15)
    # The nominal box (centre, longer side) is the whole image, as before.
    assert (box.cx, box.cy, box.size) == ((width - 1) / 2, (height - 1) / 2, max(height, width))


def test_centre_box_crop_of_a_sliver_keeps_one_row():
    # RingNet's demo fails here (the image scales to no rows); ours replicates the one row left.
    image = np.random.default_rng(0).integers(0, 255, (2, 999, 3)).astype(np.uint8)
    out = P.crop(image, P.centre_box(2, 999), 128)
    assert out.shape == (128, 128, 3)
    np.testing.assert_array_equal(out[0], out[-1])
