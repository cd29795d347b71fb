"""Landmark-based refinement: after the regression, fit FLAME's parameters to detected landmarks.

The objective, per image i (negative log posterior, up to constants):

    E_i = sum_l w_il rho(r_il) / sigma^2  +  lambda_psi |psi_i|^2 / 2  [+ lambda_beta |beta_i|^2 / 2]

with r_il the 2D distance between landmark l's projection and its detection, in units of the
image's face size (the larger side of the 5-95 % range of the detected points, in normalised image
coordinates), w_il the detector's confidence (third column), sigma the assumed landmark noise
(`DEFAULT_SIGMA`, a fraction of the face size) and rho a robust penalty
(`ringnet_tf.losses.robust_penalty`; default Geman-McClure with scale `DEFAULT_ROBUST_SCALE`, so a
landmark further off than a few sigma stops pulling the mesh). With Gaussian noise and FLAME's unit-
variance coefficients, the prior weights lambda = 1 are the Bayesian values (measured: 1 for the
shape, 3 for the expression, see the defaults).

Several images of one person (`groups`): they share one shape vector beta_g (its prior counted once
per person, so more images pin it down better), each keeps its own camera, pose and expression.
The procedure (documented in `refine`): fit each image alone, fit the shared shape, leave out
images that disagree with the rest, refit. `smooth` adds, for consecutive images of a group (video
frames, in the given order), smooth * |q_i - q_{i+1}|^2 with q = (scale relative to the pair's
mean / UNIT_SCALE, s tx / UNIT_SHIFT, s ty / UNIT_SHIFT, pose / UNIT_POSE, expression): a still
head then keeps still (16 frames of a still head with the dlib noise model: pose jitter 1.75
degrees per frame unsmoothed, 0.93 at smooth 1, 0.27 at 10, 0.09 at 100; a moving head lags more
the larger it is, which is not measured here).

Optimisation: Adam in the units `UNIT_*` (camera scale relative to its start, translations in
normalised image units, radians, coefficient standard deviations), all images of a call in one
`tf.while_loop` (compiled with XLA for batches of more than `GRAPH_MAX_ROWS` rows, see there), with
a short learning-rate warm-up. Each group (an image alone is a group of one) keeps its best point
under the objective. A plateau, its best improving by less than
`tolerance` (relative) over `window` steps, sends it back to its best point with the learning rate
times LR_FACTOR; after LR_REDUCTIONS of those the next plateau stops it (the stopping rule); the
loop ends when every group has stopped, or at `steps`. The Geman-McClure scale starts wide for an
image far from its landmarks (ANNEAL_ADAPT times its median landmark distance, at most
ANNEAL_FACTOR c, a cap that falls to c over `anneal_steps` steps), so a far start is not mistaken
for a set of outliers; no group stops before all of its images are at the final scale.

Batches are padded to a few fixed sizes (`bucket_size`) and the traced loop is cached per head
model, so a new image count rarely traces or compiles again. Padding never changes a result: every
update is per image (per group), and a padded row is its own group with zero weights.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from flame import constants as C
from flame import lbs
from flame.layer import FlameLayer
from ringnet_tf import camera
from ringnet_tf.losses import ROBUST_KINDS, robust_landmark_loss
from ringnet_tf.params import NUM_CAM, ParamSpec

POSE_END = NUM_CAM + C.RINGNET_POSE_DIM  # the image variables: cam, pose, then expression

# Defaults chosen by measurement on a synthetic validation set (seed 7, 40 identities x 8, the
# bundled checkpoint's predictions as starts): median 3D error in mm with exact / noise-model
# landmarks; the legacy 200-step L1 refinement gave 0.822 / 0.941. From learning rate 0.1 and
# expression prior 1 (0.699 / 0.917), one value changed: sigma 0.01: 0.650 / 1.099, 0.03: 0.760 /
# 0.925; shape prior 0.3: 0.633 / 1.074, 3: 0.827 / 0.958; expression prior 0.3: 0.756 / 0.950,
# 3: 0.678 / 0.912; robust scale 0.1: 0.696 / 0.926, 0.15: 0.695 / 0.945; loss l2: 0.701 / 1.095,
# charbonnier: 0.694 / 0.951; learning rate 0.05: 0.731 / 0.951, 0.2: 0.695 / 0.914. Then learning
# rate 0.2 with expression prior 3: 0.675 / 0.905 (expression prior 10: 0.676 / 0.914). Where exact
# and noisy landmarks disagree (sigma, shape prior) the noisy ones decide: real detections are noisy.
DEFAULT_STEPS = 1000  # maximum; the stopping rule usually ends earlier
DEFAULT_LEARNING_RATE = 0.2
DEFAULT_SHAPE_PRIOR = 1.0
DEFAULT_EXPRESSION_PRIOR = 3.0
DEFAULT_SIGMA = 0.02  # landmark noise, in face sizes
DEFAULT_LOSS = "geman_mcclure"
DEFAULT_ROBUST_SCALE = 0.06  # rho's scale c, in face sizes (3 sigma)
DEFAULT_TOLERANCE = 1e-3  # relative improvement over the window below which an image stops
DEFAULT_WINDOW = 10
DEFAULT_ANNEAL_STEPS = 150
WARMUP_STEPS = 10.0
LR_FACTOR = 0.3  # learning-rate reduction on a plateau
LR_REDUCTIONS = 3  # plateaus answered by a reduction; the next one stops
ANNEAL_FACTOR = 10.0  # the widest Geman-McClure scale, in units of its final one
ANNEAL_ADAPT = 3.0  # the adapted scale: this many times the image's median landmark distance

# Outlier rule for shared shapes (see `flag_outliers`), set on synthetic validation groups of 8
# (seed 7), each with one image swapped for another identity's. Exact landmarks: 39 of 40 of those
# flagged; in unswapped groups 2 of 320 genuine images.
# Landmarks with the dlib noise model: 17 of 40 impostors flagged (the identity signal of 68 2D
# landmarks is about the size of a detector's noise); in same-person groups all 14 gross
# detector failures and 6 of the other 306 images.
OUTLIER_Z = 3.5  # robust z-score of the shared shape's cost within the group
OUTLIER_MIN_DELTA = 3.0  # and at least this cost (objective units: a log-likelihood ratio)
DELTA_MAD_FLOOR = 1.0  # floor of the robust spread
FAILED_FIT_ERROR = 0.12  # a single-image fit this far off (face sizes) is a failed detection
MIN_GROUP_FOR_Z = 3  # with fewer images there is no majority to disagree with

# The optimiser's units (Adam's steps are about learning_rate units at first, whatever the
# gradient's size): chosen so that one unit of each moves the landmarks by a similar few percent of
# the face, and a step of learning_rate units is well below the precision wanted. Camera scale:
# UNIT_SCALE of its starting value; translation: UNIT_SHIFT in normalised image coordinates;
# rotations: UNIT_POSE radians; shape and expression: their standard deviations.
UNIT_SCALE = 0.05
UNIT_SHIFT = 0.05
UNIT_POSE = 0.1

_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)

# Buckets of at most this many rows run the loop as a TensorFlow graph; larger ones compile it
# with XLA. XLA's loop is several times faster a step but costs seconds to compile once per
# (head model, bucket, loss), which a photo or a few never win back (demo.py refines all its
# images in one call). bench/refine_speed.py here (2 cores; bundled checkpoint, defaults): one
# image 3.4 s as a graph against 6.9 s with XLA's compilation, 0.26 s against 0.05 s on later
# calls; 8 images 4.1 s against 9.3 s, then 0.44 s against 0.13 s. Results agree to float rounding.
GRAPH_MAX_ROWS = 8


def bucket_size(n: int) -> int:
    """The padded batch size for n images: 1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, then
    multiples of 64 (at most a third of the rows are padding past 4)."""
    for b in _BUCKETS:
        if n <= b:
            return b
    return int(64 * np.ceil(n / 64))


@dataclasses.dataclass
class RefineResult:
    """What `refine` returns. B images, P parameters.

    params: [B, P] refined parameters (cam, pose, shape, expression).
    loss_before, loss_after: [B] the objective E_i at the start and the end (the data term plus
      the expression prior and, for an image alone, its shape prior; a group's shape prior is
      shared out equally among its images).
    error_before, error_after: [B] confidence-weighted mean landmark distance, in face sizes.
    steps: loop iterations run (with groups: summed over the single, shared and refit stages).
    image_steps: [B] steps each image ran before the stopping rule froze it (summed likewise).
    excluded: [B] bool: left out of their group's shared shape (they keep their single-image fit).
    reasons: [B] '' or why the image was excluded.
    single_error: [B] landmark error of each image fitted alone (groups only; else error_after).
    """

    params: np.ndarray
    loss_before: np.ndarray
    loss_after: np.ndarray
    error_before: np.ndarray
    error_after: np.ndarray
    steps: int
    image_steps: np.ndarray
    excluded: np.ndarray
    reasons: list[str]
    single_error: np.ndarray


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """Hyperparameters of one fitting stage (see the module docstring)."""

    steps: int = DEFAULT_STEPS
    learning_rate: float = DEFAULT_LEARNING_RATE
    shape_prior: float = DEFAULT_SHAPE_PRIOR
    expression_prior: float = DEFAULT_EXPRESSION_PRIOR
    sigma: float = DEFAULT_SIGMA
    loss: str = DEFAULT_LOSS
    robust_scale: float = DEFAULT_ROBUST_SCALE
    tolerance: float = DEFAULT_TOLERANCE
    window: int = DEFAULT_WINDOW
    anneal_steps: int = DEFAULT_ANNEAL_STEPS
    smooth: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in ROBUST_KINDS:
            raise ValueError(f"loss must be one of {ROBUST_KINDS}; got {self.loss!r}")
        if min(self.steps, self.anneal_steps) < 0 or self.window < 1:
            raise ValueError(f"steps, anneal_steps >= 0 and window >= 1; got {self.steps}, "
                             f"{self.anneal_steps}, {self.window}")
        for name in ("learning_rate", "sigma", "robust_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        for name in ("shape_prior", "expression_prior", "smooth", "tolerance"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")


class LandmarkDecoder:
    """FLAME's 68 landmarks only, for RingNet's 6-d pose: the same maths as `FlameLayer` (same
    contour lookup, same skinning shortcut), restricted to the few hundred vertices whose triangles
    carry a landmark, so a fitting step does not blend all V vertices."""

    def __init__(self, flame: FlameLayer):
        def value(v) -> np.ndarray:
            return np.asarray(keras.ops.convert_to_numpy(v))

        v = flame.num_vertices
        contour_tri, static_tri = value(flame.contour_tri), value(flame.static_tri)
        used = np.unique(np.concatenate([contour_tri.ravel(), static_tri.ravel()]))
        cols = np.concatenate([c * v + used for c in range(3)])  # planar columns of the subset
        self.num_used = len(used)
        self.template = tf.constant(value(flame.v_template)[cols])
        self.basis = tf.constant(value(flame.basis)[:, cols])
        self.jaw_weights = tf.constant(value(flame.lbs_weights)[used, C.JAW])
        self.j_template = tf.constant(value(flame.j_template))
        self.j_basis = tf.constant(value(flame.j_basis))
        self.contour_tri = tf.constant(np.searchsorted(used, contour_tri).astype(np.int32))
        self.static_tri = tf.constant(np.searchsorted(used, static_tri).astype(np.int32))
        self.contour_bary = tf.constant(value(flame.contour_bary))
        self.static_bary = tf.constant(value(flame.static_bary))

    def __call__(self, shape: tf.Tensor, expression: tf.Tensor, pose: tf.Tensor) -> tf.Tensor:
        """shape [B, S], expression [B, E], pose [B, 6] -> landmarks [B, 68, 3] (FlameLayer's)."""
        batch = tf.shape(shape)[0]
        rot = lbs.batch_rodrigues(tf.reshape(lbs.full_pose(pose), [batch, C.NUM_JOINTS, 3]))
        coeffs = tf.concat([shape, expression], axis=-1)
        jaw_feats = lbs.pose_features(rot)[:, 9 * (C.JAW - 1):9 * C.JAW]
        v_posed = tf.reshape(self.template + tf.matmul(tf.concat([coeffs, jaw_feats], -1), self.basis),
                             [batch, 3, self.num_used])
        joints = tf.reshape(self.j_template + tf.matmul(coeffs, self.j_basis), [batch, C.NUM_JOINTS, 3])
        rows = lbs.contour_rows(rot)
        n_static = C.NUM_STATIC_LANDMARKS
        tri = tf.concat([tf.gather(self.contour_tri, rows),
                         tf.broadcast_to(self.static_tri, [batch, n_static, 3])], axis=1)
        bary = tf.concat([tf.gather(self.contour_bary, rows),
                          tf.broadcast_to(self.static_bary, [batch, n_static, 3])], axis=1)
        ids = tf.reshape(tri, [batch, 3 * C.NUM_LANDMARKS])
        corners = tf.gather(v_posed, ids, axis=2, batch_dims=1)  # [B, 3, 3L] planar
        posed = lbs.skin_global_and_jaw(corners, tf.gather(self.jaw_weights, ids), rot[:, C.ROOT],
                                        rot[:, C.JAW], joints)
        return lbs.barycentric_points(tf.reshape(posed, [batch, C.NUM_LANDMARKS, 3, 3]), bary)


class _Fitter:
    """The fitting loop for one head model, traced as a graph and compiled with XLA (each on
    first use; cached: see `_fitter`)."""

    def __init__(self, flame: FlameLayer):
        self.decoder = LandmarkDecoder(flame)
        self.num_shape, self.num_expression = flame.num_shape, flame.num_expression
        # No autograph: the loop is an explicit tf.while_loop, and autograph would re-read this
        # file's source at trace time.
        self._runs = {jit: tf.function(self._loop, jit_compile=jit, autograph=False)
                      for jit in (False, True)}

    def terms(self, y, z, target, face, gid, nxt, has_next, scale_img, hyper):
        """The objective's pieces. y [N, 9+E] image variables in natural units (times scale_img
        gives cam, pose, expression); z [N, S] group shapes; target [N, 68, 3] normalised;
        face [N]; gid [N] group slot per image; nxt [N] next image of the group; has_next [N].
        Returns pred [N, 68, 2] projected landmarks (normalised), sq [N, 68] their squared
        distances to the targets (face sizes), expression prior [N], smoothness [N], shape prior
        per slot [N]."""
        x = y * scale_img
        cam, pose, expr = x[:, :NUM_CAM], x[:, NUM_CAM:POSE_END], x[:, POSE_END:]
        shape = tf.gather(z, gid)
        pred = camera.project_normalised(self.decoder(shape, expr, pose), cam)
        # For the anneal's median and the error report (the loss, losses.py's, takes pred).
        sq = tf.reduce_sum(tf.square(pred - target[..., :2]), -1) / tf.square(face)[:, None]
        # Priors per image (per group), not losses.l2_prior: that one averages over the batch.
        expr_prior = 0.5 * hyper["expression_prior"] * tf.reduce_sum(tf.square(expr), -1)
        # Temporal smoothness: differences to the next image of the group in the optimiser's
        # units (relative scale / UNIT_SCALE, image shift s t / UNIT_SHIFT, rotations / UNIT_POSE,
        # coefficients), so that one weight balances them.
        s = cam[:, 0]
        q = tf.concat([tf.stack([s, s * cam[:, 1] / UNIT_SHIFT, s * cam[:, 2] / UNIT_SHIFT], -1),
                       pose / UNIT_POSE, expr], -1)
        qn = tf.gather(q, nxt)
        rel_s = (q[:, 0] - qn[:, 0]) / (0.5 * (tf.abs(q[:, 0]) + tf.abs(qn[:, 0])) + 1e-6)
        diff = tf.concat([rel_s[:, None] / UNIT_SCALE, q[:, 1:] - qn[:, 1:]], -1)
        smooth = hyper["smooth"] * has_next * tf.reduce_sum(tf.square(diff), -1)
        shape_prior = 0.5 * hyper["shape_prior"] * tf.reduce_sum(tf.square(z), -1)
        return pred, sq, expr_prior, smooth, shape_prior

    def _loop(self, y, z, target, face, gid, nxt, has_next, scale_img, real, slot_used, hyper,
              max_steps, window: int, kind: str):
        n = int(y.shape[0])  # static: one trace per bucket
        c_final = hyper["robust_scale"]
        w = target[..., 2]

        def data(pred, c):
            """[N] E_i's landmark term: the sum over the landmarks (the loss is their mean)."""
            return (C.NUM_LANDMARKS * robust_landmark_loss(pred, target, c, kind, face_size=face)
                    / tf.square(hyper["sigma"]))

        def slots_of(per_image, prior):
            return tf.math.unsorted_segment_sum(per_image * real, gid, n) + prior * slot_used

        def adaptive_scale(sq, t):
            """[N, 1]: ANNEAL_ADAPT x the image's median landmark distance, at least c and at most
            a cap that falls from ANNEAL_FACTOR c to c over `anneal_steps` steps: a far start sees
            a wide (near-quadratic) penalty that narrows as the fit improves, and every image has
            the final one after the anneal."""
            if kind != "geman_mcclure":
                return c_final
            frac = tf.minimum(tf.cast(t, tf.float32) / tf.maximum(hyper["anneal_steps"], 1.0), 1.0)
            cap = c_final * ANNEAL_FACTOR ** (1.0 - frac)
            med = tf.sqrt(tf.sort(tf.stop_gradient(sq), axis=-1)[:, C.NUM_LANDMARKS // 2])
            return tf.clip_by_value(ANNEAL_ADAPT * med, c_final, cap)[:, None]

        def report(y, z):
            pred, sq, expr_prior, smooth, prior = self.terms(y, z, target, face, gid, nxt, has_next,
                                                             scale_img, hyper)
            fit = data(pred, c_final) + expr_prior
            members = tf.math.unsorted_segment_sum(real, gid, n)
            share = tf.gather(prior / tf.maximum(members, 1.0), gid)
            error = tf.reduce_sum(w * tf.sqrt(sq + 1e-12), -1) / tf.maximum(tf.reduce_sum(w, -1), 1e-6)
            return (fit + smooth + share) * real, fit * real, error

        before, _, err_before = report(y, z)
        b1, b2, eps = 0.9, 0.999, 1e-8

        def body(t, y, z, my, vy, mz, vz, active, frozen_at, hist, since, lr_scale, best, best_y,
                 best_z):
            with tf.GradientTape() as tape:
                tape.watch([y, z])
                pred, sq, expr_prior, smooth, prior = self.terms(y, z, target, face, gid, nxt,
                                                                 has_next, scale_img, hyper)
                rest = expr_prior + smooth
                c = adaptive_scale(sq, t)
                total = tf.reduce_sum(slots_of(data(pred, c) + rest, prior))
            gy, gz = tape.gradient(total, [y, z])
            final = slots_of(data(pred, c_final) + rest, prior)
            # Keep each group's best point so far under the final objective (Adam is not monotone,
            # and the adapted scale is not the final one).
            better = final < best
            best = tf.where(better, final, best)
            best_y = tf.where(tf.gather(better, gid)[:, None], y, best_y)
            best_z = tf.where(better[:, None], z, best_z)
            # A plateau: the best improved by less than `tolerance` (relative) over the last
            # `window` steps (since the last plateau), all of the group's images at the final
            # scale (before that the final objective can stall on a far start while the wider one
            # still improves). On a plateau the group goes back to its best point with a smaller
            # learning rate (Adam hovers at the scale of its step), LR_REDUCTIONS times; the next
            # plateau stops it.
            wide = tf.cast(tf.reduce_any(tf.broadcast_to(c > c_final, [n, 1]), -1), tf.float32)
            settled = tf.math.unsorted_segment_sum(wide * real, gid, n) == 0
            old = hist[t % window]
            plateau = (active & settled & (t - since >= window)
                       & (old - best <= hyper["tolerance"] * tf.abs(old)))
            reduce = plateau & (lr_scale > LR_FACTOR ** LR_REDUCTIONS * 1.01)
            stop = plateau & ~reduce
            lr_scale = tf.where(reduce, lr_scale * LR_FACTOR, lr_scale)
            since = tf.where(plateau, t, since)
            frozen_at = tf.where(stop, t, frozen_at)
            active = active & ~stop
            hist = tf.tensor_scatter_nd_update(hist, [[t % window]], best[None])
            back_img = tf.gather(reduce, gid)[:, None]
            y = tf.where(back_img, best_y, y)
            z = tf.where(reduce[:, None], best_z, z)
            # This step's gradient is not at the restored point: those groups skip it.
            moving = active & ~reduce
            act_img = tf.cast(tf.gather(moving, gid), tf.float32)[:, None]
            act_slot = tf.cast(moving, tf.float32)[:, None]
            step = tf.cast(t + 1, tf.float32)
            # A linear warm-up: Adam's first steps are about lr in every coordinate, whatever the
            # gradient; from a good start (e.g. the single fits before a shared one) they would
            # throw it away.
            lr = hyper["learning_rate"] * tf.minimum(step / WARMUP_STEPS, 1.0) * lr_scale

            # Own Adam, not keras.optimizers.Adam: per-group rates and freezing inside one XLA while_loop.
            def adam(p, g, m, v, act, rate):
                m2 = b1 * m + (1 - b1) * g
                v2 = b2 * v + (1 - b2) * g * g
                upd = rate * (m2 / (1 - b1 ** step)) / (tf.sqrt(v2 / (1 - b2 ** step)) + eps)
                return p - act * upd, act * m2 + (1 - act) * m, act * v2 + (1 - act) * v

            y, my, vy = adam(y, gy, my, vy, act_img, tf.gather(lr, gid)[:, None])
            z, mz, vz = adam(z, gz, mz, vz, act_slot, lr[:, None])
            return (t + 1, y, z, my, vy, mz, vz, active, frozen_at, hist, since, lr_scale, best,
                    best_y, best_z)

        def cond(t, y, z, my, vy, mz, vz, active, *_):
            return (t < max_steps) & tf.reduce_any(active)

        active = slot_used > 0
        init = (tf.constant(0), y, z, tf.zeros_like(y), tf.zeros_like(y), tf.zeros_like(z),
                tf.zeros_like(z), active, tf.zeros([n], tf.int32), tf.zeros([window, n]),
                tf.zeros([n], tf.int32), tf.ones([n]), tf.fill([n], np.inf), y, z)
        (t, y, z, *_, active, frozen_at, _, _, _, best, best_y,
         best_z) = tf.while_loop(cond, body, init)
        frozen_at = tf.where(active, t, frozen_at)
        # The best point seen (none when no step ran).
        found = tf.math.is_finite(best)
        y = tf.where(tf.gather(found, gid)[:, None], best_y, y)
        z = tf.where(found[:, None], best_z, z)
        after, fit_after, err_after = report(y, z)
        return {"y": y, "z": z, "before": before, "after": after, "err_before": err_before,
                "err_after": err_after, "fit_after": fit_after,
                "image_steps": tf.gather(frozen_at, gid), "steps": t}

    def fit(self, theta: np.ndarray, target: np.ndarray, face: np.ndarray, groups: np.ndarray,
            order_next: np.ndarray, settings: FitSettings) -> dict[str, Any]:
        """One fitting stage. theta [B, P] start; target [B, 68, 3] normalised; face [B];
        groups [B] int; order_next [B] index of the next image of the group or -1. The loop is
        XLA-compiled for buckets of more than GRAPH_MAX_ROWS rows, a graph otherwise.
        Shapes start at their group's mean. Returns NumPy arrays (params [B, P] and the report)."""
        spec = ParamSpec(self.num_shape, self.num_expression)
        b = len(theta)
        n = bucket_size(b)
        parts = spec.split(theta)
        _, slot = np.unique(groups, return_inverse=True)
        num_groups = int(slot.max()) + 1 if b else 0
        gid = np.concatenate([slot, num_groups + np.arange(n - b)]).astype(np.int32)
        z = np.zeros((n, self.num_shape), np.float32)
        counts = np.bincount(slot, minlength=num_groups)
        np.add.at(z, slot, parts["shape"])
        z[:num_groups] /= counts[:, None]
        img = np.concatenate([parts["cam"], parts["pose"], parts["expression"]], -1)
        s0 = np.where(np.abs(parts["cam"][:, 0]) > 1e-6, np.abs(parts["cam"][:, 0]), 1.0)
        scale_img = np.ones_like(img)
        scale_img[:, 0] = UNIT_SCALE * s0
        scale_img[:, 1:NUM_CAM] = (UNIT_SHIFT / s0)[:, None]
        scale_img[:, NUM_CAM:POSE_END] = UNIT_POSE
        pad = n - b
        scale_img = np.concatenate([scale_img, np.ones((pad, img.shape[1]), np.float32)])
        y = np.concatenate([img, np.zeros((pad, img.shape[1]), np.float32)]) / scale_img
        y[b:, 0] = 1.0  # a harmless camera for padded rows
        target_p = np.concatenate([target, np.zeros((pad, C.NUM_LANDMARKS, 3), np.float32)])
        face_p = np.concatenate([face, np.ones(pad, np.float32)])
        nxt = np.concatenate([np.where(order_next >= 0, order_next, np.arange(b)), np.arange(b, n)])
        has_next = np.concatenate([(order_next >= 0), np.zeros(pad, bool)]).astype(np.float32)
        real = np.concatenate([np.ones(b), np.zeros(pad)]).astype(np.float32)
        slot_used = np.zeros(n, np.float32)
        slot_used[:num_groups] = 1.0
        hyper = {k: tf.constant(float(getattr(settings, k)), tf.float32) for k in (
            "learning_rate", "shape_prior", "expression_prior", "sigma", "robust_scale",
            "tolerance", "smooth")}
        hyper["anneal_steps"] = tf.constant(float(settings.anneal_steps), tf.float32)
        f32 = lambda a: tf.constant(np.asarray(a, np.float32))  # noqa: E731
        run = self._runs[n > GRAPH_MAX_ROWS]
        out = run(f32(y), f32(z), f32(target_p), f32(face_p), tf.constant(gid),
                  tf.constant(nxt.astype(np.int32)), f32(has_next), f32(scale_img), f32(real),
                  f32(slot_used), hyper, tf.constant(int(settings.steps)), int(settings.window),
                  settings.loss)
        out = {k: v.numpy() for k, v in out.items()}
        x = (out["y"] * scale_img)[:b]
        shape = out["z"][gid[:b]]
        params = spec.join({"cam": x[:, :NUM_CAM], "pose": x[:, NUM_CAM:POSE_END],
                            "shape": shape, "expression": x[:, POSE_END:]}, np.concatenate)
        return {"params": params.astype(np.float32), "before": out["before"][:b],
                "after": out["after"][:b], "err_before": out["err_before"][:b],
                "err_after": out["err_after"][:b], "fit_after": out["fit_after"][:b],
                "image_steps": out["image_steps"][:b],
                "steps": int(out["steps"])}


_FITTERS: "collections.OrderedDict[tuple, _Fitter]" = collections.OrderedDict()
_MAX_FITTERS = 4  # head models whose compiled loops are kept (the least recently used goes)


def _content_key(flame: FlameLayer) -> tuple:
    """The layer's sizes and a hash of its arrays: a head model loaded again (another network
    object, the same arrays) finds its compiled loop; different arrays never share one."""
    digest = hashlib.blake2b(digest_size=16)
    for w in flame.weights:
        digest.update(np.ascontiguousarray(w.numpy()).tobytes())
    return flame.num_shape, flame.num_expression, tuple(w.shape for w in flame.weights), digest.hexdigest()


def _fitter(flame: FlameLayer) -> _Fitter:
    """One compiled loop per head model's content, reused across calls and across loads of the
    same model (XLA compiles once per bucket; hashing the arrays costs milliseconds)."""
    key = _content_key(flame)
    fitter = _FITTERS.get(key)
    if fitter is None:
        fitter = _FITTERS[key] = _Fitter(flame)
        while len(_FITTERS) > _MAX_FITTERS:
            _FITTERS.popitem(last=False)
    _FITTERS.move_to_end(key)
    return fitter


def face_sizes(points: np.ndarray) -> np.ndarray:
    """Face size per image: the larger side of the 5-95 % range of its points (robust to a few
    outliers). points [B, 68, 2] -> [B]."""
    lo, hi = np.percentile(points, 5, axis=1), np.percentile(points, 95, axis=1)
    return np.maximum((hi - lo).max(-1), 1e-6).astype(np.float32)


def _next_in_group(groups: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """[B] index of the next kept image of the same group, in the given order, or -1."""
    nxt = np.full(len(groups), -1, np.int64)
    last: dict[int, int] = {}
    for i in range(len(groups)):
        if keep[i]:
            g = int(groups[i])
            if g in last:
                nxt[last[g]] = i
            last[g] = i
    return nxt


def flag_outliers(groups: np.ndarray, single_error: np.ndarray, single_fit: np.ndarray,
                  shared_fit: np.ndarray) -> list[str]:
    """The outlier rule: [B] '' or the reason an image is left out of its group's shape.

    groups [B]; single_error [B]: landmark error of the image fitted alone (face sizes);
    single_fit, shared_fit [B]: its landmark term plus expression prior (the objective without
    the shape prior and smoothness) fitted alone and with the group's shape.

    1. Failed fit: alone, its landmarks fit no face: single_error > FAILED_FIT_ERROR.
    2. Disagreement (groups of at least MIN_GROUP_FOR_Z images): delta_i = shared_fit_i -
       single_fit_i, what the shared shape costs the image (a log-likelihood ratio). Flagged when
       delta_i > OUTLIER_MIN_DELTA and its robust z-score within the group, (delta_i - median) /
       max(1.4826 MAD, DELTA_MAD_FLOOR), exceeds OUTLIER_Z. A different person's face, or a
       detection on something else, fits its own shape well and the others' badly.
    Groups of 1-2 images get rule 1 only (two images cannot say which of them is the odd one).
    """
    reasons = [""] * len(groups)
    delta = np.asarray(shared_fit, np.float64) - np.asarray(single_fit, np.float64)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        if len(idx) < 2:
            continue
        for i in idx:
            if single_error[i] > FAILED_FIT_ERROR:
                reasons[i] = (f"failed fit: landmark error {single_error[i]:.3f} face sizes alone "
                              f"(> {FAILED_FIT_ERROR})")
        if len(idx) < MIN_GROUP_FOR_Z:
            continue
        d = delta[idx]
        med = np.median(d)
        mad = max(1.4826 * np.median(np.abs(d - med)), DELTA_MAD_FLOOR)
        for i, di in zip(idx, d):
            z = (di - med) / mad
            if not reasons[i] and di > OUTLIER_MIN_DELTA and z > OUTLIER_Z:
                reasons[i] = (f"disagrees with its group: the shared shape raises its objective by "
                              f"{di:.1f} (group median {med:.1f}, robust z {z:.1f})")
    return reasons


def refine(flame: FlameLayer, params: np.ndarray, landmarks: np.ndarray, image_size: int,
           steps: int = DEFAULT_STEPS, groups: np.ndarray | None = None, smooth: float = 0.0, *,
           learning_rate: float = DEFAULT_LEARNING_RATE, shape_prior: float = DEFAULT_SHAPE_PRIOR,
           expression_prior: float = DEFAULT_EXPRESSION_PRIOR, sigma: float = DEFAULT_SIGMA,
           loss: str = DEFAULT_LOSS, robust_scale: float = DEFAULT_ROBUST_SCALE,
           tolerance: float = DEFAULT_TOLERANCE, window: int = DEFAULT_WINDOW,
           anneal_steps: int = DEFAULT_ANNEAL_STEPS, prune_outliers: bool = True) -> RefineResult:
    """Refines parameters against landmarks (see the module docstring for the objective).

    Args:
      flame: the head model's layer.
      params: [B, P] RingNet parameters (cam, pose, shape, expression) to start from.
      landmarks: [B, 68, 3] target landmarks (x, y in pixels of the image_size crop, confidence).
      steps: maximum Adam steps per stage (the stopping rule may end sooner; 0: report only).
      groups: None (each image alone) or [B] int: images with the same id share one shape.
        Then: (1) every image is fitted alone; (2) each group is fitted with one shape, starting
        from the single fits (its shape the mean of theirs); (3) `flag_outliers` flags failed
        fits and images that the shared shape costs far more than the rest of their group; (4)
        groups with flagged images are refitted without them, and the flagged images keep their
        single-image fit.
        `prune_outliers=False` skips (3) and (4).
      smooth: weight of the temporal smoothness between consecutive images of a group (needs
        groups; 0: none).
      The other keywords: see `FitSettings` and the module's defaults.
    Returns:
      RefineResult.
    """
    params = np.asarray(params, np.float32)
    landmarks = np.asarray(landmarks, np.float32)
    b = len(params)
    spec = ParamSpec(flame.num_shape, flame.num_expression)
    if params.ndim != 2 or params.shape[1] != spec.total:
        raise ValueError(f"params must be [B, {spec.total}]; got {params.shape}")
    if landmarks.shape != (b, C.NUM_LANDMARKS, 3):
        raise ValueError(f"landmarks must be [{b}, {C.NUM_LANDMARKS}, 3]; got {landmarks.shape}")
    if groups is None and smooth:
        raise ValueError("smooth needs groups (consecutive images of a group are smoothed)")
    if groups is not None:  # checked before any fitting: a bad argument costs no compute
        groups = np.asarray(groups)
        if groups.shape != (b,):
            raise ValueError(f"groups must be [{b}]; got {groups.shape}")
    settings = FitSettings(steps=int(steps), learning_rate=learning_rate, shape_prior=shape_prior,
                           expression_prior=expression_prior, sigma=sigma, loss=loss,
                           robust_scale=robust_scale, tolerance=tolerance, window=window,
                           anneal_steps=anneal_steps)
    none = np.zeros(b, bool)
    if b == 0:
        empty = np.zeros(0, np.float32)
        return RefineResult(params, empty, empty, empty, empty, 0, np.zeros(0, np.int64), none, [], empty)
    xy = camera.pixels_to_normalised(landmarks[..., :2], image_size)
    target = np.concatenate([xy, landmarks[..., 2:]], -1).astype(np.float32)
    face = face_sizes(xy)
    fitter = _fitter(flame)
    alone = np.arange(b)
    no_next = np.full(b, -1, np.int64)
    single = fitter.fit(params, target, face, alone, no_next, settings)
    if groups is None:
        return _result(single, single, none, [""] * b)
    shared_settings = dataclasses.replace(settings, smooth=float(smooth))
    keep = np.ones(b, bool)
    shared = fitter.fit(single["params"], target, face, groups, _next_in_group(groups, keep),
                        shared_settings)
    total_steps = single["steps"] + shared["steps"]
    image_steps = single["image_steps"] + shared["image_steps"]
    reasons = [""] * b
    if prune_outliers:
        reasons = flag_outliers(groups, single["err_after"], single["fit_after"], shared["fit_after"])
        keep = np.array([not r for r in reasons])
        if not keep.all():
            # Refit the affected groups without their outliers (results are per group, so the
            # other groups' fits stand); each outlier becomes a group of its own.
            idx = np.flatnonzero(np.isin(groups, groups[~keep]) & keep)
            if len(idx):
                refit = fitter.fit(single["params"][idx], target[idx], face[idx], groups[idx],
                                   _next_in_group(groups[idx], np.ones(len(idx), bool)),
                                   shared_settings)
                for k in ("params", "after", "err_after"):
                    shared[k][idx] = refit[k]
                total_steps += refit["steps"]
                image_steps[idx] += refit["image_steps"]
            for k in ("params", "after", "err_after"):
                shared[k][~keep] = single[k][~keep]
    shared["steps"], shared["image_steps"] = total_steps, image_steps
    return _result(single, shared, ~keep, reasons)


def _result(single: dict[str, Any], final: dict[str, Any], excluded: np.ndarray,
            reasons: list[str]) -> RefineResult:
    return RefineResult(params=final["params"], loss_before=single["before"],
                        loss_after=final["after"], error_before=single["err_before"],
                        error_after=final["err_after"], steps=final["steps"],
                        image_steps=final["image_steps"], excluded=excluded, reasons=reasons,
                        single_error=single["err_after"])
