"""FLAME's forward maths as pure TensorFlow functions (no state; `flame.layer` holds the arrays).

Letters in shapes: B batch, V vertices, J joints (5), K blend coefficients, L landmarks.
Every function is differentiable in its float inputs and compiles under XLA.
"""
from __future__ import annotations

import math

import tensorflow as tf

from flame import constants as C

# Below this squared rotation angle, Rodrigues' coefficients use their Taylor series: exact to
# float32 precision there, and smooth (with finite gradients) through the zero rotation.
_SMALL_ANGLE_SQ = 1e-6


def batch_rodrigues(rot_vecs: tf.Tensor) -> tf.Tensor:
    """Axis-angle vectors to rotation matrices.

    Uses R = I + a(t) K + b(t) K^2 with K the cross-product matrix of the (unnormalised) vector,
    a = sin(t) / t and b = (1 - cos(t)) / t^2, so nothing divides by the angle near zero.

    Args:
      rot_vecs: [..., 3] float32 axis-angle (radians).
    Returns:
      [..., 3, 3] float32 rotation matrices.
    """
    x, y, z = tf.unstack(rot_vecs, axis=-1)
    theta_sq = x * x + y * y + z * z
    small = theta_sq < _SMALL_ANGLE_SQ
    # Feed the non-series branch a harmless value where it is not used, so its gradient is finite.
    safe_sq = tf.where(small, tf.ones_like(theta_sq), theta_sq)
    theta = tf.sqrt(safe_sq)
    a = tf.where(small, 1.0 - theta_sq / 6.0, tf.sin(theta) / theta)
    b = tf.where(small, 0.5 - theta_sq / 24.0, (1.0 - tf.cos(theta)) / safe_sq)
    zero = tf.zeros_like(x)
    k = tf.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1)
    k = tf.reshape(k, tf.concat([tf.shape(x), [3, 3]], axis=0))
    eye = tf.eye(3, dtype=rot_vecs.dtype)
    return eye + a[..., None, None] * k + b[..., None, None] * tf.matmul(k, k)


def full_pose(pose: tf.Tensor) -> tf.Tensor:
    """RingNet's 6-d pose (global, jaw) or FLAME's 15-d pose to FLAME's 15-d pose.

    Args:
      pose: [B, 6] (global rotation, jaw rotation) or [B, 15] (global, neck, jaw, left eye,
        right eye), axis-angle.
    Returns:
      [B, 15]: for 6-d input, neck and eye rotations are zero.
    """
    dim = pose.shape[-1]
    if dim == C.FULL_POSE_DIM:
        return pose
    if dim != C.RINGNET_POSE_DIM:
        raise ValueError(f"pose must have {C.RINGNET_POSE_DIM} or {C.FULL_POSE_DIM} values; got {dim}")
    glob, jaw = pose[:, :3], pose[:, 3:]
    zeros3 = tf.zeros_like(glob)
    return tf.concat([glob, zeros3, jaw, zeros3, zeros3], axis=-1)


def pose_features(rot_mats: tf.Tensor) -> tf.Tensor:
    """Pose-corrective features: (R - I) of the non-root joints, row-major.

    Args:
      rot_mats: [B, J, 3, 3].
    Returns:
      [B, 9 * (J - 1)] float32.
    """
    rel = rot_mats[:, 1:] - tf.eye(3, dtype=rot_mats.dtype)
    return tf.reshape(rel, [-1, 9 * (rot_mats.shape[1] - 1)])


def rigid_transforms(rot_mats: tf.Tensor, joints: tf.Tensor,
                     parents: tuple[int, ...] = C.PARENTS) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Composes joint rotations along the kinematic tree.

    Args:
      rot_mats: [B, J, 3, 3] local rotations.
      joints: [B, J, 3] rest-pose joint locations.
      parents: [J] parent of each joint (-1 for the root); a parent precedes its children.
    Returns:
      world_rots: [B, J, 3, 3] accumulated rotations.
      posed_joints: [B, J, 3] joint locations after posing.
      skin_trans: [B, J, 3] translations of the skinning transforms, i.e. each joint's transform
        applied to rest-pose points is x -> world_rots @ x + skin_trans.
    """
    rots, locs = [], []
    for j, p in enumerate(parents):
        if p < 0:
            rots.append(rot_mats[:, j])
            locs.append(joints[:, j])
        else:
            rots.append(tf.matmul(rots[p], rot_mats[:, j]))
            offset = joints[:, j] - joints[:, p]
            locs.append(locs[p] + tf.linalg.matvec(rots[p], offset))
    world_rots = tf.stack(rots, axis=1)
    posed_joints = tf.stack(locs, axis=1)
    skin_trans = posed_joints - tf.linalg.matvec(world_rots, joints)
    return world_rots, posed_joints, skin_trans


def _affine_rows(mats: tf.Tensor, trans: tf.Tensor, points: tf.Tensor) -> list[tf.Tensor]:
    """The three output coordinates of per-example 3x3 maps plus translations on planar points.

    Args:
      mats: [B, 3, 3]; trans: [B, 3]; points: [B, 3, N] planar (x, y, z each contiguous).
    Returns:
      three [B, N] tensors.

    Unrolled arithmetic on planar points lets XLA fuse a whole skinning into one vectorised pass;
    a [B, N, 3] layout with a reduction over its size-3 axis, or an einsum (lowered to many tiny
    dots), runs several times slower on CPU.
    """
    # One unstack per input instead of a slice per coefficient: the same arithmetic in a third of
    # the graph ops (tracing time counts wherever FLAME is traced: training, export, refinement).
    m = tf.unstack(tf.reshape(mats, [-1, 9, 1]), num=9, axis=1)
    t = tf.unstack(trans[..., None], num=3, axis=1)
    x, y, z = tf.unstack(points, num=3, axis=1)
    return [m[3 * i] * x + m[3 * i + 1] * y + m[3 * i + 2] * z + t[i] for i in range(3)]


def skin(points: tf.Tensor, weights: tf.Tensor, world_rots: tf.Tensor,
         skin_trans: tf.Tensor) -> tf.Tensor:
    """Linear blend skinning, general form (any joint may rotate).

    Args:
      points: [B, 3, N] rest-pose (shaped and pose-corrected) points, planar.
      weights: [N, J] skinning weights, or [B, N, J] (per example, for gathered points).
      world_rots: [B, J, 3, 3]; skin_trans: [B, J, 3] from `rigid_transforms`.
    Returns:
      [B, N, 3] posed points.
    """
    transforms = tf.concat([tf.reshape(world_rots, [-1, C.NUM_JOINTS, 9]), skin_trans], axis=-1)
    equation = "bjk,nj->bkn" if weights.shape.rank == 2 else "bjk,bnj->bkn"
    t = tf.unstack(tf.einsum(equation, transforms, weights), num=12, axis=1)  # blended 3x4 maps, planar
    x, y, z = tf.unstack(points, num=3, axis=1)
    return tf.stack([t[3 * i] * x + t[3 * i + 1] * y + t[3 * i + 2] * z + t[9 + i]
                     for i in range(3)], axis=-1)


def skin_global_and_jaw(points: tf.Tensor, jaw_weights: tf.Tensor, global_rot: tf.Tensor,
                        jaw_rot: tf.Tensor, joints: tf.Tensor) -> tf.Tensor:
    """Linear blend skinning when only the root and the jaw rotate (RingNet's 6-d pose).

    With the neck and eye rotations at identity, every joint except the jaw carries the root's
    transform G(p) = R_g (p - j_root) + j_root, and the jaw's is G applied after the jaw's local
    rotation about its joint. LBS then reduces exactly to
        v = G(p) + w_jaw * R_g (R_jaw - I)(p - j_jaw),
    two 3x3 maps per point in one pass instead of a blend of five transforms.

    Args:
      points: [B, 3, N] rest-pose points, planar; jaw_weights: [N] or [B, N] jaw skinning weights.
      global_rot, jaw_rot: [B, 3, 3] local rotations of the root and the jaw.
      joints: [B, J, 3] rest-pose joints.
    Returns:
      [B, N, 3] posed points.
    """
    root, jaw = joints[:, C.ROOT], joints[:, C.JAW]
    opening = tf.matmul(global_rot, jaw_rot - tf.eye(3, dtype=jaw_rot.dtype))
    rigid = _affine_rows(global_rot, root - tf.linalg.matvec(global_rot, root), points)
    delta = _affine_rows(opening, -tf.linalg.matvec(opening, jaw), points)
    return tf.stack([r + jaw_weights * d for r, d in zip(rigid, delta)], axis=-1)


def contour_rows(rot_mats: tf.Tensor) -> tf.Tensor:
    """Row of the 79 x 17 contour table for each head pose (the dynamic jaw-contour lookup).

    The head's yaw comes from the rotation composed along the neck chain (root then neck):
    yaw = atan2(-R[2,0], sqrt(R[0,0]^2 + R[1,0]^2)). In whole degrees, negated and clamped to at
    most 39, a value y >= 0 selects row y and a negative y row 39 - y, with y < -39 mapping to the
    last row (78). Branch-free, so it compiles under XLA; a discrete choice, so it has no gradient.

    A non-finite rotation (a diverged network) gives row 0 rather than an out-of-range index
    (NaN cast to int32 is INT_MIN), so the gather after it stays valid and the NaN shows in the loss.

    Args:
      rot_mats: [B, J, 3, 3] local joint rotations.
    Returns:
      [B] int32 rows in [0, 78].
    """
    head = tf.matmul(rot_mats[:, C.ROOT], rot_mats[:, C.NECK])
    yaw = tf.atan2(-head[:, 2, 0], tf.sqrt(head[:, 0, 0] ** 2 + head[:, 1, 0] ** 2))
    yaw = tf.where(tf.math.is_finite(yaw), yaw, tf.zeros_like(yaw))
    y = tf.round(tf.minimum(-yaw * (180.0 / math.pi), float(C.CONTOUR_MAX_YAW_DEG)))
    y = tf.cast(tf.stop_gradient(y), tf.int32)
    row = tf.where(y >= 0, y, C.CONTOUR_MAX_YAW_DEG - y)
    return tf.clip_by_value(row, 0, C.CONTOUR_LAST_ROW)


def barycentric_points(corners: tf.Tensor, bary: tf.Tensor) -> tf.Tensor:
    """Points given by barycentric coordinates in their triangles.

    Args:
      corners: [B, L, 3, 3] the triangles' corner points (corner, then xyz).
      bary: [B, L, 3] barycentric coordinates.
    Returns:
      [B, L, 3].
    """
    return tf.reduce_sum(corners * bary[..., None], axis=2)
