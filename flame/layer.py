"""The FLAME decoder as a Keras layer: fixed arrays held as non-trainable weights, maths in `flame.lbs`.

The arrays are weights (not Python constants) so that a model holding this layer saves, loads and
exports to a SavedModel with the head model inside. A SavedModel or checkpoint built with a real
FLAME therefore contains FLAME's arrays, which FLAME's licence forbids redistributing.
"""
from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from flame import constants as C
from flame import lbs
from flame.model import FlameModel


@keras.saving.register_keras_serializable(package="flame")
class FlameLayer(keras.layers.Layer):
    """FLAME forward pass: parameters in, vertices, joints and landmarks out. Always float32.

    Build it from a `FlameModel` (`FlameLayer(model, num_shape=100, num_expression=50)`); a layer
    re-created from its config has the right weight shapes and gets its values from the saved weights.

    Call: `layer(shape, expression, pose, translation=None)` with
      shape: [B, num_shape] identity coefficients (FLAME's first num_shape components);
      expression: [B, num_expression] expression coefficients;
      pose: [B, 6] RingNet pose (global, jaw) or [B, 15] FLAME pose (global, neck, jaw, eyes),
        axis-angle radians;
      translation: optional [B, 3] added to every output point.
    Returns a dict:
      vertices: [B, V, 3]; joints: [B, 5, 3] posed joints;
      landmarks: [B, 68, 3] iBUG order: 17 contour points (row chosen by head yaw), then 51 static;
      now_landmarks: [B, 7, 3] NoW's 7 landmarks.
    """

    def __init__(self, model: FlameModel | None = None, num_shape: int = 100,
                 num_expression: int = 50, *, num_vertices: int | None = None,
                 num_faces: int | None = None, fingerprint: str | None = None, **kwargs: Any):
        kwargs.pop("dtype", None)  # FLAME stays float32 whatever the global policy is
        super().__init__(dtype="float32", **kwargs)
        if not 1 <= num_shape <= C.NUM_SHAPE_TOTAL:
            raise ValueError(f"num_shape must be in [1, {C.NUM_SHAPE_TOTAL}]; got {num_shape}")
        if not 1 <= num_expression <= C.NUM_EXPRESSION_TOTAL:
            raise ValueError(
                f"num_expression must be in [1, {C.NUM_EXPRESSION_TOTAL}]; got {num_expression}")
        if model is not None:
            num_vertices, num_faces = model.num_vertices, model.num_faces
            fingerprint = model.fingerprint()
            if model.num_shape < num_shape or model.num_expression < num_expression:
                raise ValueError(
                    f"{model.source} has {model.num_shape} identity and {model.num_expression} "
                    f"expression components; asked for {num_shape} and {num_expression}")
        if num_vertices is None or num_faces is None:
            raise ValueError("FlameLayer needs a FlameModel (or num_vertices and num_faces from a config)")
        self.num_shape = int(num_shape)
        self.num_expression = int(num_expression)
        self.num_vertices = int(num_vertices)
        self.num_faces = int(num_faces)
        self.fingerprint = fingerprint
        self._create_weights()
        if model is not None:
            self._assign(model)

    def _const(self, name: str, shape: tuple[int, ...], dtype: str = "float32") -> keras.Variable:
        return self.add_weight(name=name, shape=shape, dtype=dtype, trainable=False,
                               initializer="zeros")

    def _create_weights(self) -> None:
        v3 = 3 * self.num_vertices
        k = self.num_shape + self.num_expression
        self.v_template = self._const("v_template", (v3,))
        # Blend shapes and pose correctives as two bases: v = template + [coeffs, jaw feats] @ basis
        # + [neck, eye feats] @ basis_rest. RingNet's 6-d pose leaves neck and eyes at identity,
        # whose features are then exactly zero, so its path needs only the first product.
        # Template and bases are planar (all x, then all y, then all z): lbs.skin and
        # lbs.skin_global_and_jaw take points as [B, 3, N] (see lbs._affine_rows for why).
        self.basis = self._const("basis", (k + 9, v3))
        self.basis_rest = self._const("basis_rest", (C.NUM_POSE_FEATURES - 9, v3))
        # Joints are linear in the coefficients (the regressor is applied to the shaped template),
        # so they are precomputed as a template plus a [K, J*3] basis instead of regressing V points.
        self.j_template = self._const("j_template", (3 * C.NUM_JOINTS,))
        self.j_basis = self._const("j_basis", (k, 3 * C.NUM_JOINTS))
        self.lbs_weights = self._const("lbs_weights", (self.num_vertices, C.NUM_JOINTS))
        self.faces = self._const("faces", (self.num_faces, 3), "int32")
        self.static_tri = self._const("static_tri", (C.NUM_STATIC_LANDMARKS, 3), "int32")
        self.static_bary = self._const("static_bary", (C.NUM_STATIC_LANDMARKS, 3))
        self.contour_tri = self._const(
            "contour_tri", (C.CONTOUR_NUM_ROWS, C.NUM_CONTOUR_LANDMARKS, 3), "int32")
        self.contour_bary = self._const(
            "contour_bary", (C.CONTOUR_NUM_ROWS, C.NUM_CONTOUR_LANDMARKS, 3))
        self.built = True

    def _assign(self, m: FlameModel) -> None:
        if tuple(int(p) for p in m.parents) != C.PARENTS:
            raise ValueError(f"{m.source}: kinematic tree {list(m.parents)} is not FLAME's {list(C.PARENTS)}")
        v = m.num_vertices
        dirs = np.concatenate([m.shapedirs[:, :, :self.num_shape],
                               m.exprdirs[:, :, :self.num_expression]], axis=-1)  # [V, 3, K]
        # posedirs columns: 9 per joint in order neck, jaw, left eye, right eye.
        jaw_cols = slice(9 * (C.JAW - 1), 9 * C.JAW)
        def planar(arr):  # [V, 3, K] -> [K, 3 * V], coordinate-major columns
            return arr.transpose(2, 1, 0).reshape(arr.shape[-1], 3 * v)

        basis = planar(np.concatenate([dirs, m.posedirs[:, :, jaw_cols]], axis=-1))
        rest = planar(np.delete(m.posedirs, np.arange(36)[jaw_cols], axis=-1))
        j_basis = np.einsum("jv,vck->kjc", m.j_regressor, dirs).reshape(dirs.shape[-1], -1)
        faces = np.asarray(m.faces, np.int64)
        values = [
            (self.v_template, m.v_template.T.reshape(-1)),
            (self.basis, basis),
            (self.basis_rest, rest),
            (self.j_template, (m.j_regressor @ m.v_template).reshape(-1)),
            (self.j_basis, j_basis),
            (self.lbs_weights, m.weights),
            (self.faces, faces),
            (self.static_tri, faces[m.static_lmk_faces]),
            (self.static_bary, m.static_lmk_bary),
            (self.contour_tri, faces[m.dynamic_lmk_faces]),
            (self.contour_bary, m.dynamic_lmk_bary),
        ]
        for var, value in values:
            var.assign(np.asarray(value).astype(var.dtype))

    def call(self, shape: tf.Tensor, expression: tf.Tensor, pose: tf.Tensor,
             translation: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        if shape.shape[-1] != self.num_shape or expression.shape[-1] != self.num_expression:
            raise ValueError(
                f"FlameLayer expects shape [B, {self.num_shape}] and expression "
                f"[B, {self.num_expression}]; got {shape.shape} and {expression.shape}")
        batch = tf.shape(shape)[0]
        rot_mats = lbs.batch_rodrigues(tf.reshape(lbs.full_pose(pose), [batch, C.NUM_JOINTS, 3]))
        coeffs = tf.concat([shape, expression], axis=-1)
        feats = lbs.pose_features(rot_mats)  # [B, 36]: neck, jaw, left eye, right eye
        jaw_feats = feats[:, 9 * (C.JAW - 1):9 * C.JAW]
        offsets = tf.matmul(tf.concat([coeffs, jaw_feats], axis=-1), self.basis)
        if pose.shape[-1] == C.FULL_POSE_DIM:
            rest_feats = tf.concat([feats[:, :9 * (C.JAW - 1)], feats[:, 9 * C.JAW:]], axis=-1)
            offsets += tf.matmul(rest_feats, self.basis_rest)
        v_posed = tf.reshape(self.v_template + offsets, [batch, 3, self.num_vertices])  # planar
        joints = tf.reshape(self.j_template + tf.matmul(coeffs, self.j_basis),
                            [batch, C.NUM_JOINTS, 3])
        world_rots, posed_joints, skin_trans = lbs.rigid_transforms(rot_mats, joints)

        # The 68 landmarks' triangle corners (the contour row chosen by the head's yaw, then the
        # static points), gathered before skinning: skinning is per point, so skinning just these
        # 204 points gives exactly the corners of the posed mesh without reading it again.
        rows = lbs.contour_rows(rot_mats)
        num_lmk = C.NUM_LANDMARKS
        tri = tf.concat([tf.gather(self.contour_tri, rows),
                         tf.broadcast_to(self.static_tri, [batch, C.NUM_STATIC_LANDMARKS, 3])], axis=1)
        bary = tf.concat([tf.gather(self.contour_bary, rows),
                          tf.broadcast_to(self.static_bary, [batch, C.NUM_STATIC_LANDMARKS, 3])], axis=1)
        ids = tf.reshape(tri, [batch, 3 * num_lmk])
        corners = tf.gather(v_posed, ids, axis=2, batch_dims=1)  # [B, 3, 3L] planar

        if pose.shape[-1] == C.FULL_POSE_DIM:
            def pose_points(points, weights):
                return lbs.skin(points, weights, world_rots, skin_trans)
        else:  # neck and eyes at identity: the exact shortcut
            def pose_points(points, weights):
                return lbs.skin_global_and_jaw(points, weights[..., C.JAW], rot_mats[:, C.ROOT],
                                               rot_mats[:, C.JAW], joints)
        vertices = pose_points(v_posed, self.lbs_weights)
        corners = pose_points(corners, tf.gather(self.lbs_weights, ids))
        landmarks = lbs.barycentric_points(tf.reshape(corners, [batch, num_lmk, 3, 3]), bary)
        if translation is not None:
            vertices += translation[:, None, :]
            landmarks += translation[:, None, :]
            posed_joints += translation[:, None, :]
        static = landmarks[:, C.NUM_CONTOUR_LANDMARKS:]
        return {
            "vertices": vertices,
            "joints": posed_joints,
            "landmarks": landmarks,
            "now_landmarks": tf.gather(static, C.NOW_LANDMARKS_IN_STATIC, axis=1),
        }

    def compute_output_spec(self, shape, expression, pose, translation=None):
        batch = shape.shape[0]
        spec = lambda *dims: keras.KerasTensor((batch, *dims), dtype="float32")  # noqa: E731
        return {
            "vertices": spec(self.num_vertices, 3),
            "joints": spec(C.NUM_JOINTS, 3),
            "landmarks": spec(C.NUM_LANDMARKS, 3),
            "now_landmarks": spec(C.NUM_NOW_LANDMARKS, 3),
        }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_shape=self.num_shape, num_expression=self.num_expression,
                      num_vertices=self.num_vertices, num_faces=self.num_faces,
                      fingerprint=self.fingerprint)
        return config

    def faces_numpy(self) -> np.ndarray:
        """[F, 3] int64 triangle vertex indices (for mesh export)."""
        return np.asarray(keras.ops.convert_to_numpy(self.faces), np.int64)
