"""RingNet training as a Keras 3 model with its own train_step / test_step.

The batch is a ring batch (`ringnet_tf.data.rings`): images [NB, R, S, S, 3], landmarks
[NB, R, 68, 3] in network-input pixels. The network sees the NB * R images as one batch; the
losses put the ring structure back.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from flame.layer import FlameLayer
from ringnet_tf import camera, losses

LOSS_NAMES = ("loss", "shape_consistency", "landmarks", "shape_prior", "expression_prior",
              "landmarks3d", "shape_supervised", "shape_coefficients")
# Key of the train step's logs that is 1 when this step's loss or any weight after its update is
# not finite (0 otherwise): a per-step value, not a running mean, and not a loss to report.
NONFINITE = "nonfinite"


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss weights and margin; the defaults are the paper's."""

    shape_consistency: float = 1.0
    landmarks: float = 60.0
    shape_prior: float = 1e-4
    expression_prior: float = 1e-4
    eta: float = losses.ETA
    # Supervision where a dataset has labels (0 = off, RingNet's setting): 3D landmarks (real data
    # such as 300W-LP has them; the synthetic generator writes them), and the true shape
    # coefficients, which only synthetic data has: a pre-training stage, not RingNet's method.
    landmarks3d: float = 0.0
    shape_supervised: float = 0.0
    # The true shape coefficients themselves (mean squared error): the most direct signal where
    # they exist; the neutral-mesh loss above alone taught the regressor no shape (train_head).
    shape_coefficients: float = 0.0


class RingNetTrainer(keras.Model):
    """Wraps the RingNet network for training on ring batches.

    `call(images)` runs the wrapped network on [B, S, S, 3] images. `compute_ring_losses` gives the
    weighted total and its parts for a ring batch (dict, LOSS_NAMES). Losses are float32 even when
    the backbone runs in float16/bfloat16 (the network's outputs are float32). `train_step` also
    returns NONFINITE, checked on device after the update so a diverged step is caught before
    anything (a checkpoint, the next step) uses its weights.
    """

    def __init__(self, net: keras.Model, loss_config: LossConfig = LossConfig(), image_size: int | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.net = net
        self.loss_config = loss_config
        # The landmarks' pixel frame; given when `net` takes features rather than images
        # (`model.head_model`), whose "images" in a batch are then [NB, R, F] features.
        self.image_size = int(image_size or net.input_shape[1])
        flame = [layer for layer in net.layers if isinstance(layer, FlameLayer)]
        # The shape blend shapes [S, 3V] (planar), for the supervised shape loss's neutral meshes.
        self._shape_basis = flame[0].basis[:flame[0].num_shape] if flame else None
        self._template = flame[0].v_template if flame else None
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}
        self.built = True  # the wrapped functional network is built already

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (3.x) first builds a model on a batch averaged across replicas by strategy.reduce,
        # which MultiWorkerMirroredStrategy cannot do for a dict of tensors (it raises). This
        # model is built when constructed and its optimizer before fit, so there is nothing to do.
        if all(layer.built for layer in self._flatten_layers()) and getattr(self.optimizer, "built", False):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, images, training=False):
        return self.net(images, training=training)

    def compute_ring_losses(self, batch: dict[str, tf.Tensor], training: bool
                            ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        images, target = batch["images"], batch["landmarks"]
        num_rings, ring = tf.shape(images)[0], images.shape[1]
        out = self.net(tf.reshape(images, [-1, *images.shape[2:]]), training=training)
        target = tf.reshape(tf.cast(target, tf.float32), [-1, *target.shape[2:]])
        target_xy = camera.pixels_to_normalised(target[..., :2], self.image_size)
        cfg = self.loss_config
        parts = {
            "shape_consistency": losses.shape_consistency_loss(
                tf.reshape(out["shape"], [num_rings, ring, -1]), cfg.eta),
            "landmarks": losses.landmark_loss(out["landmarks2d"],
                                              tf.concat([target_xy, target[..., 2:]], axis=-1)),
            "shape_prior": losses.l2_prior(out["shape"]),
            "expression_prior": losses.l2_prior(out["expression"]),
        }
        flat = {k: tf.reshape(batch[k], [-1, *batch[k].shape[2:]]) if k in batch else None
                for k in ("landmarks3d", "has_landmarks3d", "shape", "has_shape")}
        zero = tf.constant(0.0)
        parts["landmarks3d"] = zero if flat["landmarks3d"] is None else losses.landmark3d_loss(
            camera.to_camera_frame(out["landmarks3d"], out["cam"]), flat["landmarks3d"],
            flat["has_landmarks3d"], self.image_size)
        if "landmarks_camera" in out:
            # The pose guidance head's own 3D landmarks (the pose is solved from them): the 2D
            # labels on their x, y, and the 3D labels where present, as for FLAME's landmarks.
            parts["landmarks"] += losses.landmark_loss(
                out["landmarks_camera"][..., :2], tf.concat([target_xy, target[..., 2:]], axis=-1))
            if flat["landmarks3d"] is not None:
                parts["landmarks3d"] += losses.landmark3d_loss(
                    out["landmarks_camera"], flat["landmarks3d"], flat["has_landmarks3d"], self.image_size)
        parts["shape_supervised"] = (
            zero if flat["shape"] is None or self._shape_basis is None
            else losses.neutral_mesh_loss(out["shape"], flat["shape"], flat["has_shape"],
                                          self._shape_basis, self._template))
        parts["shape_coefficients"] = (
            zero if flat["shape"] is None
            else losses.coefficient_loss(out["shape"], flat["shape"], flat["has_shape"]))
        parts["loss"] = tf.add_n([getattr(cfg, k) * v for k, v in parts.items()])
        return parts, out

    def train_step(self, data):
        with tf.GradientTape() as tape:
            parts, _ = self.compute_ring_losses(data, training=True)
            # Gradients are summed across replicas: each replica contributes its share of the mean.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(parts["loss"] / replicas)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        logs = self._update(parts)
        logs[NONFINITE] = 1.0 - tf.cast(self._all_finite(parts["loss"]), tf.float32)
        return _for_reduction(logs)

    def _all_finite(self, loss: tf.Tensor) -> tf.Tensor:
        """[] bool: the loss and every trainable weight (read after the update) are finite.

        One reduction per variable, fused into the step: cheap next to the backbone's gradients.
        """
        checks = [tf.reduce_all(tf.math.is_finite(loss))]
        checks += [tf.reduce_all(tf.math.is_finite(v)) for v in self.trainable_variables]
        return tf.reduce_all(tf.stack(checks))

    def test_step(self, data):
        parts, _ = self.compute_ring_losses(data, training=False)
        return _for_reduction(self._update(parts))

    def _update(self, parts: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for name, value in parts.items():
            self.trackers[name].update_state(value)
        return {name: t.result() for name, t in self.trackers.items()}


def _for_reduction(logs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """A step's logs as Keras can average them across workers: Keras (3.x) reduces a multi-worker
    step's outputs with strategy.reduce(MEAN, axis=0), which rejects scalars (tensorflow#72388),
    so there each log gets an axis of length 1 (the reduction returns the scalar mean)."""
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {k: tf.reshape(v, [1]) for k, v in logs.items()}
    return logs
