"""RingNet's losses: shape consistency over a ring, confidence-weighted landmark L1, L2 priors.

Normalisation (the paper writes sums and leaves it open): every loss here is a mean, so the paper's
weights (lambda_sc 1, lambda_proj 60, lambda_beta = lambda_psi = 1e-4) keep their balance whatever
the ring size R, the number of rings and the image size:
- shape consistency: the mean hinge over rings and over the (R - 1)^2 ordered pairs (j, k);
- landmarks: confidence-weighted |dx| + |dy| in normalised image units ([-1, 1]), averaged over
  images and landmarks (a plain mean, so splitting a batch across devices changes nothing);
- priors: the mean over examples of the squared norm.
"""
from __future__ import annotations

import tensorflow as tf

from ringnet_tf import camera

ETA = 0.5  # the paper's margin


def shape_consistency_loss(shape: tf.Tensor, eta: float = ETA) -> tf.Tensor:
    """Ring hinge: each same-identity pair must be closer than its member and the odd one out, by eta.

    L = mean_i mean_{j,k in 1..R-1} max(0, ||b_ij - b_ik||^2 - ||b_ij - b_iR||^2 + eta)

    Args:
      shape: [NB, R, S] shape coefficients; in each ring the first R - 1 share an identity and the
        last is another person.
    Returns:
      [] float32.
    """
    same, odd = shape[:, :-1], shape[:, -1:]
    d_same = tf.reduce_sum(tf.square(same[:, :, None, :] - same[:, None, :, :]), axis=-1)  # [NB, R-1, R-1]
    d_odd = tf.reduce_sum(tf.square(same - odd), axis=-1)  # [NB, R-1]
    return tf.reduce_mean(tf.nn.relu(d_same - d_odd[:, :, None] + eta))


def landmark_loss(pred: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Confidence-weighted L1 between projected and detected landmarks, normalised coordinates.

    Args:
      pred: [..., L, 2] predicted landmarks.
      target: [..., L, 3] detected landmarks (x, y, confidence in [0, 1]).
    Returns:
      [] float32: mean over images and landmarks of w * (|dx| + |dy|).
    """
    l1 = tf.reduce_sum(tf.abs(pred - target[..., :2]), axis=-1)
    return tf.reduce_mean(target[..., 2] * l1)


def l2_prior(coeffs: tf.Tensor) -> tf.Tensor:
    """Mean over examples of the squared norm. coeffs: [..., K] -> [] float32."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(coeffs), axis=-1))


def landmark3d_loss(pred: tf.Tensor, target: tf.Tensor, weight: tf.Tensor, image_size: float) -> tf.Tensor:
    """Mean 3D distance between predicted landmarks in the camera's frame and 3D labels.

    Both sides are in the camera's normalised frame (x right, y up, z towards the camera, units of
    half the image side; `camera.to_camera_frame`): the labels come from pixels (x, y as the 2D
    landmarks, z on the same scale). Weak perspective fixes no depth origin, so both sides' depths
    are taken relative to their mean over the landmarks.

    Args:
      pred: [B, L, 3] in the normalised camera frame; target: [B, L, 3] labels (x, y pixels, z
        depth in pixels); weight: [B], 0 where unlabelled.
    Returns:
      [] float32: mean over images of weight * (mean over landmarks of the Euclidean distance);
      unlabelled images count as 0 (a plain mean, as `landmark_loss`).
    """
    pred = tf.cast(pred, tf.float32)
    t_xy = camera.pixels_to_normalised(target[..., :2], image_size)
    t_z = target[..., 2:3] / (0.5 * image_size)
    p3 = tf.concat([pred[..., :2], pred[..., 2:] - tf.reduce_mean(pred[..., 2:], axis=1, keepdims=True)], -1)
    t3 = tf.concat([t_xy, t_z - tf.reduce_mean(t_z, axis=1, keepdims=True)], -1)
    dist = tf.sqrt(tf.reduce_sum(tf.square(p3 - t3), axis=-1) + 1e-12)
    return tf.reduce_mean(weight * tf.reduce_mean(dist, axis=-1))


def neutral_mesh_loss(shape: tf.Tensor, target: tf.Tensor, weight: tf.Tensor, basis: tf.Tensor,
                      template: tf.Tensor) -> tf.Tensor:
    """Mean vertex distance (mm) between the neutral meshes of predicted and true shape
    coefficients, after removing what no image shows: position and overall size.

    A crop normalises the face's size (the weak-perspective scale absorbs it), so a head's overall
    scale is invisible; the benchmark, like NoW, aligns with a similarity and ignores it too. Each
    mesh is centred on its vertex mean, and the prediction scaled by the least-squares factor
    s = <P, T> / <P, P> onto the truth before the distance. Components are weighed by how much they
    move the surface. Only the first min(S, S') components are compared: a model with fewer
    components than the labels has no blend shapes for the rest of the truth.

    Args:
      shape: [B, S] predicted; target: [B, S'] true; weight: [B], 0 where unlabelled;
      basis: [K >= S, 3V] planar shape blend shapes (all x, then all y, then all z), metres;
      template: [3V] the planar template mesh.
    Returns:
      [] float32: mean over images of weight * (mean over vertices of the distance in mm).
    """
    k = min(shape.shape[-1], target.shape[-1])

    def centred(coeffs):
        mesh = tf.reshape(template + coeffs[:, :k] @ basis[:k], [tf.shape(coeffs)[0], 3, -1])
        return mesh - tf.reduce_mean(mesh, axis=-1, keepdims=True)  # [B, 3, V]

    pred, true = centred(shape), centred(target)
    scale = tf.reduce_sum(pred * true, axis=[1, 2]) / tf.maximum(tf.reduce_sum(pred * pred, axis=[1, 2]), 1e-12)
    disp = scale[:, None, None] * pred - true
    dist = tf.sqrt(tf.reduce_sum(tf.square(disp), axis=1) + 1e-16)  # [B, V]; 1e-8 m floor
    return tf.reduce_mean(weight * 1000.0 * tf.reduce_mean(dist, axis=-1))


def coefficient_loss(pred: tf.Tensor, target: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    """Mean squared error of coefficients against labels, over the first min(K, K') of them.

    Args:
      pred: [B, K]; target: [B, K']; weight: [B], 0 where unlabelled.
    Returns:
      [] float32: mean over images of weight * (mean over the coefficients of the squared error).
    """
    k = min(pred.shape[-1], target.shape[-1])
    err = tf.reduce_mean(tf.square(tf.cast(pred[:, :k], tf.float32) - tf.cast(target[:, :k], tf.float32)), axis=-1)
    return tf.reduce_mean(weight * err)


ROBUST_KINDS = ("l2", "l1", "charbonnier", "geman_mcclure")


def robust_penalty(sq_dist: tf.Tensor, scale: tf.Tensor | float, kind: str = "geman_mcclure") -> tf.Tensor:
    """A penalty rho(r) of a distance r, taken as its square (so r = 0 has finite gradients).

    With c = `scale`, all but l1 behave as r^2 / 2 for r << c:
      l2: r^2 / 2 (Gaussian); l1: r; charbonnier: c^2 (sqrt(1 + r^2 / c^2) - 1) (r^2 / 2 near 0,
      c r far away: every point pulls with at most a bounded force, like L1);
      geman_mcclure: (r^2 / 2) / (1 + r^2 / c^2) (bounded by c^2 / 2: a point much further than c
      pulls with almost no force, so a few gross outliers are ignored).

    Args:
      sq_dist: [...] squared distances r^2; scale: [] or broadcastable to sq_dist.
    Returns:
      [...] rho(r).
    """
    if kind == "l2":
        return 0.5 * sq_dist
    if kind == "l1":
        return tf.sqrt(sq_dist + 1e-12)
    c2 = tf.square(tf.cast(scale, sq_dist.dtype))
    if kind == "charbonnier":
        return c2 * (tf.sqrt(1.0 + sq_dist / c2) - 1.0)
    if kind == "geman_mcclure":
        return 0.5 * sq_dist / (1.0 + sq_dist / c2)
    raise ValueError(f"robust loss kind must be one of {ROBUST_KINDS}; got {kind!r}")


def robust_landmark_loss(pred: tf.Tensor, target: tf.Tensor, scale: tf.Tensor | float,
                         kind: str = "geman_mcclure", face_size: tf.Tensor | None = None) -> tf.Tensor:
    """Confidence-weighted robust penalty of each landmark's 2D distance, per image.

    Unlike `landmark_loss` (|dx| + |dy| per coordinate, one scalar), this penalises the Euclidean
    distance r of each landmark through `robust_penalty`, and keeps one value per image.

    Args:
      pred: [..., L, 2] predicted landmarks.
      target: [..., L, 3] detected landmarks (x, y, confidence).
      scale: the penalty's scale c, in the units of r (see face_size).
      face_size: optional [...]: distances are divided by it first (r in units of the face size).
    Returns:
      [...] mean over the L landmarks of confidence * rho(r).
    """
    sq = tf.reduce_sum(tf.square(pred - target[..., :2]), axis=-1)
    if face_size is not None:
        sq = sq / tf.square(face_size)[..., None]
    return tf.reduce_mean(target[..., 2] * robust_penalty(sq, scale, kind), axis=-1)
