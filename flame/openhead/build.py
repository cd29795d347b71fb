"""Assembling the open head model: geometry, rig, blend shapes and landmarks into a `FlameModel`."""
from __future__ import annotations

import numpy as np

from flame import constants as C
from flame.model import FlameModel
from flame.openhead.blendshapes import _blend_shapes
from flame.openhead.landmarks import _contour_table, _static_landmarks
from flame.openhead.regions import _region_masks_of
from flame.openhead.rig import _joint_regressor, _pose_correctives, _skinning_weights
from flame.openhead.topology import _build_geometry

# Bump when the generated arrays change on purpose: it names the model (`source`) and starts the
# cache folder's name (the cache key follows every change of the generator's code by itself).
OPEN_HEAD_VERSION = "1.0"


def build_open_head() -> FlameModel:
    """Builds the open head model from scratch (a few seconds).

    Deterministic: the same arrays on every call (fixed internal seed, canonical face order,
    fixed signs of the principal components).

    Returns: a `FlameModel` with FLAME's layout (5 joints, 300 identity and 100 expression
    components, 51 static landmarks, a 79 x 17 contour table).
    """
    geo = _build_geometry()
    masks = _region_masks_of(geo)
    weights = _skinning_weights(geo)
    shapedirs, exprdirs = _blend_shapes(geo, masks)
    static_f, static_b = _static_landmarks(geo)
    dyn_f, dyn_b = _contour_table(geo)
    return FlameModel(
        v_template=geo.verts.astype(np.float64),
        faces=geo.faces.astype(np.int64),
        shapedirs=shapedirs,
        exprdirs=exprdirs,
        posedirs=_pose_correctives(geo, weights),
        j_regressor=_joint_regressor(geo),
        weights=weights,
        parents=np.asarray(C.PARENTS, np.int64),
        static_lmk_faces=static_f,
        static_lmk_bary=static_b,
        dynamic_lmk_faces=dyn_f,
        dynamic_lmk_bary=dyn_b,
        source=f"open head {OPEN_HEAD_VERSION} (generated)",
    )
