"""Landmark-based refinement: after the regression, fit FLAME's parameters to detected landmarks.

Minimises, per image, the training's landmark loss (confidence-weighted L1 in normalised image
coordinates) plus the shape and expression priors, over camera, pose, shape and expression,
starting from the network's estimate. Plain Adam in one XLA-compiled loop.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from flame.layer import FlameLayer
from ringnet_tf import camera
from ringnet_tf.params import ParamSpec

# Priors are stronger than in training: a single image's 68 landmarks say little about depth.
DEFAULT_SHAPE_PRIOR = 1e-3
DEFAULT_EXPRESSION_PRIOR = 1e-3


def refine(flame: FlameLayer, params: np.ndarray, landmarks: np.ndarray, image_size: int, steps: int,
           learning_rate: float = 0.01, shape_prior: float = DEFAULT_SHAPE_PRIOR,
           expression_prior: float = DEFAULT_EXPRESSION_PRIOR) -> tuple[np.ndarray, np.ndarray]:
    """Refines parameters against landmarks.

    Args:
      params: [B, P] RingNet parameters (cam, pose, shape, expression) to start from.
      landmarks: [B, 68, 3] target landmarks (x, y in pixels of the image_size crop, confidence).
      steps: Adam steps.
    Returns:
      refined params [B, P] and the per-image loss before and after, [2, B].
    """
    spec = ParamSpec(flame.num_shape, flame.num_expression)
    target = np.asarray(landmarks, np.float32)
    target = np.concatenate([camera.pixels_to_normalised(target[..., :2], image_size), target[..., 2:]], -1)
    weights = tf.constant([shape_prior, expression_prior], tf.float32)

    def objective(theta, target):
        parts = spec.split(theta)
        out = flame(parts["shape"], parts["expression"], parts["pose"])
        pred = camera.project_normalised(out["landmarks"], parts["cam"])
        per_image = tf.reduce_mean(target[..., 2] * tf.reduce_sum(tf.abs(pred - target[..., :2]), -1), -1)
        prior = (weights[0] * tf.reduce_sum(tf.square(parts["shape"]), -1)
                 + weights[1] * tf.reduce_sum(tf.square(parts["expression"]), -1))
        return per_image + prior

    @tf.function(jit_compile=True)
    def run(theta, target, steps):
        m, v = tf.zeros_like(theta), tf.zeros_like(theta)
        before = objective(theta, target)
        b1, b2, eps = 0.9, 0.999, 1e-8
        for i in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(theta)
                loss = tf.reduce_sum(objective(theta, target))
            g = tape.gradient(loss, theta)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            t = tf.cast(i + 1, tf.float32)
            theta = theta - learning_rate * (m / (1 - b1 ** t)) / (tf.sqrt(v / (1 - b2 ** t)) + eps)
        return theta, tf.stack([before, objective(theta, target)])

    theta, report = run(tf.constant(params, tf.float32), tf.constant(target), tf.constant(steps))
    return theta.numpy(), report.numpy()

