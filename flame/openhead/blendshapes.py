"""Blend shapes: deformation fields, orthogonalised by an SVD (PCA of the fields' distribution).

Semantic fields (head size, nose, jaw, smile, brows, eyelids...) plus random smooth fields give
300 identity and 100 expression components ordered by variance; eyeballs move rigidly with their
sockets (identity) and stay put (expression).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse
from scipy.spatial import cKDTree

from flame import constants as C
from flame.openhead.anatomy import (_SEED, EYE_INNER_CANTHUS_DEG, EYE_OUTER_CANTHUS_DEG,
                                    EYEBALL_RADIUS, LEFT_EYE_CENTRE, MOUTH_HALF_WIDTH, MOUTH_Y,
                                    RIGHT_EYE_CENTRE, _eye_angles, _eye_opening, _mirror,
                                    _mouth_line_y, _norm, _smoothstep, _unit)
from flame.openhead.sampling import _K_EYE_LEFT, _K_EYE_RIGHT, _K_MOUTH
from flame.openhead.sculpt import _EAR_ORIGIN
from flame.openhead.topology import _Geometry, _mesh_adjacency, _smooth_field

# Random smooth fields that fill the identity and expression spaces beyond the semantic ones:
# (RBF scale in metres, number of fields, amplitude in metres at 1 sd).
_IDENTITY_RANDOM_FIELDS = ((0.045, 60, 0.0011), (0.030, 90, 0.0008), (0.020, 110, 0.0006),
                           (0.013, 120, 0.0004))
_EXPRESSION_RANDOM_FIELDS = ((0.025, 60, 0.0007), (0.016, 80, 0.0005), (0.010, 80, 0.0003))
# Deformation fields move along vertex normals smoothed over this distance (metres).
_NORMAL_SMOOTHING = 0.003
# Lateral (x) motions of mirrored fields change sign across the midline over this width.
_MIDLINE_SOFTNESS = 0.003
# Share of random fields that are mirror-symmetric (the rest act on one side only).
_SYMMETRIC_SHARE = 0.75


class _FieldContext:
    """Per-vertex quantities [V, ...] the deformation fields are written in."""

    def __init__(self, geo: _Geometry, masks: dict[str, np.ndarray]):
        self.geo = geo
        self.masks = masks
        v = geo.verts
        self.n_verts = len(v)
        self.p = v
        self.q = v.copy()  # folded onto the left side: symmetric fields are written for x > 0
        self.q[:, 0] = np.abs(v[:, 0])
        # Odd in x, smooth through the midline (a hard sign would tear the mesh along it).
        self.sx = v[:, 0] / np.sqrt(v[:, 0] ** 2 + _MIDLINE_SOFTNESS ** 2)
        self.skin = masks["skin"]
        self.normal, self.vertex_area = self._normals_and_areas()
        # Across the red of the lips: 0 at the slit, 1 mid-lip, fading past the vermilion border
        # and toward the corners (where the loops crowd together).
        profile = np.array([0.0, 0.6, 1.0, 0.8, 0.3, 0.0, 0.0])
        on_loops = (geo.kind == _K_MOUTH) & (geo.ring >= 0)
        self.vermilion = np.where(on_loops, profile[np.clip(geo.ring, 0, 6)], 0.0)
        self.vermilion *= _smoothstep(MOUTH_HALF_WIDTH + 0.004, 0.4 * MOUTH_HALF_WIDTH,
                                      np.abs(v[:, 0]))
        # Per eye: centre, eyeball vertices, lid-margin vertices, and how rigidly [V] the skin
        # around it follows the eyeball (1 at the lid margins, 0 a few millimetres out).
        self.eyes = []
        for centre, eyeball in ((LEFT_EYE_CENTRE, geo.eyeball_left),
                                (RIGHT_EYE_CENTRE, geo.eyeball_right)):
            side = _K_EYE_LEFT if centre[0] > 0 else _K_EYE_RIGHT
            lid = np.flatnonzero((geo.kind == side) & (geo.ring <= 1) & self.skin)
            dist = _norm(v - centre)
            lock = 1.0 - _smoothstep(EYEBALL_RADIUS + 0.0022, EYEBALL_RADIUS + 0.014, dist)
            self.eyes.append((centre, eyeball, lid, np.where(self.skin, lock, 0.0)))
        # Which side of the mouth a vertex is on: exactly 1/0 on the lips (the slit separates
        # them), a smooth transition beyond the mouth corners.
        x, y = self.q[:, 0], v[:, 1]
        width = 0.003 + 0.3 * np.maximum(0.0, x - MOUTH_HALF_WIDTH)
        upper = 0.5 + 0.5 * np.tanh((y - _mouth_line_y(x)) / width)
        on_lips = (geo.lip_side != 0) & (x < MOUTH_HALF_WIDTH)
        self.upper = np.where(on_lips, (geo.lip_side > 0) * 1.0, upper)
        self.lower = 1.0 - self.upper
        # Where expressions act: the face; not the scalp, ears, back of the head or the neck.
        self.face = (self.skin * _smoothstep(-0.005, 0.035, v[:, 2])
                     * (1 - _smoothstep(0.055, 0.075, y)) * _smoothstep(-0.135, -0.105, y)
                     * (1 - masks["ears"]))
        # Lid coordinates (both eyes folded onto the left one): position along the opening
        # (0 inner canthus, 1 outer) and angle (degrees) above the upper / below the lower lid.
        al, be = _eye_angles(v)
        span = EYE_OUTER_CANTHUS_DEG - EYE_INNER_CANTHUS_DEG
        self.lid_t = np.clip((al - EYE_INNER_CANTHUS_DEG) / span, 0, 1)
        lid_up = _eye_opening(self.lid_t)[:, 1]
        lid_lo = _eye_opening(2.0 - self.lid_t)[:, 1]
        near_eye = self.skin & (_norm(self.q - LEFT_EYE_CENTRE) < 0.03)
        upper_half = be >= 0.5 * (lid_up + lid_lo)
        self.above_upper_lid = np.where(near_eye & upper_half, be - lid_up, np.inf)
        self.below_lower_lid = np.where(near_eye & ~upper_half, lid_lo - be, np.inf)

    def _normals_and_areas(self) -> tuple[np.ndarray, np.ndarray]:
        """Vertex normals [V, 3] smoothed over a few millimetres, and skin vertex areas [V].

        Smoothing over 3D neighbourhoods gives both copies of a slit vertex one normal (normal
        motions keep the mouth closed) and keeps the tight curl of the lips into the slit from
        shearing them.
        """
        geo, v = self.geo, self.p
        f = geo.faces
        fa = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        nrm = np.zeros_like(v)
        area = np.zeros(len(v))
        for k in range(3):
            np.add.at(nrm, geo.faces[:, k], fa)
            np.add.at(area, geo.faces[:, k], np.linalg.norm(fa, axis=1) / 6.0)
        skin_idx = np.flatnonzero(self.skin)
        tree = cKDTree(v[skin_idx])
        pairs = tree.sparse_distance_matrix(tree, 3 * _NORMAL_SMOOTHING, output_type="coo_matrix")
        weight = np.exp(-0.5 * (pairs.data / _NORMAL_SMOOTHING) ** 2)
        kern = scipy.sparse.coo_matrix((weight, (pairs.row, pairs.col)),
                                       shape=(len(skin_idx), len(skin_idx))).tocsr()
        kern = kern + scipy.sparse.identity(len(skin_idx), format="csr")
        nrm[skin_idx] = kern @ _unit(nrm[skin_idx] + 1e-30)
        # (a sparse distance matrix drops zero distances: add the coincident copies explicitly)
        twins = cKDTree(v).query_pairs(1e-12, output_type="ndarray")
        pair_sum = nrm[twins[:, 0]] + nrm[twins[:, 1]]
        nrm[twins[:, 0]] = pair_sum
        nrm[twins[:, 1]] = pair_sum
        return _unit(nrm + 1e-30), area * self.skin

    def gauss(self, centre, scale, mirrored: bool = True) -> np.ndarray:
        """Gaussian bump [V] (1 at the centre); on both sides unless mirrored=False."""
        pts = self.q if mirrored else self.p
        z = (pts - np.asarray(centre, float)) / np.asarray(scale, float)
        return np.exp(-0.5 * (z ** 2).sum(axis=1))

    def vec(self, weight: np.ndarray, left_vector, mirrored: bool = True) -> np.ndarray:
        """Displacement [V, 3]: weight [V] times a vector given for the left side (mirrored)."""
        v = np.tile(np.asarray(left_vector, float), (self.n_verts, 1))
        if mirrored:
            v[:, 0] *= self.sx
        return weight[:, None] * v

    def along_normal(self, weight: np.ndarray, metres: float) -> np.ndarray:
        return (weight * metres)[:, None] * self.normal

    def scale_about(self, weight: np.ndarray, centre, factors) -> np.ndarray:
        """Displacement [V, 3] of a scaling about `centre` by (1 + factors) where weight is 1."""
        return weight[:, None] * (self.p - np.asarray(centre, float)) * np.asarray(factors, float)

    def lid_rotation(self, weight: np.ndarray, radians: float) -> np.ndarray:
        """Rotates lid skin about each eye's horizontal axis (positive: lids move down); the
        linear motion is tangent to the eyeball, so lids never cut into it."""
        out = np.zeros((self.n_verts, 3))
        for centre, _, _, _ in self.eyes:
            side = np.sign(centre[0]) == np.sign(self.p[:, 0])
            r = self.p - centre
            out += (weight * radians * side)[:, None] * np.cross(np.array([1.0, 0.0, 0.0]), r)
        return out

    def finish_identity(self, d: np.ndarray) -> np.ndarray:
        """Eyeballs translate with their socket (the mean motion of the lid margins); the lids
        around them follow rigidly, so they stay on the eyeball. The mouth pocket follows the
        slit."""
        d = d * self.skin[:, None]
        for _, eyeball, lid, lock in self.eyes:
            t = d[lid].mean(axis=0)
            d = d + lock[:, None] * (t - d)
            d[eyeball] = t
        d[self.geo.mouth_bag] = d[self.geo.mouth_bag_parent]
        return d

    def finish_expression(self, d: np.ndarray, moves_lids: bool = False) -> np.ndarray:
        """Expressions leave the eyeballs still and (unless they are lid motions) the lids."""
        d = d * self.skin[:, None]
        if not moves_lids:
            for _, _, _, lock in self.eyes:
                d = d * (1.0 - lock)[:, None]
        d[self.geo.mouth_bag] = d[self.geo.mouth_bag_parent]
        return d


def _identity_fields(c: _FieldContext) -> list[tuple[str, np.ndarray]]:
    """Semantic identity deformations: (name, [V, 3] metres at one standard deviation)."""
    p, g, vec, nrm, scale = c.p, c.gauss, c.vec, c.along_normal, c.scale_about
    ones = np.ones(c.n_verts)
    front = _smoothstep(-0.01, 0.05, p[:, 2])
    neck = _smoothstep(-0.09, -0.13, p[:, 1])
    lower_face = front * _smoothstep(0.005, -0.03, p[:, 1]) * np.clip(-p[:, 1] / 0.115, 0, 1.2)
    ears = _smooth_mask(c, c.masks["ears"])
    ear_centre = _EAR_ORIGIN
    jaw_angle = [0.048, -0.082, 0.0]
    return [
        ("head size", scale(ones, [0.0, -0.02, 0.0], [0.025] * 3)),
        ("head width", scale(ones, [0.0, 0.0, 0.0], [0.030, 0.0, 0.0])),
        ("head depth", scale(ones, [0.0, 0.0, 0.0], [0.0, 0.0, 0.025])),
        ("crown height", vec(_smoothstep(-0.02, 0.11, p[:, 1]), [0, 0.006, 0])),
        ("occiput", vec(_smoothstep(0.0, -0.09, p[:, 2]) * _smoothstep(-0.09, 0.0, p[:, 1]),
                        [0, 0, -0.004])),
        ("temples", vec(g([0.062, 0.03, 0.025], [0.012, 0.025, 0.025]), [0.003, 0, 0])),
        ("face width", scale(front * (1 - neck), [0.0, 0.0, 0.0], [0.04, 0.0, 0.0])),
        ("lower face length", vec(lower_face, [0, -0.005, 0])),
        ("mid-face protrusion", vec(g([0.0, -0.055, 0.085], [0.035, 0.03, 0.03]), [0, 0, 0.003])),
        ("jaw width", vec(g(jaw_angle, [0.016, 0.02, 0.025]), [0.0045, 0, 0])),
        ("jaw angle", vec(g(jaw_angle, [0.016, 0.016, 0.02]), [0, -0.003, -0.002])),
        ("chin prominence", vec(g([0.0, -0.103, 0.072], [0.018, 0.016, 0.02]), [0, 0, 0.0035])),
        ("chin height", vec(g([0.0, -0.108, 0.065], [0.02, 0.014, 0.02]), [0, -0.003, 0])),
        # (features that straddle the midline widen by scaling about it: no crease there)
        ("chin width", scale(g([0.0, -0.106, 0.068], [0.02, 0.014, 0.02]), [0.0, 0.0, 0.0],
                             [0.17, 0.0, 0.0])),
        ("nose length", vec(g([0.0, -0.03, 0.1], [0.012, 0.012, 0.012]), [0, -0.0028, 0.0012])),
        ("nose width", scale(g([0.0, -0.035, 0.085], [0.02, 0.009, 0.012]), [0.0, 0.0, 0.0],
                             [0.16, 0.0, 0.0])),
        ("nose bridge", vec(g([0.0, -0.012, 0.092], [0.007, 0.012, 0.012]), [0, 0, 0.0018])),
        ("nose tip projection", vec(g([0.0, -0.029, 0.104], [0.009, 0.008, 0.01]), [0, 0, 0.0024])),
        ("nose tip rotation", vec(g([0.0, -0.032, 0.1], [0.01, 0.008, 0.01]), [0, 0.0018, 0])),
        ("nose bridge width", scale(g([0.0, -0.002, 0.078], [0.014, 0.012, 0.012]),
                                    [0.0, 0.0, 0.0], [0.14, 0.0, 0.0])),
        ("cheekbones", nrm(g([0.05, -0.014, 0.045], [0.014, 0.012, 0.016]), 0.0025)),
        ("cheek fullness", nrm(g([0.042, -0.052, 0.048], [0.016, 0.018, 0.018]), 0.003)),
        ("brow ridge", nrm(g([0.028, 0.021, 0.07], [0.02, 0.008, 0.016]), 0.002)),
        ("brow height", vec(g([0.03, 0.02, 0.07], [0.022, 0.01, 0.02]), [0, 0.002, 0])),
        ("eye spacing", vec(g(LEFT_EYE_CENTRE, [0.012, 0.012, 0.014]), [0.002, 0, 0])),
        ("eye height", vec(g(LEFT_EYE_CENTRE, [0.014, 0.012, 0.014]), [0, 0.0015, 0])),
        ("eye depth", vec(g(LEFT_EYE_CENTRE, [0.014, 0.012, 0.014]), [0, 0, -0.002])),
        ("forehead slope", vec(front * _smoothstep(0.02, 0.1, p[:, 1]), [0, 0, 0.004])),
        ("upper lip thickness", nrm(c.vermilion * c.upper, 0.0014)),
        ("lower lip thickness", nrm(c.vermilion * c.lower, 0.0017)),
        ("mouth width", scale(g([0.0, MOUTH_Y, 0.08], [0.03, 0.012, 0.02]), [0.0, 0.0, 0.0],
                              [0.1, 0.0, 0.0])),
        ("lip protrusion", vec(g([0.0, MOUTH_Y, 0.085], [0.022, 0.014, 0.02]), [0, 0, 0.002])),
        ("mouth height", vec(g([0.0, -0.075, 0.08], [0.03, 0.02, 0.03]), [0, -0.002, 0])),
        ("ear size", np.where(p[:, :1] < 0, scale(ears, ear_centre * [-1, 1, 1], [0.06] * 3),
                              scale(ears, ear_centre, [0.06] * 3))),
        ("ear protrusion", vec(ears * _smoothstep(-0.015, -0.04, p[:, 2]), [0.004, 0, 0])),
        ("ear height", vec(ears, [0, 0.004, 0])),
        ("neck width", scale(neck, [0.0, 0.0, -0.02], [0.07, 0.0, 0.07])),
        ("fullness", nrm(g([0.04, -0.06, 0.04], [0.025, 0.03, 0.03])
                         + g([0.0, -0.125, 0.03], [0.03, 0.015, 0.02]), 0.003)),
    ]


def _smooth_mask(c: _FieldContext, mask: np.ndarray, iterations: int = 4) -> np.ndarray:
    adj = _mesh_adjacency(c.geo.faces, c.n_verts)
    return _smooth_field(mask * 1.0, adj, np.zeros(c.n_verts, bool), iterations)


def _expression_fields(c: _FieldContext) -> list[tuple[str, np.ndarray, bool]]:
    """Semantic expressions: (name, [V, 3] metres at one standard deviation, moves the lids)."""
    p, g, vec, nrm = c.p, c.gauss, c.vec, c.along_normal
    left, right = (p[:, 0] > 0) * 1.0, (p[:, 0] < 0) * 1.0
    corner_at = [MOUTH_HALF_WIDTH, MOUTH_Y, 0.072]
    corner_size = [0.010, 0.009, 0.012]
    corner = g(corner_at, corner_size)
    corner_l = g(corner_at, corner_size, mirrored=False)
    corner_r = g(_mirror(np.array([corner_at]))[0], corner_size, mirrored=False)
    cheek = g([0.036, -0.035, 0.06], [0.014, 0.014, 0.016])
    mouth = g([0.0, MOUTH_Y, 0.085], [0.02, 0.012, 0.02])
    upper_lip = g([0.0, -0.060, 0.085], [0.022, 0.008, 0.02]) * c.upper
    lower_lip = g([0.0, -0.074, 0.083], [0.022, 0.009, 0.02]) * c.lower
    brow = g([0.03, 0.018, 0.07], [0.022, 0.012, 0.03]) * (1 - _smoothstep(0.03, 0.08, p[:, 1]))
    forehead = c.face * _smoothstep(0.0, 0.03, p[:, 1]) * (1 - _smoothstep(0.05, 0.085, p[:, 1]))
    inner_brow = g([0.014, 0.016, 0.078], [0.009, 0.01, 0.015])
    # lid skin: full weight on the margin, fading toward the crease; none at the canthi
    along = np.sin(np.pi * c.lid_t) ** 0.7
    upper_lid = along * (1 - _smoothstep(4.0, 26.0, c.above_upper_lid))
    lower_lid = along * (1 - _smoothstep(4.0, 20.0, c.below_lower_lid))
    smile = [0.0025, 0.0032, -0.0016]  # mouth corner: out, up, back
    cheek_up = [0.0, 0.002, 0.0015]
    lips = c.masks["lips"]
    narrow = -0.1 * np.stack([p[:, 0], 0 * p[:, 0], 0 * p[:, 0]], 1) * mouth[:, None]
    return [
        ("smile", vec(corner, smile) + vec(cheek, cheek_up) + c.lid_rotation(lower_lid, -0.06),
         True),
        ("smile left", vec(corner_l, smile, False) + vec(cheek * left, cheek_up, False), False),
        ("smile right", vec(corner_r, _mirror(np.array([smile]))[0], False)
         + vec(cheek * right, cheek_up, False), False),
        ("mouth corners down", vec(corner, [0.0004, -0.0025, -0.0004]), False),
        ("mouth stretch", vec(corner, [0.003, 0.0, -0.0007]) + nrm(c.vermilion, -0.0005), False),
        ("pucker", vec(mouth, [0.0, 0.0, 0.003]) + narrow, False),
        ("funnel", vec(mouth, [0, 0, 0.0025]) + vec(upper_lip, [0, 0.0012, 0])
         + vec(lower_lip, [0, -0.0015, 0]), False),
        ("lip press", vec(upper_lip * lips, [0, -0.001, -0.001])
         + vec(lower_lip * lips, [0, 0.001, -0.001]), False),
        ("upper lip raise", vec(g([0.012, -0.056, 0.084], [0.012, 0.01, 0.02]) * c.upper,
                                [0, 0.0025, 0.0005]), False),
        ("lower lip depress", vec(g([0.01, -0.078, 0.082], [0.014, 0.01, 0.02]) * c.lower,
                                  [0, -0.0025, 0.001]), False),
        ("brow raise", vec(np.maximum(brow, forehead * 0.6), [0, 0.004, 0])
         + c.lid_rotation(upper_lid * 0.25, -0.06), True),
        ("inner brow raise", vec(inner_brow, [0, 0.003, 0]), False),
        ("frown", vec(brow, [-0.0012, -0.0025, 0.0005]) + vec(inner_brow, [0, 0, 0.0008])
         + c.scale_about(g([0.0, 0.016, 0.078], [0.02, 0.01, 0.015]), [0.0, 0.0, 0.0],
                         [-0.1, 0.0, 0.0]), False),
        ("eyes close", c.lid_rotation(upper_lid, 0.30), True),
        ("left eye close", c.lid_rotation(upper_lid * left, 0.30), True),
        ("right eye close", c.lid_rotation(upper_lid * right, 0.30), True),
        ("squint", c.lid_rotation(lower_lid, -0.15) + c.lid_rotation(upper_lid, 0.08), True),
        ("cheek puff", nrm(g([0.04, -0.062, 0.045], [0.016, 0.016, 0.02]) * c.face, 0.005), False),
        ("cheek raise", vec(cheek, [0, 0.0025, 0.001]) + c.lid_rotation(lower_lid, -0.08), True),
        ("nose wrinkle", vec(g([0.011, -0.02, 0.085], [0.008, 0.014, 0.015]), [0, 0.002, 0])
         + vec(upper_lip, [0, 0.001, 0]) + vec(inner_brow, [0, -0.0015, 0]), False),
        ("mouth sideways", vec(np.minimum(mouth + 0.5 * (upper_lip + lower_lip), 1.0),
                               [0.0025, 0, 0], False), False),
        ("chin raise", vec(g([0.0, -0.1, 0.072], [0.016, 0.014, 0.02]), [0, 0.0025, 0.0005])
         + vec(lower_lip, [0, 0.0015, 0.0015]), False),
        ("dimpler", vec(corner, [0.0, 0.0, -0.002]), False),
        ("nostril flare", vec(g([0.013, -0.036, 0.086], [0.006, 0.006, 0.01]), [0.0015, 0, 0]),
         False),
        ("lips apart", vec(upper_lip, [0, 0.0015, 0]) + vec(lower_lip, [0, -0.002, 0]), False),
        ("left brow raise", vec(brow * left, [0, 0.004, 0], False), False),
        ("right brow raise", vec(brow * right, [0, 0.004, 0], False), False),
        ("jaw clench", nrm(g([0.05, -0.075, 0.0], [0.012, 0.015, 0.015]), 0.0015), False),
    ]


def _random_fields(c: _FieldContext, spec, rng: np.random.Generator, weight: np.ndarray
                   ) -> list[np.ndarray]:
    """Random smooth fields [V, 3]: each a Gaussian bump around a random surface point (mirrored
    for most) moving mostly along the normal, times `weight` [V]. spec: (scale, count,
    amplitude) triples, metres."""
    # Centres are drawn by surface area (not per vertex: the face is sampled more densely).
    prob = c.vertex_area * weight * (weight > 0.3)
    prob = prob / prob.sum()
    out = []
    for scale, count, amplitude in spec:
        for _ in range(count):
            centre = c.p[rng.choice(c.n_verts, p=prob)]
            sign = rng.choice([-1.0, 1.0])
            tangent = rng.normal(size=3) * 0.35
            symmetric = rng.random() < _SYMMETRIC_SHARE
            d = np.zeros((c.n_verts, 3))
            for mirror in ((False, True) if symmetric else (False,)):
                flip = np.array([-1.0, 1.0, 1.0]) if mirror else np.ones(3)
                w = np.exp(-0.5 * ((c.p - centre * flip) ** 2).sum(axis=1) / scale ** 2)
                d += amplitude * w[:, None] * (sign * c.normal + tangent * flip)
            out.append(d * weight[:, None])
    return out


def _principal_components(fields: list[np.ndarray], count: int) -> np.ndarray:
    """The `count` leading principal components [V, 3, count] of the distribution
    sum_k z_k D_k, z ~ N(0, I), of fields D_k [V, 3] (an SVD of the matrix of fields, via the
    eigen-decomposition of its Gram matrix): column norms are the standard deviations
    (decreasing); each column's largest entry is positive (deterministic signs)."""
    m = np.stack([f.ravel() for f in fields], axis=1)
    m[np.abs(m) < 1e-15] = 0.0  # Gaussian tails: subnormal numbers make BLAS crawl
    evals, evecs = np.linalg.eigh(m.T @ m)
    order = np.argsort(evals)[::-1][:count]
    if len(order) < count or evals[order[-1]] <= 1e-18:
        raise RuntimeError("not enough independent deformation fields")
    comps = m @ evecs[:, order]
    big = np.argmax(np.abs(comps), axis=0)
    comps *= np.sign(comps[big, np.arange(count)])
    return comps.reshape(fields[0].shape[0], 3, count)


def _blend_shapes(geo: _Geometry, masks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Identity [V, 3, 300] and expression [V, 3, 100] components."""
    rng = np.random.default_rng(_SEED + 1)
    c = _FieldContext(geo, masks)
    ident = [c.finish_identity(f) for _, f in _identity_fields(c)]
    # Random normal offsets comparable to a feature's radius of curvature would collapse it: damp
    # them on the small, tightly curved parts (nose, ears).
    damp = 1.0 - 0.65 * _smooth_mask(c, c.masks["nose"]) - 0.5 * _smooth_mask(c, c.masks["ears"])
    ident += [c.finish_identity(f * damp[:, None])
              for f in _random_fields(c, _IDENTITY_RANDOM_FIELDS, rng, c.skin * 1.0)]
    expr = [c.finish_expression(f if lids else f * c.face[:, None], lids)
            for _, f, lids in _expression_fields(c)]
    expr += [c.finish_expression(f)
             for f in _random_fields(c, _EXPRESSION_RANDOM_FIELDS, rng, c.face)]
    return (_principal_components(ident, C.NUM_SHAPE_TOTAL),
            _principal_components(expr, C.NUM_EXPRESSION_TOTAL))
