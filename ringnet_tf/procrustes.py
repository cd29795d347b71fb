"""A differentiable weighted similarity between corresponding 3D points (Umeyama 1991), in TF.

Given points X [B, N, 3], targets Y [B, N, 3] and weights w [B, N] >= 0, find the scale s > 0, the
rotation R (det +1) and the translation t minimising sum_i w_i ||s R x_i + t - y_i||^2:

    mu_X, mu_Y = weighted centroids;  H = sum_i w_i (y_i - mu_Y)(x_i - mu_X)^T / sum_i w_i
    H = U diag(sigma) V^T;  E = diag(1, 1, det(U) det(V))   (reflection fix: R stays a rotation)
    R = U E V^T;  s = tr(diag(sigma) E) / var_X;  t = mu_Y - s R mu_X

(H is written Y-by-X so that R maps X to Y without a transpose.) The SVD runs in float64 (cheap for
3 x 3). Its gradient is TF's own only for the singular values; for R a custom gradient uses the
orthogonal polar factor's derivative: with signed singular values sigma' = sigma * diag(E), the
rotation's change is dR = R U Omega U^T with Omega_kl = [U^T (A - A^T) U]_kl / (sigma'_k + sigma'_l),
A = R^T dH. It stays finite when two singular values coincide (where the SVD's own U and V
gradients blow up: a symmetric point cloud), and the denominator is clamped where the solution
itself is ambiguous (sigma'_2 + sigma'_3 = 0: points on a line, or a reflection with a degenerate
spread). Weight sums and variances are clamped too, so collapsed inputs give finite outputs.

This is the pose guidance head's pose solve (`ringnet_tf.model`, pose_head="landmarks"). The
evaluation's NumPy alignment (NoW) is `ringnet_tf.evaluate.geometry`.
"""
from __future__ import annotations

import tensorflow as tf

_EPS = 1e-9


def _det3(m: tf.Tensor) -> tf.Tensor:
    """[B, 3, 3] -> [B] determinants as a triple product (XLA's CPU backend has no MatrixDeterminant)."""
    return tf.reduce_sum(m[:, 0] * tf.linalg.cross(m[:, 1], m[:, 2]), axis=-1)


@tf.custom_gradient
def _rotation_of(h: tf.Tensor) -> tuple[tf.Tensor, callable]:
    """[B, 3, 3] float64 cross-covariance H -> (R [B, 3, 3], signed singular values [B, 3])."""
    sigma, u, v = tf.linalg.svd(h)
    d = tf.sign(_det3(u) * _det3(v))
    d = tf.where(d == 0, tf.ones_like(d), d)
    e = tf.stack([tf.ones_like(d), tf.ones_like(d), d], axis=-1)  # [B, 3]
    rot = tf.matmul(u * e[:, None, :], v, transpose_b=True)
    signed = sigma * e

    def grad(g_rot, g_signed):
        # H = P R with P = U diag(sigma') U^T symmetric (R is H's polar factor), so with dR = Omega R
        # (Omega skew): dH R^T - R dH^T = P Omega + Omega P, i.e. in U's basis
        # Omega~_kl = [U^T (dH R^T - R dH^T) U]_kl / (sigma'_k + sigma'_l). With K = U^T G R^T U and
        # C = K / (sigma'_k + sigma'_l): dL = <G, dR> = <C, U^T (dH R^T - R dH^T) U>,
        # so dL/dH = U (C - C^T) U^T R.
        denom = signed[:, :, None] + signed[:, None, :]
        denom = tf.where(tf.abs(denom) < _EPS, tf.fill(tf.shape(denom), tf.constant(_EPS, h.dtype)), denom)
        k = tf.matmul(tf.matmul(u, tf.matmul(g_rot, rot, transpose_b=True), transpose_a=True), u)
        c = k / denom
        skew = c - tf.linalg.matrix_transpose(c)
        g_h = tf.matmul(tf.matmul(u, tf.matmul(skew, u, transpose_b=True)), rot)
        # Singular values: d sigma_i = u_i^T dH v_i, signed by E.
        g_h += tf.matmul(u * (g_signed * e)[:, None, :], v, transpose_b=True)
        return g_h

    return (rot, signed), grad


def similarity(x: tf.Tensor, y: tf.Tensor, weights: tf.Tensor | None = None
               ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The weighted similarity that maps x onto y.

    Args:
      x: [B, N, 3] source points; y: [B, N, 3] targets (same order); weights: [B, N] or None (all 1).
    Returns:
      scale [B], rotation [B, 3, 3] (det +1), translation [B, 3], in x's dtype:
      y_i ~ scale * rotation @ x_i + translation.
    """
    dtype = x.dtype
    x64, y64 = tf.cast(x, tf.float64), tf.cast(y, tf.float64)
    w = tf.ones_like(x64[..., 0]) if weights is None else tf.cast(weights, tf.float64)
    total = tf.maximum(tf.reduce_sum(w, axis=-1, keepdims=True), _EPS)  # [B, 1]
    wn = (w / total)[..., None]  # [B, N, 1], sums to 1
    mu_x = tf.reduce_sum(wn * x64, axis=1)
    mu_y = tf.reduce_sum(wn * y64, axis=1)
    xc, yc = x64 - mu_x[:, None], y64 - mu_y[:, None]
    h = tf.matmul(wn * yc, xc, transpose_a=True)  # [B, 3, 3] = sum w y x^T
    var_x = tf.maximum(tf.reduce_sum(wn[..., 0] * tf.reduce_sum(xc * xc, axis=-1), axis=-1), _EPS)
    rot, signed = _rotation_of(h)
    # tf.custom_gradient drops static shapes; slicing code downstream relies on them.
    rot = tf.ensure_shape(rot, h.shape)
    signed = tf.ensure_shape(signed, h.shape[:-1])
    scale = tf.reduce_sum(signed, axis=-1) / var_x
    trans = mu_y - scale[:, None] * tf.einsum("bij,bj->bi", rot, mu_x)
    return tf.cast(scale, dtype), tf.cast(rot, dtype), tf.cast(trans, dtype)


def rotation_to_axis_angle(rot: tf.Tensor) -> tf.Tensor:
    """[..., 3, 3] rotation matrices -> [..., 3] axis-angle vectors (angle in [0, pi]).

    Through a unit quaternion (Shepperd's choice of the largest of its four squared components,
    so no branch divides by a small number), then angle / sin(angle / 2) by its series near zero.
    Inverse of `flame.lbs.batch_rodrigues` up to the sign ambiguity at exactly pi.
    """
    m = rot
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # 4 * q_i^2 for (w, x, y, z)
    sq = tf.stack([1.0 + tr, 1.0 + 2 * m[..., 0, 0] - tr, 1.0 + 2 * m[..., 1, 1] - tr,
                   1.0 + 2 * m[..., 2, 2] - tr], axis=-1)
    best = tf.argmax(sq, axis=-1)
    r = tf.sqrt(tf.maximum(tf.reduce_max(sq, axis=-1), 1e-12))  # 2 |q_best|
    a, b = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0]
    c = m[..., 1, 0] - m[..., 0, 1]
    p, q_, s_ = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    cands = tf.stack([
        tf.stack([r, a / r, b / r, c / r], -1),
        tf.stack([a / r, r, p / r, q_ / r], -1),
        tf.stack([b / r, p / r, r, s_ / r], -1),
        tf.stack([c / r, q_ / r, s_ / r, r], -1)], axis=-2) * 0.5  # [..., 4, 4]
    quat = tf.gather(cands, best, batch_dims=len(best.shape))
    one = tf.ones_like(quat[..., :1])
    quat = quat * tf.where(quat[..., :1] < 0, -one, one)  # w >= 0: angle in [0, pi]
    w, v = quat[..., 0], quat[..., 1:]
    n = tf.sqrt(tf.reduce_sum(v * v, axis=-1) + 1e-24)
    small = n < 1e-4
    w_safe = tf.maximum(w, 0.5)
    factor = tf.where(small, 2.0 / w_safe * (1.0 - n * n / (3.0 * w_safe * w_safe)),
                      2.0 * tf.atan2(tf.maximum(n, 1e-4), w) / tf.maximum(n, 1e-4))
    return v * factor[..., None]
