"""Our FLAME layer against smplx's FLAME (PyTorch), the field's reference implementation, reading
the same FLAME-format files: vertices, and the 68 landmarks including the dynamic contour."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from flame.layer import FlameLayer
from flame.model import save_flame_files
from tests.conftest import make_tiny_model

smplx = pytest.importorskip("smplx")
torch = pytest.importorskip("torch")

NUM_SHAPE, NUM_EXPR, BATCH = 20, 10, 6


def test_vertices_and_landmarks_equal_smplx(tmp_path):
    model = make_tiny_model(seed=4, num_vertices=120)
    paths = save_flame_files(model, tmp_path)
    (tmp_path / "FLAME_NEUTRAL.pkl").symlink_to(paths["model"])
    ref = smplx.FLAME(model_path=str(tmp_path), num_betas=NUM_SHAPE, num_expression_coeffs=NUM_EXPR,
                      use_face_contour=True, batch_size=BATCH)
    rng = np.random.default_rng(0)
    shape = rng.normal(size=(BATCH, NUM_SHAPE)).astype(np.float32)
    expr = rng.normal(size=(BATCH, NUM_EXPR)).astype(np.float32)
    pose = (0.4 * rng.normal(size=(BATCH, 15))).astype(np.float32)
    pose[:, 1] = np.linspace(-1.2, 1.2, BATCH)  # yaws across the contour table, past the clamp
    # smplx 0.1.28 chooses the contour row from the root rotation alone (its neck chain is [0]);
    # FLAME's rule, which we follow (tests/test_flame_layer.py), composes neck then root. With the
    # neck at rest the two rules agree; vertices are compared with the neck rotated too, below.
    pose_neck = pose.copy()
    pose[:, 3:6] = 0.0
    transl = rng.normal(size=(BATCH, 3)).astype(np.float32)
    t = lambda a: torch.tensor(a)  # noqa: E731
    with torch.no_grad():
        out = ref(betas=t(shape), expression=t(expr), global_orient=t(pose[:, 0:3]),
                  neck_pose=t(pose[:, 3:6]), jaw_pose=t(pose[:, 6:9]), leye_pose=t(pose[:, 9:12]),
                  reye_pose=t(pose[:, 12:15]),
                  transl=t(transl))
    ours = FlameLayer(model, NUM_SHAPE, NUM_EXPR)(shape, expr, pose, transl)
    np.testing.assert_allclose(ours["vertices"].numpy(), out.vertices.numpy(), atol=2e-6)
    # smplx appends the 51 static landmarks, then the 17 contour points, to its joints.
    theirs = out.joints.numpy()[:, -68:]
    np.testing.assert_allclose(ours["landmarks"].numpy()[:, 17:], theirs[:, :51], atol=2e-6)
    np.testing.assert_allclose(ours["landmarks"].numpy()[:, :17], theirs[:, 51:], atol=2e-6)
    with torch.no_grad():
        out = ref(betas=t(shape), expression=t(expr), global_orient=t(pose_neck[:, 0:3]),
                  neck_pose=t(pose_neck[:, 3:6]), jaw_pose=t(pose_neck[:, 6:9]),
                  leye_pose=t(pose_neck[:, 9:12]), reye_pose=t(pose_neck[:, 12:15]), transl=t(transl))
    ours = FlameLayer(model, NUM_SHAPE, NUM_EXPR)(shape, expr, pose_neck, transl)
    np.testing.assert_allclose(ours["vertices"].numpy(), out.vertices.numpy(), atol=2e-6)
    np.testing.assert_allclose(ours["landmarks"].numpy()[:, 17:], out.joints.numpy()[:, -68:-17], atol=2e-6)
