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
