"""The open head: a FLAME-format head model generated from code, free to ship and to train on.

FLAME itself may not be redistributed, so this package builds a head model of its own, in exactly
FLAME's file formats (`flame.model.save_flame_files`), deterministically and in a few seconds:

- Geometry: a sculpted implicit surface (smooth unions of ellipsoids, tubes and a lofted face
  section, all in metres) is sampled by rays from inside the head. Ray directions are a
  mirror-symmetric variable-density Poisson-disk set (denser on the face) plus structured rings
  around the eye openings and loops around the mouth; their spherical Delaunay triangulation is
  the mesh. The eye openings are holes behind which sit two separate closed eyeball meshes; the
  mouth line is a slit (upper and lower lip vertices are distinct), so a jaw rotation opens it.
  A small pocket behind the lips (the mouth interior) shows when the mouth opens.
- Rig: FLAME's five joints (global, neck, jaw, left eye, right eye), a J_regressor of
  non-negative rows over the surface around each joint, smooth skinning weights (designed fields,
  Laplacian-smoothed over the mesh, which the slit cuts), and small pose correctives for the jaw
  and the neck.
- Blend shapes: semantic deformation fields (head size, nose, jaw, smile, brows, eyelids...) plus
  random smooth fields, orthogonalised by an SVD, so that the 300 identity and 100 expression
  components are ordered by variance and N(0, 1) coefficients give plausible heads; eyeballs
  move rigidly with their sockets (identity) and stay put (expression).
- Landmarks: 51 static iBUG landmarks and the 79 x 17 contour table, computed from the mesh the
  way FLAME's were (the jaw-line silhouette at every whole degree of yaw).

Axes as FLAME: metres, y up, z out of the face, +x toward the subject's left. Letters in shapes:
V vertices, F faces.

Modules, in the order the generator runs: `anatomy` (measurements, eye and mouth curves),
`sculpt` (the implicit surface, `head_sdf`), `rays` (ray casting), `sampling` (vertex
directions), `topology` (triangulation, slit, mouth pocket, eyeballs), `regions` (vertex masks),
`rig`, `blendshapes`, `landmarks`, `build` (`build_open_head`), `cache` (`ensure_open_head`),
`cli` (`python -m flame.openhead --out DIR [--force]`).

Public API (re-exported here): `build_open_head()`, `ensure_open_head(cache_dir)`,
`region_masks(model)`, `REGION_NAMES`, `OPEN_HEAD_VERSION`, `cache_key()`.

Deterministic: one fixed seed, a canonical face order and fixed signs of the components give the
same arrays on every call. A change of NumPy's random streams or of qhull's triangulation could
change them; the fingerprint and the tests would show it (then bump OPEN_HEAD_VERSION).
"""
from __future__ import annotations

from flame.fileutil import CACHE_ENV_VAR, DEFAULT_CACHE_ROOT
from flame.openhead.build import OPEN_HEAD_VERSION, build_open_head
from flame.openhead.cache import cache_key, ensure_open_head
from flame.openhead.cli import main
from flame.openhead.regions import REGION_NAMES, region_masks
from flame.openhead.sculpt import head_sdf

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_CACHE_ROOT",
    "OPEN_HEAD_VERSION",
    "REGION_NAMES",
    "build_open_head",
    "cache_key",
    "ensure_open_head",
    "head_sdf",
    "main",
    "region_masks",
]
