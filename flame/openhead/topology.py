"""Topology: triangulation, eye openings, mouth slit and pocket, relaxation, eyeballs.

`_build_geometry` turns the skin samples into the neutral mesh: a spherical Delaunay
triangulation of the directions, the eye openings cut out, the mouth line split into a slit, the
vertices cast onto the sculpt and relaxed, then the mouth pocket and two closed eyeball meshes
added. Also the mesh adjacency and Laplacian smoothing the rig and the blend shapes use.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse
from scipy.spatial import ConvexHull, cKDTree

from flame.openhead.anatomy import (_DEG, EYEBALL_RADIUS, LEFT_EYE_CENTRE, LID_MARGIN_GAP,
                                    MOUTH_HALF_WIDTH, RIGHT_EYE_CENTRE, _mirror, _smoothstep, _unit)
from flame.openhead.rays import _cast_directions
from flame.openhead.sampling import (_K_EYE_LEFT, _K_EYE_RIGHT, _K_FREE, _K_MIDLINE, _K_MOUTH,
                                     _K_MOUTH_BAG, _K_POLE, _LIP_CURL_DEPTH, _MOUTH_VERMILION_LOOP,
                                     _sample_skin, _SkinSamples)
from flame.openhead.sculpt import head_sdf


def _triangulate_sphere(u: np.ndarray) -> np.ndarray:
    """Spherical Delaunay triangulation [F, 3] of unit vectors u [N, 3], counter-clockwise seen
    from outside (the convex hull of points on a sphere)."""
    f = ConvexHull(u).simplices.astype(np.int64)
    if len(np.unique(f)) != len(u):
        raise RuntimeError("triangulation dropped sample points (duplicates?)")
    n = np.cross(u[f[:, 1]] - u[f[:, 0]], u[f[:, 2]] - u[f[:, 0]])
    flip = np.einsum("ij,ij->i", n, u[f].sum(axis=1)) < 0
    f[flip] = f[flip][:, ::-1]
    return f


def _check_chain_edges(faces: np.ndarray, s: _SkinSamples, kind: int) -> None:
    """The lid margins and the mouth line must be chains of triangle edges (they become the eye
    openings' boundaries and the slit): fail loudly if the triangulation skipped one."""
    if kind == _K_MOUTH:
        idx = np.flatnonzero((s.kind == kind) & (s.ring == 0))
        idx = idx[np.argsort(s.mouth_ab[idx, 0])]
        chain = list(zip(idx[:-1], idx[1:]))
    else:
        idx = np.flatnonzero((s.kind == kind) & (s.ring == 0))
        idx = idx[np.argsort(s.eye_s[idx])]
        chain = list(zip(idx, np.roll(idx, -1)))
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    have = set(map(tuple, edges.tolist()))
    missing = [(int(i), int(j)) for i, j in chain if (min(i, j), max(i, j)) not in have]
    if missing:
        raise RuntimeError(f"triangulation skipped {len(missing)} feature edges (kind {kind})")


def _canonical_faces(f: np.ndarray) -> np.ndarray:
    """Same triangles, each rotated to start at its smallest index, rows sorted: an order that does
    not depend on the triangulation library's internals."""
    r = np.argmin(f, axis=1)
    f = np.stack([f[np.arange(len(f)), r], f[np.arange(len(f)), (r + 1) % 3],
                  f[np.arange(len(f)), (r + 2) % 3]], axis=1)
    return f[np.lexsort((f[:, 2], f[:, 1], f[:, 0]))]


# Tangential relaxation of the ray-cast vertices (rays graze steep surfaces such as the brow's
# underside and the nose's sides, which leaves long triangles there).
_RELAX_ITERATIONS = 8
_RELAX_STEP = 0.5


def _sdf_gradient(p: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Value [N] and central-difference gradient [N, 3] of head_sdf (one batched call)."""
    n = len(p)
    offsets = np.vstack([np.zeros(3), eps * np.eye(3), -eps * np.eye(3)])
    vals = head_sdf((p[None] + offsets[:, None]).reshape(-1, 3)).reshape(7, n)
    return vals[0], ((vals[1:4] - vals[4:7]) / (2 * eps)).T


def _project_to_surface(p: np.ndarray, steps: int = 2) -> np.ndarray:
    for _ in range(steps):
        f, g = _sdf_gradient(p)
        p = p - (f / np.maximum((g * g).sum(axis=1), 1e-12))[:, None] * g
    return p


def _relax(verts: np.ndarray, faces: np.ndarray, movable: np.ndarray, mirror: np.ndarray,
           on_midline: np.ndarray) -> np.ndarray:
    """Moves the `movable` vertices toward their neighbours' centroid within the tangent plane and
    back onto the surface, keeping the mesh mirror-symmetric and midline vertices at x = 0."""
    adj = _mesh_adjacency(faces, len(verts))
    deg = np.asarray(adj.sum(axis=1)).ravel()
    v = verts.copy()
    idx = np.flatnonzero(movable)
    for _ in range(_RELAX_ITERATIONS):
        target = (adj @ v)[idx] / deg[idx, None]
        g = _unit(_sdf_gradient(v[idx])[1])
        step = _RELAX_STEP * (target - v[idx])
        step -= (step * g).sum(axis=1, keepdims=True) * g
        v[idx] = _project_to_surface(v[idx] + step)
        v = 0.5 * (v + _mirror(v[mirror]))
        v[on_midline, 0] = 0.0
    return v


@dataclasses.dataclass
class _Geometry:
    """The neutral mesh and what each vertex is. Skin vertices first, then the two eyeballs."""
    verts: np.ndarray          # [V, 3] float64
    faces: np.ndarray          # [F, 3] int64
    num_skin: int
    kind: np.ndarray           # [V] int: _K_* (eyeball vertices: _K_EYE_LEFT/_K_EYE_RIGHT)
    ring: np.ndarray           # [V] int: eye ring / mouth loop index, -1 otherwise
    mouth_ab: np.ndarray       # [V, 2] mouth chart coordinates, nan elsewhere
    eye_s: np.ndarray          # [V] lid margin parameter of eye ring 0, nan elsewhere
    lip_side: np.ndarray       # [V] int: +1 upper lip side of the mouth, -1 lower, 0 neither
    eyeball_left: np.ndarray   # [Ne] vertex indices of the left eyeball
    eyeball_right: np.ndarray  # [Ne] vertex indices of the right eyeball
    eyeball_polar_deg: np.ndarray  # [Ne] angle of each eyeball vertex from the gaze axis
    mirror: np.ndarray         # [V] index of each vertex's mirror image (x -> -x)
    mouth_bag: np.ndarray      # [Nb] vertex indices of the mouth pocket (after the skin)
    mouth_bag_parent: np.ndarray  # [Nb] the slit vertex each pocket vertex is extruded from


# Mouth pocket: depth behind the slit (metres) and lateral shrink of each of its rings.
_POCKET_RING_DEPTH = (0.003, 0.009, 0.017, 0.026)
_POCKET_RING_WIDTH = (0.97, 0.88, 0.74, 0.58)
# ...and its height in the middle (a thin lens, not a flat sheet: no zero-area triangles).
_POCKET_RING_GAP = (0.0006, 0.0016, 0.0030, 0.0045)


def _mouth_pocket(verts: np.ndarray, faces: np.ndarray, corners: np.ndarray, upper: np.ndarray,
                  lower: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A bag extruded inward from the slit's boundary loop (right corner, upper slit vertices,
    left corner, lower slit vertices back), closed at the back by stitching its upper and lower
    walls. With the mouth closed both walls coincide (hidden behind the lips).

    Returns: vertices [Nb, 3], faces [Fb, 3] (global indices, new vertices numbered from
    len(verts)), side [Nb] (+1 upper wall, -1 lower wall, 0 corners), parent slit vertex [Nb].
    """
    loop = np.concatenate([[corners[0]], upper, [corners[1]], lower[::-1]])
    side = np.concatenate([[0], np.ones(len(upper), int), [0], -np.ones(len(lower), int)])
    m = len(loop)
    base = len(verts)
    rings = [loop]
    new_v = []
    # how far along its wall each loop vertex is (0 at the corners, 1 in the middle)
    along = np.sin(np.pi * (np.arange(m) % (len(upper) + 1)) / (len(upper) + 1))
    rings_spec = zip(_POCKET_RING_DEPTH, _POCKET_RING_WIDTH, _POCKET_RING_GAP)
    for k, (depth, width, gap) in enumerate(rings_spec):
        p = verts[loop] * [width, 1.0, 1.0] - [0.0, 0.0, depth]
        p[:, 1] += 0.5 * gap * side * along
        rings.append(base + k * m + np.arange(m))
        new_v.append(p)
    tris = []
    for a_ring, b_ring in zip(rings[:-1], rings[1:]):
        for i in range(m):
            j = (i + 1) % m
            tris.append([a_ring[i], a_ring[j], b_ring[j]])
            tris.append([a_ring[i], b_ring[j], b_ring[i]])
    # back wall: stitch the last ring's upper run to its lower run
    last = rings[-1]
    n = len(upper)
    top = np.concatenate([[last[0]], last[1:n + 1], [last[n + 1]]])
    bottom = np.concatenate([[last[0]], last[::-1][:n], [last[n + 1]]])
    for i in range(n + 1):
        if i < n + 1:
            tris.append([top[i], top[i + 1], bottom[i + 1]])
        if i > 0:
            tris.append([top[i], bottom[i + 1], bottom[i]])
    tris = np.array([t for t in tris if len(set(t)) == 3], np.int64)
    tris = _orient_consistently(np.vstack([faces, tris]), len(faces))[len(faces):]
    count = len(_POCKET_RING_DEPTH)
    return (np.concatenate(new_v), tris, np.tile(side, count), np.tile(loop, count))


def _orient_consistently(faces: np.ndarray, n_fixed: int) -> np.ndarray:
    """Flips faces[n_fixed:] so that every edge shared with an already oriented face is
    traversed in the opposite direction (a consistently oriented surface)."""
    faces = faces.copy()
    owner = {}
    for fi in range(n_fixed):
        for k in range(3):
            owner[(faces[fi, k], faces[fi, (k + 1) % 3])] = fi
    pending = list(range(n_fixed, len(faces)))
    while pending:
        progress = []
        for fi in pending:
            f = faces[fi]
            edges = [(f[k], f[(k + 1) % 3]) for k in range(3)]
            if any(e in owner for e in edges):
                faces[fi] = f[::-1]
            elif not any((e[1], e[0]) in owner for e in edges):
                continue
            for k in range(3):
                owner[(faces[fi, k], faces[fi, (k + 1) % 3])] = fi
            progress.append(fi)
        if not progress:
            raise RuntimeError("cannot orient the mouth pocket")
        pending = [fi for fi in pending if fi not in set(progress)]
    return faces


# Eyeball mesh: latitude rings (degrees from the front pole, symmetric about 90 so that the
# vertex mean is the centre), each with this many vertices.
_EYEBALL_RINGS_DEG = (7.0, 14.0, 21.0, 28.0, 35.0, 46.0, 58.0, 71.0, 84.0)
_EYEBALL_SEGMENTS = 20


def _eyeball_mesh(centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A closed UV sphere around +z: vertices [Ne, 3], faces [Fe, 3] (local indices, outward
    counter-clockwise), polar angle of each vertex [Ne] (degrees)."""
    polar = np.concatenate([_EYEBALL_RINGS_DEG, 180.0 - np.array(_EYEBALL_RINGS_DEG[::-1])])
    seg = _EYEBALL_SEGMENTS
    az = np.arange(seg) * 2 * np.pi / seg
    th = np.repeat(polar * _DEG, seg)
    ph = np.tile(az, len(polar)) + np.repeat(np.arange(len(polar)) % 2, seg) * np.pi / seg
    dirs = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], axis=1)
    v = np.vstack([[0, 0, 1], dirs, [0, 0, -1]]) * EYEBALL_RADIUS + centre
    pol = np.concatenate([[0.0], np.repeat(polar, seg), [180.0]])
    faces = []
    first, last = 0, len(v) - 1
    ring = lambda r, j: 1 + r * seg + (j % seg)  # noqa: E731
    for j in range(seg):
        faces.append([first, ring(0, j + 1), ring(0, j)])
        faces.append([last, ring(len(polar) - 1, j), ring(len(polar) - 1, j + 1)])
    for r in range(len(polar) - 1):
        for j in range(seg):
            a, b = ring(r, j), ring(r, j + 1)
            # odd rings are rotated by half a segment: pair accordingly
            if r % 2 == 0:
                c, d = ring(r + 1, j), ring(r + 1, j - 1)
                faces.append([a, b, c])
                faces.append([a, c, d])
            else:
                c, d = ring(r + 1, j + 1), ring(r + 1, j)
                faces.append([a, c, d])
                faces.append([a, b, c])
    faces = np.array(faces, np.int64)
    n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    flip = np.einsum("ij,ij->i", n, v[faces].mean(axis=1) - centre) < 0
    faces[flip] = faces[flip][:, ::-1]
    return v, faces, pol


def _build_geometry() -> _Geometry:
    """The neutral mesh: sample, triangulate, cut the eye openings and the mouth slit, place the
    vertices on the sculpt, relax them, then add the mouth pocket and the eyeballs."""
    s = _sample_skin()
    faces = _triangulate_sphere(s.u)
    pole = np.flatnonzero(s.kind == _K_POLE)[0]
    faces = faces[(faces != pole).all(axis=1)]
    # Eye openings: triangles spanned by lid-margin vertices only.
    for k in (_K_EYE_LEFT, _K_EYE_RIGHT):
        margin = (s.kind == k) & (s.ring == 0)
        faces = faces[~margin[faces].all(axis=1)]
    _check_chain_edges(faces, s, _K_EYE_LEFT)
    _check_chain_edges(faces, s, _K_EYE_RIGHT)
    _check_chain_edges(faces, s, _K_MOUTH)
    keep = np.arange(len(s.u)) != pole
    old_to_new = np.cumsum(keep) - 1
    faces = old_to_new[faces]
    u = s.u[keep]
    kind, ring, mouth_ab, eye_s = s.kind[keep], s.ring[keep], s.mouth_ab[keep], s.eye_s[keep]

    verts = _cast_directions(u)
    mirror_u = cKDTree(u).query(_mirror(u))[1]
    on_eye = (kind == _K_EYE_LEFT) | (kind == _K_EYE_RIGHT)
    movable = ((kind == _K_FREE) | (kind == _K_MIDLINE) | (on_eye & (ring >= 2))
               | ((kind == _K_MOUTH) & (ring > _MOUTH_VERMILION_LOOP)))
    verts = _relax(verts, faces, movable, mirror_u, u[:, 0] == 0.0)
    # Lid margins hug the eyeball.
    for k, centre in ((_K_EYE_LEFT, LEFT_EYE_CENTRE), (_K_EYE_RIGHT, RIGHT_EYE_CENTRE)):
        m = (kind == k) & (ring == 0)
        verts[m] = centre + _unit(verts[m] - centre) * (EYEBALL_RADIUS + LID_MARGIN_GAP)

    # Mouth slit: interior slit vertices get a lower-lip twin; triangles below the slit use it.
    lip_side = np.zeros(len(u), np.int64)
    on_mouth = kind == _K_MOUTH
    lip_side[on_mouth & (mouth_ab[:, 1] > 0)] = 1
    lip_side[on_mouth & (mouth_ab[:, 1] < 0)] = -1
    at_corner = np.abs(mouth_ab[:, 0]) >= MOUTH_HALF_WIDTH - 1e-9
    slit = np.flatnonzero(on_mouth & (ring == 0) & ~at_corner)
    twin = np.full(len(u), -1)
    twin[slit] = len(u) + np.arange(len(slit))
    touches = (twin[faces] >= 0).any(axis=1)
    side = np.where(lip_side[faces] != 0, lip_side[faces], 0).sum(axis=1)
    if np.any(touches & (side == 0)):
        raise RuntimeError("a triangle at the mouth slit has no vertex off the slit")
    lower = touches & (side < 0)
    ff = faces[lower]
    faces[lower] = np.where(twin[ff] >= 0, twin[ff], ff)
    slit_pts = verts[slit]
    slit_pts[:, 2] -= _LIP_CURL_DEPTH * _smoothstep(MOUTH_HALF_WIDTH, 0.6 * MOUTH_HALF_WIDTH,
                                                     np.abs(slit_pts[:, 0]))
    verts[slit] = slit_pts
    verts = np.vstack([verts, slit_pts])
    kind = np.concatenate([kind, kind[slit]])
    ring = np.concatenate([ring, ring[slit]])
    mouth_ab = np.vstack([mouth_ab, mouth_ab[slit]])
    eye_s = np.concatenate([eye_s, eye_s[slit]])
    lip_side[slit] = 1
    lip_side = np.concatenate([lip_side, np.full(len(slit), -1)])
    num_skin = len(verts)

    # Mouth pocket: a flat bag behind the slit (upper wall with the head, lower wall with the
    # jaw) so that an open mouth shows a mouth, not the inside of the head.
    upper_chain = slit[np.argsort(mouth_ab[slit, 0])]
    lower_chain = twin[upper_chain]
    at_corner = np.abs(mouth_ab[:, 0]) >= MOUTH_HALF_WIDTH - 1e-9
    corners = np.flatnonzero((kind == _K_MOUTH) & (ring == 0) & at_corner)
    corners = corners[np.argsort(mouth_ab[corners, 0])]
    bag_v, bag_f, bag_side, bag_parent = _mouth_pocket(verts, faces, corners, upper_chain,
                                                       lower_chain)
    nb = len(bag_v)
    mouth_bag = num_skin + np.arange(nb)
    verts = np.vstack([verts, bag_v])
    faces = np.vstack([faces, bag_f])
    kind = np.concatenate([kind, np.full(nb, _K_MOUTH_BAG)])
    ring = np.concatenate([ring, np.full(nb, -1)])
    mouth_ab = np.vstack([mouth_ab, np.full((nb, 2), np.nan)])
    eye_s = np.concatenate([eye_s, np.full(nb, np.nan)])
    lip_side = np.concatenate([lip_side, bag_side])
    n_front = len(verts)

    # Eyeballs.
    ev_l, ef_l, polar = _eyeball_mesh(LEFT_EYE_CENTRE)
    ev_r, ef_r, _ = _eyeball_mesh(RIGHT_EYE_CENTRE)
    ne = len(ev_l)
    eyeball_left = n_front + np.arange(ne)
    eyeball_right = n_front + ne + np.arange(ne)
    verts = np.vstack([verts, ev_l, ev_r])
    faces = np.vstack([faces, ef_l + n_front, ef_r + n_front + ne])
    kind = np.concatenate([kind, np.full(ne, _K_EYE_LEFT), np.full(ne, _K_EYE_RIGHT)])
    ring = np.concatenate([ring, np.full(2 * ne, -1)])
    mouth_ab = np.vstack([mouth_ab, np.full((2 * ne, 2), np.nan)])
    eye_s = np.concatenate([eye_s, np.full(2 * ne, np.nan)])
    lip_side = np.concatenate([lip_side, np.zeros(2 * ne, np.int64)])

    # Mirror map: the vertex at (-x, y, z) on the same side of the mouth slit.
    key = np.hstack([verts, lip_side[:, None] * 1.0])
    mkey = np.hstack([_mirror(verts), lip_side[:, None] * 1.0])
    dist, mirror = cKDTree(key).query(mkey)
    if dist.max() > 1e-9:
        raise RuntimeError(f"mesh is not mirror-symmetric (max {dist.max():.2e} m)")
    return _Geometry(verts=verts, faces=_canonical_faces(faces), num_skin=num_skin, kind=kind,
                     ring=ring, mouth_ab=mouth_ab, eye_s=eye_s, lip_side=lip_side,
                     eyeball_left=eyeball_left, eyeball_right=eyeball_right,
                     eyeball_polar_deg=polar, mirror=mirror.astype(np.int64),
                     mouth_bag=mouth_bag, mouth_bag_parent=bag_parent)


def _mesh_adjacency(faces: np.ndarray, n: int) -> scipy.sparse.csr_matrix:
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    rows, cols = np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]]
    return scipy.sparse.coo_matrix((np.ones(2 * len(e)), (rows, cols)),
                                   shape=(n, n)).tocsr()


def _smooth_field(values: np.ndarray, adj: scipy.sparse.csr_matrix, fixed: np.ndarray,
                  iterations: int) -> np.ndarray:
    """Laplacian smoothing of per-vertex values (any trailing shape), `fixed` vertices held."""
    deg = np.maximum(np.asarray(adj.sum(axis=1)).ravel(), 1.0)
    out = values.copy()
    free = ~fixed
    for _ in range(iterations):
        avg = (adj @ out.reshape(len(out), -1)).reshape(out.shape)
        avg /= deg.reshape((-1,) + (1,) * (out.ndim - 1))
        out[free] = 0.5 * out[free] + 0.5 * avg[free]
    return out
