"""3D labels: the synthetic generator's 3D landmarks, their trip through TFRecords and the ring
augmentation, the 3D-landmark and neutral-mesh losses against independent computations, and
appearance drawn per image."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from flame import constants as C
from flame.io import load_flame
from flame.layer import FlameLayer
from ringnet_tf import camera, losses
from ringnet_tf.data import dataset as D
from ringnet_tf.data import rings
from ringnet_tf.data import synthetic as S

CFG = S.SynthConfig(identities=3, images_per_identity=3, seed=7, size=64, num_shape=10,
                    num_expression=5, appearance="image")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, flame_dir):
    return S.generate(tmp_path_factory.mktemp("syn") / "d", CFG, str(flame_dir), workers=1, progress=False)


def _decode(flame_dir, gt):
    layer = FlameLayer(load_flame(flame_dir), CFG.num_shape, CFG.num_expression)
    return layer, layer(tf.constant(gt["shape"]), tf.constant(gt["expression"]), tf.constant(gt["pose"]))


def test_3d_landmarks_are_the_2d_ones_plus_scaled_depth(dataset, flame_dir):
    gt = D.read_ground_truth(dataset)
    records = D.read_manifest(dataset)
    lm3 = gt["landmarks3d"]
    assert lm3.shape == (9, 68, 3)
    np.testing.assert_allclose(lm3[..., :2], np.stack([r.landmarks[:, :2] for r in records]), atol=2e-3)
    # Depth: the posed model's Z times the camera's pixels per metre (s * size / 2).
    _, out = _decode(flame_dir, gt)
    z = out["landmarks"].numpy()[..., 2] * gt["cam"][:, None, 0] * CFG.size / 2
    np.testing.assert_allclose(lm3[..., 2], z, rtol=1e-5, atol=1e-4)


def test_landmark3d_loss_is_zero_at_the_truth_and_grows_with_error(dataset, flame_dir):
    gt = D.read_ground_truth(dataset)
    _, out = _decode(flame_dir, gt)
    pred = camera.to_camera_frame(out["landmarks"], tf.constant(gt["cam"]))
    target = tf.constant(gt["landmarks3d"])
    ones = tf.ones([9])
    assert float(losses.landmark3d_loss(pred, target, ones, CFG.size)) < 1e-4
    # A depth offset is invisible to weak perspective: no loss.
    shifted = target + tf.constant([0.0, 0.0, 7.0])
    assert float(losses.landmark3d_loss(pred, shifted, ones, CFG.size)) < 1e-4
    # Moving every label by d pixels in depth alternately (+d, -d) costs d / (size / 2) on average.
    sign = np.where(np.arange(68) % 2 == 0, 1.0, -1.0).astype(np.float32)
    bumped = target + tf.constant(np.stack([0 * sign, 0 * sign, 3.0 * sign], -1))
    assert float(losses.landmark3d_loss(pred, bumped, ones, CFG.size)) == pytest.approx(
        3.0 / (CFG.size / 2), rel=1e-3)
    # Unlabelled images count zero.
    half = tf.constant([1.0] * 4 + [0.0] * 5)
    full = losses.landmark3d_loss(pred, bumped, ones, CFG.size)
    part = losses.landmark3d_loss(pred, bumped, half, CFG.size)
    assert float(part) == pytest.approx(float(full) * 4 / 9, rel=1e-4)


def _scale_free_mm(pred_mesh: np.ndarray, true_mesh: np.ndarray) -> float:
    """NumPy reference: centre both [B, V, 3] meshes, scale the prediction by least squares onto
    the truth, mean vertex distance in mm over vertices and images."""
    p = pred_mesh - pred_mesh.mean(axis=1, keepdims=True)
    t = true_mesh - true_mesh.mean(axis=1, keepdims=True)
    s = (p * t).sum(axis=(1, 2)) / (p * p).sum(axis=(1, 2))
    return 1000 * np.linalg.norm(s[:, None, None] * p - t, axis=-1).mean()


def test_neutral_mesh_loss_is_the_scale_free_vertex_distance_of_the_neutral_meshes(dataset, flame_dir):
    gt = D.read_ground_truth(dataset)
    layer = FlameLayer(load_flame(flame_dir), CFG.num_shape, CFG.num_expression)
    neutral = gt["neutral_vertices"][np.repeat(np.arange(3), 3)]  # [9, V, 3], written by the generator
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(9, CFG.num_shape)).astype(np.float32)

    def mesh(coeffs):
        return layer(tf.constant(coeffs), tf.zeros([9, CFG.num_expression]), tf.zeros([9, 6]))["vertices"].numpy()

    basis, template = layer.basis[:layer.num_shape], layer.v_template
    got = losses.neutral_mesh_loss(tf.constant(pred), tf.constant(gt["shape"]), tf.ones([9]), basis, template)
    assert float(got) == pytest.approx(_scale_free_mm(mesh(pred), neutral), rel=1e-4)
    # The truth itself scores ~0; so does any prediction that differs from it only in size.
    own = losses.neutral_mesh_loss(tf.constant(gt["shape"]), tf.constant(gt["shape"]), tf.ones([9]), basis, template)
    assert float(own) < 1e-3
    # Fewer predicted components than labelled: only the first 4 are compared (the truth's tail
    # has no blend shapes in a 4-component model, and no prediction could change it).
    head = lambda c: mesh(np.concatenate([c[:, :4], np.zeros((9, CFG.num_shape - 4), np.float32)], 1))  # noqa: E731
    got = losses.neutral_mesh_loss(tf.constant(pred[:, :4]), tf.constant(gt["shape"]), tf.ones([9]), basis, template)
    assert float(got) == pytest.approx(_scale_free_mm(head(pred), head(gt["shape"])), rel=1e-4)


def test_3d_labels_survive_tfrecords(dataset, tmp_path):
    tfr = D.write_tfrecords(dataset, tmp_path / "tfr")
    back = D.tfrecords_to_directory(tfr, tmp_path / "back")
    a, b = D.read_ground_truth(dataset), D.read_ground_truth(back)
    np.testing.assert_array_equal(a["landmarks3d"], b["landmarks3d"])
    np.testing.assert_array_equal(a["shape"], b["shape"])


@pytest.mark.parametrize("form", ["manifest", "tfrecords"])
def test_ring_batches_carry_3d_labels_through_the_augmentation(dataset, tmp_path, form):
    src = dataset if form == "manifest" else D.write_tfrecords(dataset, tmp_path / "tfr")
    cfg = rings.RingConfig(ring_size=3, rings_per_batch=3, image_size=40, seed=3)
    batch = next(iter(rings.open_rings(src, cfg)))
    gt = D.read_ground_truth(dataset)
    lm3, lm2 = batch["landmarks3d"].numpy(), batch["landmarks"].numpy()
    # x, y move exactly as the 2D landmarks (mirror order included).
    np.testing.assert_allclose(lm3[..., :2], lm2[..., :2], atol=1e-3)
    assert np.all(batch["has_landmarks3d"].numpy() == 1)
    # The warp is a similarity of the image plane: it scales every 3D distance by the same factor,
    # which the labels' own 2D distances give. So 3D pairwise distances keep their ratios.
    stored = gt["landmarks3d"]
    for ring_lm3 in lm3.reshape(-1, 68, 3):
        # Find the stored image this one came from by its normalised 3D shape (pairwise distances).
        d_aug = np.linalg.norm(ring_lm3[:, None] - ring_lm3[None], axis=-1)
        mirror = np.asarray(C.IBUG68_MIRROR)
        dists = [np.linalg.norm(s[:, None] - s[None], axis=-1) for s in stored]
        dists += [d[mirror][:, mirror] for d in dists]  # a mirrored image lists its landmarks mirrored
        spread = [np.std(d_aug[d > 1] / d[d > 1]) / np.mean(d_aug[d > 1] / d[d > 1]) for d in dists]
        assert min(spread) < 1e-3  # one stored image is a scaled copy in 3D, depth included
    # Shape labels are the identity's coefficients, kept only for unmirrored images.
    shapes = batch["shape"].numpy().reshape(-1, CFG.num_shape)
    known = {tuple(np.round(s, 5)) for s in gt["shape"]}
    assert all(tuple(np.round(s, 5)) in known for s in shapes)


def test_datasets_without_3d_labels_give_zero_weights(tmp_path):
    from tests.conftest import make_tiny_dataset

    make_tiny_dataset(tmp_path / "d", ["a", "a", "b", "b"])
    cfg = rings.RingConfig(ring_size=3, rings_per_batch=2, image_size=32)
    batch = next(iter(rings.open_rings(tmp_path / "d", cfg)))
    assert np.all(batch["has_landmarks3d"].numpy() == 0) and np.all(batch["has_shape"].numpy() == 0)


def test_mirrored_images_lose_their_shape_label(dataset):
    cfg = rings.RingConfig(ring_size=3, rings_per_batch=1, image_size=40, flip_probability=1.0)
    batch = next(iter(rings.open_rings(dataset, cfg)))
    assert np.all(batch["has_shape"].numpy() == 0) and np.all(batch["has_landmarks3d"].numpy() == 1)
    cfg = rings.RingConfig(ring_size=3, rings_per_batch=1, image_size=40, flip_probability=0.0)
    assert np.all(next(iter(rings.open_rings(dataset, cfg)))["has_shape"].numpy() == 1)


def test_appearance_per_image_changes_skin_within_an_identity(flame_dir):
    model = load_flame(flame_dir)
    masks = S._region_masks(model)
    per_id = S.SynthConfig(identities=1, images_per_identity=2, seed=1)
    _, albedo = S._identity_draws(per_id, 0, model.num_vertices, masks)
    a0 = S._image_albedo(per_id, 0, 0, model.num_vertices, masks)
    a1 = S._image_albedo(per_id, 0, 1, model.num_vertices, masks)
    # Mean skin tones of two images of one identity differ as much as two identities' typically do.
    assert np.abs(a0.mean(0) - a1.mean(0)).max() > 1e-2
    assert not np.allclose(a0, albedo)
    with pytest.raises(ValueError, match="appearance"):
        S.SynthConfig(identities=1, images_per_identity=1, appearance="person")


def test_a_dataset_mixing_labelled_and_unlabelled_images(dataset, tmp_path):
    # Rows of NaN mark images without labels (photos beside renders): weight 0 for those only,
    # in both dataset forms, and the losses stay finite.
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(dataset, mixed)
    gt = D.read_ground_truth(mixed)
    unlabelled = np.arange(9) % 3 == 0
    gt["landmarks3d"][unlabelled] = np.nan
    gt["shape"][unlabelled] = np.nan
    D.write_ground_truth(mixed, gt)
    cfg = rings.RingConfig(ring_size=3, rings_per_batch=3, image_size=40, flip_probability=0.0)
    for src in (mixed, D.write_tfrecords(mixed, tmp_path / "tfr")):
        seen = set()
        for batch in rings.open_rings(src, cfg).take(4):
            has = batch["has_landmarks3d"].numpy().ravel()
            assert np.array_equal(has, batch["has_shape"].numpy().ravel())
            assert np.isfinite(batch["landmarks3d"].numpy()).all() and np.isfinite(batch["shape"].numpy()).all()
            seen |= set(has.tolist())
            pred = tf.zeros_like(batch["landmarks3d"][0])
            loss = losses.landmark3d_loss(pred, batch["landmarks3d"][0], batch["has_landmarks3d"][0], 40)
            assert np.isfinite(loss.numpy())
        assert seen == {0.0, 1.0}
