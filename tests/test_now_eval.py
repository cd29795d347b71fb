"""The NoW evaluation: geometry kernels, alignment, crop, PickPoints files, metric and CLI."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from flame import mesh_io
from flame.mesh_io import write_mesh
from ringnet_tf.evaluate import geometry as G
from ringnet_tf.evaluate import landmark_files, now, pickpoints
from ringnet_tf.evaluate.__main__ import main as cli_main

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "now"
EXACT = 1e-12  # agreement of two exact computations of the same distance (float64, unit sizes)


# ----------------------------------------------------------------------------------------------
# A reference point-to-triangle distance by a different method: the minimum over the interior
# projection (when it falls inside) and the three clamped edge projections. Vectorised over
# point-triangle pairs (all inputs `[M, 3]`).


def _segment_closest(p, s0, s1):
    d = s1 - s0
    length2 = np.einsum("ij,ij->i", d, d)
    t = np.einsum("ij,ij->i", p - s0, d) / np.where(length2 > 0, length2, 1.0)
    return s0 + np.clip(np.where(length2 > 0, t, 0.0), 0.0, 1.0)[:, None] * d


def _reference_distances(p, a, b, c):
    candidates = [np.linalg.norm(p - _segment_closest(p, s0, s1), axis=1)
                  for s0, s1 in ((a, b), (b, c), (c, a))]
    e1, e2, ap = b - a, c - a, p - a
    g11, g12, g22 = (np.einsum("ij,ij->i", x, y) for x, y in ((e1, e1), (e1, e2), (e2, e2)))
    r1, r2 = np.einsum("ij,ij->i", e1, ap), np.einsum("ij,ij->i", e2, ap)
    det = g11 * g22 - g12 * g12
    solvable = np.abs(det) > 1e-14 * g11 * g22
    safe = np.where(solvable, det, 1.0)
    v, w = (g22 * r1 - g12 * r2) / safe, (g11 * r2 - g12 * r1) / safe
    inside = solvable & (v >= 0) & (w >= 0) & (v + w <= 1)
    interior = np.linalg.norm(ap - v[:, None] * e1 - w[:, None] * e2, axis=1)
    candidates.append(np.where(inside, interior, np.inf))
    return np.min(candidates, axis=0)


def _reference_mesh_distances(points, vertices, faces):
    tri = vertices[faces]
    return np.array([_reference_distances(np.broadcast_to(p, tri[:, 0].shape), tri[:, 0], tri[:, 1],
                                          tri[:, 2]).min() for p in points])


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _distance(p, a, b, c):
    return float(G.point_triangle_distances(np.array([p], float), np.array([a], float),
                                            np.array([b], float), np.array([c], float))[0])


# ----------------------------------------------------------------------------------------------
# Point to triangle


A, B, Cc = (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)


@pytest.mark.parametrize("point, expected_closest", [
    ((0.25, 0.25, 2.0), (0.25, 0.25, 0.0)),    # above the interior
    ((0.25, 0.25, -3.0), (0.25, 0.25, 0.0)),   # below it
    ((0.5, -1.0, 1.0), (0.5, 0.0, 0.0)),       # beyond edge AB
    ((-2.0, 0.5, 0.0), (0.0, 0.5, 0.0)),       # beyond edge AC
    ((1.0, 1.0, 0.5), (0.5, 0.5, 0.0)),        # beyond edge BC
    ((-1.0, -1.0, 1.0), (0.0, 0.0, 0.0)),      # beyond corner A
    ((2.0, -1.0, 0.0), (1.0, 0.0, 0.0)),       # beyond corner B
    ((-0.5, 2.0, 0.0), (0.0, 1.0, 0.0)),       # beyond corner C
    ((0.2, 0.3, 0.0), (0.2, 0.3, 0.0)),        # on the triangle
])
def test_point_triangle_analytic(point, expected_closest):
    closest = G.closest_points_on_triangles(np.array([point]), np.array([A]), np.array([B]),
                                            np.array([Cc]))[0]
    np.testing.assert_allclose(closest, expected_closest, atol=EXACT)
    expected = np.linalg.norm(np.subtract(point, expected_closest))
    assert _distance(point, A, B, Cc) == pytest.approx(expected, abs=EXACT)


@pytest.mark.parametrize("a, b, c, point, expected", [
    ((0, 0, 0), (1, 0, 0), (2, 0, 0), (1.5, 1.0, 0.0), 1.0),           # collinear: a segment
    ((0, 0, 0), (1, 0, 0), (2, 0, 0), (3.0, 0.0, 0.0), 1.0),           # beyond its far end
    ((0, 0, 0), (2, 0, 0), (1, 0, 0), (-1.0, 0.0, 1.0), math.sqrt(2)),  # middle corner last
    ((0, 0, 0), (0, 0, 0), (0, 2, 0), (1.0, 1.0, 0.0), 1.0),           # two corners coincide
    ((1, 1, 1), (1, 1, 1), (1, 1, 1), (1.0, 1.0, 2.0), 1.0),           # a point
])
def test_point_triangle_degenerate(a, b, c, point, expected):
    assert _distance(point, a, b, c) == pytest.approx(expected, abs=EXACT)


def test_point_triangle_matches_reference_on_random_cases():
    rng = np.random.default_rng(3)
    n = 20000
    a, b, c = rng.normal(size=(3, n, 3))
    # Some thin and tiny triangles too.
    c[:200] = a[:200] + 1e-7 * rng.normal(size=(200, 3)) + 0.5 * (b[:200] - a[:200])
    b[200:300] = a[200:300] + 1e-9 * rng.normal(size=(100, 3))
    p = 2.0 * rng.normal(size=(n, 3))
    got = G.point_triangle_distances(p, a, b, c)
    np.testing.assert_allclose(got, _reference_distances(p, a, b, c), rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Mesh distances behind the spatial index


def test_sphere_points_against_icosphere_within_sagitta():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    # Distance of each face's plane from the centre; the mesh lies between min(h) and 1.
    h = np.abs(np.einsum("ij,ij->i", normals / np.linalg.norm(normals, axis=1, keepdims=True),
                         tri[:, 0]))
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(2000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = np.concatenate([np.ones(1000), rng.uniform(1.0, 1.5, 1000)])
    points = directions * radii[:, None]
    d = G.MeshSurface(vertices, faces).distances(points)
    assert np.all(d >= radii - 1.0 - EXACT)        # the mesh is inside the unit ball
    assert np.all(d <= radii - h.min() + EXACT)    # the ray to the centre meets a face by then
    assert d[:1000].max() > 0.5 * (1.0 - h.min())  # and the gap (the sagitta) is really seen
    np.testing.assert_allclose(d, G.brute_force_distances(points, vertices, faces), rtol=0, atol=EXACT)
    np.testing.assert_allclose(d[::4], _reference_mesh_distances(points[::4], vertices, faces),
                               rtol=0, atol=EXACT)


def test_index_exact_with_mixed_sizes_degenerate_faces_and_far_points():
    rng = np.random.default_rng(5)
    small = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    vertices = np.concatenate([small.vertices, [[-30, -30, 5], [30, -30, 5], [0, 40, 5],
                                                [2, 2, 2], [3, 3, 3], [4, 4, 4]]])
    n = len(small.vertices)
    faces = np.concatenate([small.faces, [[n, n + 1, n + 2],            # one huge triangle
                                          [n + 3, n + 4, n + 5],        # collinear
                                          [n + 3, n + 3, n + 3]]])      # a point
    points = np.concatenate([rng.normal(scale=1.5, size=(500, 3)),
                             rng.normal(scale=60.0, size=(300, 3)),     # far away
                             rng.uniform(-1, 1, size=(100, 3)) * [20, 20, 0] + [0, 0, 5.5]])
    query = G.MeshSurface(vertices, faces, neighbours=2).query(points)
    np.testing.assert_allclose(query.distances, G.brute_force_distances(points, vertices, faces),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(points - query.closest, axis=1), query.distances,
                               rtol=0, atol=1e-12)


def test_cached_query_stays_exact_while_points_move():
    vertices, faces = _head_mesh(subdivisions=3)
    surface = G.MeshSurface(vertices, faces)
    rng = np.random.default_rng(9)
    points = vertices[rng.integers(0, len(vertices), 400)] + rng.normal(scale=4.0, size=(400, 3))
    cache = G.CachedQuery(surface, margin=0.5)
    direction = np.array([0.6, -0.48, 0.64])  # unit
    for offset in [0.0, 0.1, 0.2, 5.0, 0.3, 0.4]:
        # Moves within the margin of where the sets were built reuse them; 5.0 and the way
        # back from it force rebuilds.
        moved = points + offset * direction
        got, expected = cache.query(moved), surface.query(moved)
        # (Equal up to rounding: on a shared edge two triangles tie and either may be named.)
        np.testing.assert_allclose(got.distances, expected.distances, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.closest, expected.closest, rtol=0, atol=1e-12)
    assert cache.rebuilds == 3  # the first call, the big move, and the return after it


def test_index_matches_trimesh_closest_point():
    pytest.importorskip("rtree")  # trimesh's proximity query needs it
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=80.0)
    rng = np.random.default_rng(1)
    points = rng.normal(size=(3000, 3)) * 60.0
    _, theirs, _ = trimesh.proximity.closest_point(mesh, points)
    ours = G.MeshSurface(mesh.vertices, mesh.faces).distances(points)
    # trimesh's candidate search can, rarely, miss the closest triangle by a hair (seen in
    # bench/eval_speed.py); where the two differ the brute force must side with ours.
    differ = np.abs(ours - theirs) > 1e-9
    assert differ.mean() < 0.01
    assert np.all(ours[differ] < theirs[differ])
    np.testing.assert_allclose(ours[differ], G.brute_force_distances(points[differ], mesh.vertices,
                                                                     mesh.faces), rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Alignment


def test_fit_similarity_recovers_known_transform_from_landmarks():
    rng = np.random.default_rng(7)
    landmarks_m = rng.normal(scale=0.04, size=(7, 3))
    truth = G.Similarity(1000.0 * rng.uniform(0.8, 1.2), _random_rotation(rng), rng.normal(scale=50, size=3))
    fitted = G.fit_similarity(landmarks_m, truth.apply(landmarks_m))
    assert fitted.scale == pytest.approx(truth.scale, rel=1e-12)
    np.testing.assert_allclose(fitted.rotation, truth.rotation, atol=1e-12)
    np.testing.assert_allclose(fitted.translation, truth.translation, atol=1e-9)
    np.testing.assert_allclose(fitted.inverse_apply(fitted.apply(landmarks_m)), landmarks_m, atol=1e-15)


def test_fit_similarity_refuses_reflections_unless_asked():
    rng = np.random.default_rng(8)
    source = rng.normal(size=(7, 3))
    mirrored = source * [-1.0, 1.0, 1.0]
    proper = G.fit_similarity(source, mirrored)
    assert np.linalg.det(proper.rotation) == pytest.approx(1.0)
    mirror = G.fit_similarity(source, mirrored, allow_reflection=True)
    assert np.linalg.det(mirror.rotation) == pytest.approx(-1.0)
    np.testing.assert_allclose(mirror.apply(source), mirrored, atol=1e-12)


def _head_mesh(subdivisions=3, axes=(75.0, 95.0, 85.0)):
    """A head-sized ellipsoid in mm: [V, 3] vertices, [F, 3] faces."""
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    return np.asarray(sphere.vertices) * axes, np.asarray(sphere.faces)


def _face_landmarks(axes=(75.0, 95.0, 85.0)):
    """The 7 NoW landmarks on the ellipsoid's front (mm), in NoW order."""
    xy = np.array([[-45, 25], [-15, 25], [15, 25], [45, 25], [0, -20], [-25, -45], [25, -45]], float)
    a, b, c = axes
    z = c * np.sqrt(1.0 - (xy[:, 0] / a) ** 2 - (xy[:, 1] / b) ** 2)
    return np.column_stack([xy, z])


def _cropped(vertices, landmarks):
    mask = now.crop_mask(vertices, landmarks)
    centre, radius = now.crop_sphere(landmarks)
    return now.CroppedScan(points=vertices[mask], landmarks=landmarks, total_vertices=len(vertices),
                           centre=centre, radius=radius, scan_path=Path("scan.obj"),
                           landmarks_path=Path("scan.pp"))


def test_refinement_recovers_perturbation_beyond_landmark_noise():
    rng = np.random.default_rng(11)
    vertices, faces = _head_mesh(subdivisions=3)
    landmarks = _face_landmarks()
    samples, _ = trimesh.sample.sample_surface_even(trimesh.Trimesh(vertices, faces, process=False),
                                                    6000, seed=2)
    scan = _cropped(np.asarray(samples), landmarks)
    truth = G.Similarity(1e-3, _random_rotation(rng), rng.normal(size=3))  # scan mm -> prediction m
    pred_vertices = truth.apply(vertices)
    noisy = truth.apply(landmarks + rng.normal(scale=3.0, size=(7, 3)))  # 3 mm landmark noise
    result = now.evaluate_prediction(scan, pred_vertices, faces, noisy)
    assert result.landmark_rmse_mm > 1.0
    assert result.initial_rms_mm > 0.5                 # the landmarks alone leave it misaligned
    assert result.final_rms_mm < 1e-6                  # the refinement removes it
    assert result.distances_mm.max() < 1e-5
    recovered = result.transform                       # prediction -> scan, should invert truth
    np.testing.assert_allclose(recovered.apply(pred_vertices), vertices, atol=1e-5)
    assert recovered.scale == pytest.approx(1000.0, rel=1e-8)


def test_refinement_subset_then_full_matches_full():
    rng = np.random.default_rng(12)
    vertices, faces = _head_mesh(subdivisions=3)
    other, _ = _head_mesh(subdivisions=3, axes=(78.0, 92.0, 88.0))   # a different shape
    scan = np.asarray(trimesh.sample.sample_surface_even(
        trimesh.Trimesh(other, faces, process=False), 5000, seed=4)[0])
    start = G.Similarity(1.01, G.rotation_from_axis_angle(rng.normal(scale=0.03, size=3)),
                         rng.normal(size=3))
    surface = G.MeshSurface(start.apply(vertices), faces)
    full = G.refine_similarity(surface, scan, fit_points=None)
    staged = G.refine_similarity(surface, scan, fit_points=500)
    assert full.final_rms < 0.9 * full.initial_rms
    # Both stop within the refinement's tolerance of the same optimum (a shallow one: a coarse
    # mesh against another shape), so the distances agree far below the metric's 0.01 mm.
    assert staged.final_rms == pytest.approx(full.final_rms, rel=1e-6)
    np.testing.assert_allclose(staged.distances, full.distances, atol=5e-3)
    assert np.median(staged.distances) == pytest.approx(np.median(full.distances), abs=1e-3)


# ----------------------------------------------------------------------------------------------
# Crop


def test_crop_rule_on_hand_built_landmarks():
    landmarks = np.array([[-40, 0, 0], [-10, 0, 0], [10, 0, 0], [40, 0, 0], [0, -40, 0],
                          [-20, -60, 0], [20, -60, 0]], float)
    centre, radius = now.crop_sphere(landmarks)
    # bridge = (0, 0, 0); centre = nose + 0.3 (bridge - nose); radius = 1.4 (80 + 40) / 2
    np.testing.assert_allclose(centre, [0.0, -28.0, 0.0])
    assert radius == pytest.approx(84.0)
    vertices = centre + np.array([[0, 0, 0], [84.0, 0, 0], [0, 0, -84.0], [84.001, 0, 0],
                                  [0, 60, 60], [0, 59, 59]], float)
    np.testing.assert_array_equal(now.crop_mask(vertices, landmarks),
                                  [True, True, True, False, False, True])


# ----------------------------------------------------------------------------------------------
# PickPoints


def test_pickpoints_reads_meshlab_file():
    points = pickpoints.read_pickpoints(DATA / "subject_scan_landmarks.pp", expected_count=7)
    assert [p.name for p in points] == [str(i) for i in range(7)]
    assert points[0].xyz == (-45.125, 25.5, 60.25)
    assert points[2].xyz == (15.0, 24.75, 78.5)        # attributes in another order
    assert points[6].xyz == (25.5, -45.0, 75.0)        # exponent notation
    assert [p.active for p in points] == [True] * 5 + [False, True]
    array = pickpoints.pickpoints_array(points)
    assert array.shape == (7, 3) and array.dtype == np.float64


def test_pickpoints_round_trip(tmp_path):
    coords = np.random.default_rng(0).normal(size=(7, 3)) * 50
    path = tmp_path / "x.pp"
    pickpoints.write_pickpoints(path, coords, data_file_name="scan.obj", active=[True] * 6 + [False])
    assert path.read_text().startswith("<!DOCTYPE PickedPoints>\n<PickedPoints>")
    points = pickpoints.read_pickpoints(path, expected_count=7)
    np.testing.assert_array_equal(pickpoints.pickpoints_array(points), coords)
    assert not points[6].active


@pytest.mark.parametrize("content, message", [
    ("<!DOCTYPE PickedPoints>\n<PickedPoints>\n <point x='1' y='2' z='3'\n</PickedPoints>", "not valid XML"),
    ("<Other><point x='1' y='2' z='3'/></Other>", "root element"),
    ("<PickedPoints><point x='1' y='2'/></PickedPoints>", "no 'z'"),
    ("<PickedPoints><point x='1' y='abc' z='3'/></PickedPoints>", "non-numeric 'y'"),
    ("<PickedPoints><point x='1' y='2' z='nan'/></PickedPoints>", "non-finite"),
    ("<PickedPoints><point x='1' y='2' z='3' active='yes'/></PickedPoints>", "active="),
    ("<PickedPoints><point x='1' y='2' z='3'/></PickedPoints>", "1 points, expected 7"),
])
def test_pickpoints_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.pp"
    path.write_text(content)
    with pytest.raises(pickpoints.PickPointsError) as err:
        pickpoints.read_pickpoints(path, expected_count=7)
    assert str(err.value).startswith(str(path)) and message in str(err.value)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------
# Mesh and landmark files


def test_read_obj_formats_and_errors(tmp_path):
    path = tmp_path / "m.obj"
    path.write_text("# comment\nmtllib x.mtl\nv 0 0 0\nv 1 0 0 0.5 0.5 0.5\nv 1 1 0\nv 0 1 0\n"
                    "vt 0 0\nvn 0 0 1\ng face\nf 1/1/1 2/1/1 3/1/1 4/1/1\nf -4//1 -2//1 -1//1\n")
    vertices, faces = mesh_io.read_obj(path)
    assert vertices.shape == (4, 3)
    np.testing.assert_array_equal(faces, [[0, 1, 2], [0, 2, 3], [0, 2, 3]])
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1/1/1 2/2/2 3/3/3\nf -1//1 -4//1 -2//1\n")
    np.testing.assert_array_equal(mesh_io.read_obj(path)[1], [[0, 1, 2], [3, 0, 2]])  # all triangles
    for text, message in [("v 0 0 0\nv 1 x 0\n", ":2: malformed vertex"),
                          ("v 0 0 0\nf 1 2 3\n", "out of range"),
                          ("not an obj\n", "no vertex"),
                          ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2\n", "fewer than 3")]:
        path.write_text(text)
        with pytest.raises(mesh_io.MeshReadError, match=message) as err:
            mesh_io.read_mesh(path)
        assert str(err.value).startswith(str(path))


def test_read_ply_mesh(tmp_path):
    mesh = trimesh.creation.icosphere(subdivisions=1)
    path = tmp_path / "m.ply"
    mesh.export(path)
    vertices, faces = mesh_io.read_mesh(path)
    np.testing.assert_allclose(vertices, mesh.vertices, atol=1e-6)  # PLY stores float32
    np.testing.assert_array_equal(faces, mesh.faces)
    path.write_bytes(b"ply\nformat nonsense\n")
    with pytest.raises(mesh_io.MeshReadError, match="cannot read PLY"):
        mesh_io.read_mesh(path)


def test_load_scan_crops_converts_and_warns_on_inactive_landmarks(tmp_path):
    vertices, faces = _head_mesh(subdivisions=3)
    write_mesh(tmp_path / "scan.obj", vertices / 10.0, faces, digits=12)  # in cm
    landmarks = pickpoints.pickpoints_array(
        pickpoints.read_pickpoints(DATA / "subject_scan_landmarks.pp"))
    pickpoints.write_pickpoints(tmp_path / "scan.pp", landmarks / 10.0, active=[True] * 5 + [False, True])
    scan = now.load_scan(tmp_path / "scan.obj", tmp_path / "scan.pp", scan_unit="cm")
    np.testing.assert_allclose(scan.landmarks, landmarks, atol=1e-12)
    assert scan.total_vertices == len(vertices)
    np.testing.assert_allclose(scan.points, vertices[now.crop_mask(vertices, landmarks)], atol=1e-12)
    assert len(scan.warnings) == 1 and "landmark 5 (right mouth corner) is marked inactive" in scan.warnings[0]


def test_read_landmarks_shapes(tmp_path):
    lmk = np.arange(21, dtype=float).reshape(7, 3)
    np.save(tmp_path / "a.npy", lmk[None])
    np.testing.assert_array_equal(landmark_files.read_landmarks(tmp_path / "a.npy", 7), lmk)
    (tmp_path / "b.txt").write_text("\n".join(" ".join(map(str, row)) for row in lmk) + "\n")
    np.testing.assert_array_equal(landmark_files.read_landmarks(tmp_path / "b.txt", 7), lmk)
    np.save(tmp_path / "c.npy", lmk[:6])
    with pytest.raises(mesh_io.MeshReadError, match=r"shape \(6, 3\)"):
        landmark_files.read_landmarks(tmp_path / "c.npy", 7)


# ----------------------------------------------------------------------------------------------
# The metric


def test_error_curve_png_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    pytest.importorskip("matplotlib")
    # In a fresh process: the backend is process-wide state, which this test must not change.
    script = (
        "import matplotlib, sys\n"
        "matplotlib.use('pdf')\n"
        "from ringnet_tf.evaluate import plot\n"
        "t, p = plot.cumulative_curve([0.5, 1.0, 2.0, 9.0])\n"
        "plot.plot_cumulative_curve(sys.argv[1], t, p, 'label')\n"
        "print(matplotlib.get_backend())\n")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "curve.png"
    done = subprocess.run([sys.executable, "-c", script, str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pdf"
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_metric_is_zero_for_the_scan_itself_in_metres():
    rng = np.random.default_rng(21)
    vertices, faces = _head_mesh(subdivisions=4)
    landmarks = _face_landmarks()
    scan = _cropped(vertices, landmarks)
    to_metres = G.Similarity(1e-3, _random_rotation(rng), rng.normal(size=3))
    result = now.evaluate_prediction(scan, to_metres.apply(vertices), faces, to_metres.apply(landmarks))
    assert len(result.distances_mm) == len(scan.points) > 500
    assert result.distances_mm.max() < 1e-9
    assert result.landmark_transform.scale == pytest.approx(1000.0, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# End to end on a tiny NoW layout


def _make_now_layout(root: Path, missing: bool = True) -> tuple[Path, Path]:
    """gt/ (2 subjects, list of 4 images) and pred/ (3 predictions: one is missing)."""
    rng = np.random.default_rng(0)
    gt, pred = root / "gt", root / "pred"
    subjects = ["FaMoS_180424_03335_TA", "FaMoS_180427_03338_TA"]
    images = []
    scan_vertices, scan_faces = _head_mesh(subdivisions=3)
    landmarks = _face_landmarks()
    for s, subject in enumerate(subjects):
        (gt / "scans" / subject).mkdir(parents=True)
        (gt / "scans_lmks_onlypp" / subject).mkdir(parents=True)
        write_mesh(gt / "scans" / subject / "natural_head_rotation.000001.obj",
                   scan_vertices, scan_faces, digits=12)
        pickpoints.write_pickpoints(gt / "scans_lmks_onlypp" / subject / "natural_head_rotation.000001_picked_points.pp",
                                    landmarks, data_file_name="natural_head_rotation.000001.obj")
        for challenge, image in [("multiview_neutral", "IMG_0101.jpg"), ("selfie", "IMG_0203.jpg")]:
            images.append(f"{subject}/{challenge}/{image}")
            if missing and s == 1 and challenge == "selfie":
                continue
            # The prediction: the scan's shape (4 % deeper for subject 1), in metres.
            stretch = np.array([1.0, 1.0, 1.0 + 0.04 * s])
            shape = scan_vertices * stretch
            to_m = G.Similarity(1e-3, _random_rotation(rng), rng.normal(scale=0.1, size=3))
            folder = pred / subject / challenge
            folder.mkdir(parents=True, exist_ok=True)
            write_mesh(folder / f"{image[:-4]}.obj", to_m.apply(shape), scan_faces, digits=12)
            np.save(folder / f"{image[:-4]}.npy", to_m.apply(landmarks * stretch)[None])
    (gt / "imagepathsvalidation.txt").write_text("\n".join(images) + "\n")
    return gt, pred


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ringnet_tf.evaluate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_end_to_end_with_a_missing_prediction(tmp_path):
    gt, pred = _make_now_layout(tmp_path)
    done = _run_cli("now", "--pred", str(pred), "--gt", str(gt))
    assert done.returncode == 0, done.stderr
    assert "3 of 4 images evaluated, 1 missing" in done.stdout
    assert "FaMoS_180427_03338_TA/selfie/IMG_0203" in done.stdout
    assert "[4/4]" in done.stderr and "MISSING" in done.stderr
    out = pred / "now_eval"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluated"] == 3 and summary["missing"] == 1
    assert summary["per_challenge"]["selfie"] == {**summary["per_challenge"]["selfie"],
                                                  "evaluated": 1, "missing": 1}
    # Subject 0's predictions are its scan: zero error; subject 1's is 4 % deeper.
    d0 = np.load(out / "distances/FaMoS_180424_03335_TA/multiview_neutral/IMG_0101.npy")
    d1 = np.load(out / "distances/FaMoS_180427_03338_TA/multiview_neutral/IMG_0101.npy")
    assert d0.max() < 1e-4 and 0.01 < np.median(d1) < 2.0
    pooled = np.concatenate([np.load(out / i["distances"]) for i in summary["images"]])
    assert summary["median_mm"] == pytest.approx(float(np.median(pooled)), abs=1e-6)
    assert summary["mean_mm"] == pytest.approx(float(np.mean(pooled, dtype=np.float64)), abs=1e-6)
    assert summary["std_mm"] == pytest.approx(float(np.std(pooled, dtype=np.float64)), abs=1e-6)
    assert (out / "summary.txt").read_text().startswith("NoW scan-to-mesh error: 3 of 4")
    assert (out / "cumulative_error.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = np.loadtxt(out / "cumulative_error.csv", delimiter=",", skiprows=1)
    assert curve[0, 0] == 0.0 and curve[-1, 0] == 8.0 and np.all(np.diff(curve[:, 1]) >= 0)
    # A second run refuses to overwrite, unless forced.
    again = _run_cli("now", "--pred", str(pred), "--gt", str(gt), "--quiet")
    assert again.returncode == 2 and "already exists" in again.stderr
    (out / "old_marker.txt").write_text("from the first run")
    forced = _run_cli("now", "--pred", str(pred), "--gt", str(gt), "--quiet", "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stderr == ""
    assert not (out / "old_marker.txt").exists() and (out / "summary.json").exists()
    assert sorted(p.name for p in pred.iterdir() if p.name.startswith(".")) == []


def test_cli_without_list_evaluates_every_prediction(tmp_path, capsys):
    gt, pred = _make_now_layout(tmp_path)
    (gt / "imagepathsvalidation.txt").unlink()
    out = tmp_path / "results" / "run1"
    assert cli_main(["now", "--pred", str(pred), "--gt", str(gt), "--out", str(out),
                     "--challenge", "multiview_neutral"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluated"] == 2 and summary["missing"] == 0
    assert "every prediction found" in summary["image_source"]


def test_scan_unit_flag(tmp_path):
    gt, pred = _make_now_layout(tmp_path, missing=False)
    subject = "FaMoS_180427_03338_TA"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{subject}/multiview_neutral/IMG_0101.jpg\n")

    def run(unit: str, out: Path) -> now.NowReport:
        out.mkdir()
        return now.run_now(now.NowConfig(pred_dir=pred, gt_dir=gt, images=listing, scan_unit=unit), out)

    in_mm = run("mm", tmp_path / "out_mm")
    # The same scan and landmarks written in metres, read with --scan-unit m.
    scan_obj = next((gt / "scans" / subject).glob("*.obj"))
    v, f = mesh_io.read_obj(scan_obj)
    write_mesh(scan_obj, v / 1000.0, f, digits=12)
    pp = next((gt / "scans_lmks_onlypp" / subject).glob("*.pp"))
    pickpoints.write_pickpoints(pp, pickpoints.pickpoints_array(pickpoints.read_pickpoints(pp)) / 1000.0)
    in_m = run("m", tmp_path / "out_m")
    assert in_mm.summary["median_mm"] > 0.01
    assert in_m.summary["median_mm"] == pytest.approx(in_mm.summary["median_mm"], rel=1e-5)
    assert in_m.summary["scan_vertices"] == in_mm.summary["scan_vertices"]


def test_cli_bad_input_corrupt_obj(tmp_path):
    gt, pred = _make_now_layout(tmp_path)
    broken = pred / "FaMoS_180427_03338_TA" / "multiview_neutral" / "IMG_0101.obj"
    broken.write_text("v 0 0 0\nv 1 0 0\nv 0 1 garbage\nf 1 2 3\n")
    done = _run_cli("now", "--pred", str(pred), "--gt", str(gt))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(broken) in errors[0], done.stderr
    assert not (pred / "now_eval").exists()
    assert [p.name for p in pred.iterdir() if p.name.startswith(".")] == []


def test_cli_bad_input_scan_and_list(tmp_path, capsys):
    gt, pred = _make_now_layout(tmp_path)
    scan = next((gt / "scans" / "FaMoS_180424_03335_TA").glob("*.obj"))
    scan.write_text("this is not a mesh\n")
    assert cli_main(["now", "--pred", str(pred), "--gt", str(gt), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(scan) in err and "\n" not in err
    assert not (pred / "now_eval").exists()
    bad_list = tmp_path / "list.txt"
    bad_list.write_text("just_a_name.jpg\n")
    assert cli_main(["now", "--pred", str(pred), "--gt", str(gt), "--images", str(bad_list)]) == 2
    assert f"{bad_list}:1:" in capsys.readouterr().err


def test_cli_all_missing_is_an_error(tmp_path, capsys):
    gt, _ = _make_now_layout(tmp_path)
    empty = tmp_path / "empty_pred"
    empty.mkdir()
    assert cli_main(["now", "--pred", str(empty), "--gt", str(gt), "--quiet"]) == 2
    assert "none of the 4 listed predictions exists" in capsys.readouterr().err
    assert list(empty.iterdir()) == []


def test_cli_help_describes_the_protocol():
    done = _run_cli("now", "--help")
    assert done.returncode == 0
    for text in ("--pred", "--gt", "--images", "--out", "--force", "--scan-unit", "scans_lmks_onlypp",
                 "imagepathsvalidation.txt", "missing"):
        assert text in done.stdout


@pytest.mark.parametrize("line", ["FaMoS_180424_03335_TA/../../../evil.jpg",
                                  "../multiview_neutral/IMG_0101.jpg",
                                  "FaMoS_180424_03335_TA/./IMG_0101.jpg"])
def test_image_list_paths_never_leave_out(tmp_path, capsys, line):
    """A list line with '..' or '.' must not name files outside --pred / --out (issue 14, item 3)."""
    gt, pred = _make_now_layout(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text(f"FaMoS_180424_03335_TA/multiview_neutral/IMG_0101.jpg\n{line}\n")
    victim = tmp_path / "evil.npy"
    victim.write_bytes(b"precious")
    out = tmp_path / "res"
    assert cli_main(["now", "--pred", str(pred), "--gt", str(gt), "--images", str(listing),
                     "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"{listing}:2:" in err and "\n" not in err
    assert victim.read_bytes() == b"precious" and not out.exists()


def test_image_list_same_stem_twice_is_an_error(tmp_path):
    """face.jpg and face.png of one challenge would share a distances file: refuse the list."""
    listing = tmp_path / "list.txt"
    listing.write_text("s/selfie/IMG_1.jpg\ns/selfie/IMG_1.png\n")
    with pytest.raises(now.NowInputError, match=r"list.txt:2: s/selfie/IMG_1 repeats line 1"):
        now.read_image_list(listing)
