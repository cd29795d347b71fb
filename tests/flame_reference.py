"""An independent, deliberately plain NumPy FLAME forward pass used as truth in tests.

It follows the textbook definition step by step (SciPy rotations, the dense joint regressor on the
shaped mesh, 4x4 transforms chained along the tree, dense blending) and shares no code with
`flame.lbs`, so agreement between the two means something.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from flame import constants as C
from flame.model import FlameModel


def contour_row_reference(global_rotvec: np.ndarray, neck_rotvec: np.ndarray) -> int:
    """Contour-table row for one head pose, by the rule in FLAME's dynamic-landmark lookup.

    The head rotation is root then neck; its yaw is the middle (y) angle of a Z-Y-X Euler
    decomposition, which SciPy computes independently of our formula.
    """
    head = Rotation.from_rotvec(global_rotvec) * Rotation.from_rotvec(neck_rotvec)
    yaw_deg = np.degrees(head.as_euler("ZYX")[1])
    y = int(np.round(min(-yaw_deg, C.CONTOUR_MAX_YAW_DEG)))
    if y >= 0:
        return y
    return min(C.CONTOUR_MAX_YAW_DEG - y, C.CONTOUR_LAST_ROW)


def forward_reference(model: FlameModel, shape: np.ndarray, expression: np.ndarray,
                      pose15: np.ndarray, translation: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One example (no batch). shape [S'], expression [E'] (leading components), pose15 [15].

    Returns vertices [V, 3], joints [5, 3], landmarks [68, 3], now_landmarks [7, 3] (float64).
    """
    s, e = len(shape), len(expression)
    v_shaped = (model.v_template + model.shapedirs[:, :, :s] @ shape
                + model.exprdirs[:, :, :e] @ expression)
    joints = model.j_regressor @ v_shaped
    rots = Rotation.from_rotvec(pose15.reshape(C.NUM_JOINTS, 3)).as_matrix()
    feats = np.concatenate([(r - np.eye(3)).ravel() for r in rots[1:]])
    v_posed = v_shaped + model.posedirs @ feats
    world = []
    for j, p in enumerate(model.parents):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = joints[j] - (joints[p] if p >= 0 else 0.0)
        world.append(local if p < 0 else world[p] @ local)
    posed_joints = np.stack([w[:3, 3] for w in world])
    skinning = []
    for j in range(C.NUM_JOINTS):
        rest_inv = np.eye(4)
        rest_inv[:3, 3] = -joints[j]
        skinning.append(world[j] @ rest_inv)
    blended = np.einsum("vj,jab->vab", model.weights, np.stack(skinning))
    homog = np.concatenate([v_posed, np.ones((len(v_posed), 1))], axis=1)
    verts = np.einsum("vab,vb->va", blended, homog)[:, :3]
    if translation is not None:
        verts = verts + translation
        posed_joints = posed_joints + translation

    def points(face_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
        return np.einsum("lkc,lk->lc", verts[model.faces[face_idx]], bary)

    row = contour_row_reference(pose15[0:3], pose15[3:6])
    static = points(model.static_lmk_faces, model.static_lmk_bary)
    contour = points(model.dynamic_lmk_faces[row], model.dynamic_lmk_bary[row])
    return {
        "vertices": verts,
        "joints": posed_joints,
        "landmarks": np.concatenate([contour, static]),
        "now_landmarks": static[list(C.NOW_LANDMARKS_IN_STATIC)],
    }
