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
