"""A headless CPU renderer for FLAME-topology meshes, in vectorised NumPy (no OpenGL, no display).

`render` draws a triangle mesh through the project's weak-perspective camera (`ringnet_tf.camera`):
z-buffered, smooth-shaded (per-vertex normals interpolated per pixel, Lambertian diffuse plus
ambient light), with per-vertex colours. It also returns the coverage mask, the depth and the index
of the triangle seen at every pixel, which `visible_points` uses to tell self-occluded points (the
synthetic data generator lowers the confidence of hidden landmarks with it). `overlay` blends a
render over a photo (the demo) and `side_view` renders the mesh turned about the vertical axis.

The parts:
- `raster`: snapping, exact coverage, the z-buffer, and the fragments (covered pixels with
  barycentric weights);
- `shading`: vertex normals and Lambertian light on the fragments (the default colour and light);
- `visibility`: `visible_points`, a depth test of 3D points against a render;
- `compose`: `render` (arguments, raster, shading, background, supersampling), `overlay`,
  `side_view`;
- `checks`: argument checking shared by all of them and by `ringnet_tf.texture`.

Conventions (those of `ringnet_tf.camera`): model frame y up, z towards the camera, which looks
along -Z; larger Z is nearer. Pixel (row i, column j) is sampled at its centre, (u, v) = (j, i) in
`camera.project`'s pixel coordinates, and covers u in [j - 0.5, j + 0.5), v in [i - 0.5, i + 0.5).

Rasterisation rules (what the tests check):
- Vertex positions are snapped to 1/256 pixel, and coverage is decided exactly (integer arithmetic
  carried in float64) on the snapped triangle: a pixel is covered when its centre is inside. A
  centre exactly on an edge shared by two triangles goes to exactly one of them (a top-left style
  rule: the sample is nudged infinitesimally towards -u, then slightly -v), so a closed or
  connected mesh has neither cracks nor doubly drawn pixels. A brute-force point-in-triangle test
  on the unsnapped triangle agrees everywhere except at centres within 1/256 pixel of an edge.
- Depth is interpolated on the snapped triangle (so it differs from the exact triangle's by at
  most its depth gradient times 1/256 pixel). Visibility: the largest depth wins, compared at
  float32 precision; exact ties go to the lower face index. Deterministic: the same inputs give
  the same bytes.
- Shading: colour = albedo * (ambient + diffuse * max(0, n . l)), n the interpolated vertex normal
  (normals from the faces' winding: counter-clockwise seen from outside, as trimesh and FLAME),
  l the unit direction towards the light, clipped to [0, 1] and rounded to uint8. Triangles seen
  from behind are lit two-sided (their normal is flipped towards the camera) unless culled.
- Vertices projected more than 65,536 pixels from the image's origin drop their triangles.

How it is fast: triangles are grouped by the size of their pixel bounding box (rounded up to a
power of two) and each group is tested against tiles of that size in one broadcast NumPy
expression, in chunks small enough to stay in the CPU cache; the z-buffer is one `np.maximum.at`
over 64-bit keys (depth in the high half, face index in the low half); front faces are drawn
first, and back faces that the result surely hides (most of them, on a head) are skipped; shading
is a pass over covered pixels only. A FLAME-sized head at 224 x 224 takes about 6 ms of one core
of the project's machines (4 ms with `cull_backfaces`): `bench/render_speed.py`. OpenGL through
Mesa's software rasteriser (llvmpipe, headless EGL, moderngl) draws the same pictures with about
30% less CPU there, but needs system packages and a working GL stack, and promises no identical
bytes across drivers; this package needs NumPy only.

Nothing here changes process-wide state. (An earlier version called glibc's mallopt(M_TOP_PAD)
on its first render, to keep freed heap pages; measured without it, a 224 x 224 or 512 x 512 head
render takes no page faults and no more time, so it went.)
"""
from ringnet_tf.render.compose import DEFAULT_ALPHA, RenderResult, overlay, render, rotate_y, side_view
from ringnet_tf.render.shading import (DEFAULT_AMBIENT, DEFAULT_COLOR, DEFAULT_DIFFUSE,
                                       DEFAULT_LIGHT_DIR, _vertex_normals)
from ringnet_tf.render.visibility import visible_points

__all__ = ["DEFAULT_ALPHA", "DEFAULT_AMBIENT", "DEFAULT_COLOR", "DEFAULT_DIFFUSE", "DEFAULT_LIGHT_DIR",
           "RenderResult", "overlay", "render", "rotate_y", "side_view", "visible_points"]
