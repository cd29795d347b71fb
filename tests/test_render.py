"""The NumPy renderer against independent truths: brute-force coverage and z-buffering, analytic
areas, Lambert's law, the camera's own projection, and exact fill-rule bookkeeping."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from ringnet_tf import camera
from ringnet_tf import render as R
from ringnet_tf.render import raster

# With s = 1, tx = ty = 0 and a 64-pixel image, u = 32 (X + 1) - 0.5 and v = 32 (1 - Y) - 0.5 (pixel
# centres at whole numbers): these helpers place vertices at chosen pixel positions (exactly, for
# multiples of 1/32 pixel).
SIZE = 64
CAM = np.array([1.0, 0.0, 0.0])


def cross2(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def at_pixels(uv, z=0.0) -> np.ndarray:
    uv = np.asarray(uv, np.float64)
    zs = np.broadcast_to(np.asarray(z, np.float64), (len(uv),))
    return np.stack([(uv[:, 0] + 0.5) / 32.0 - 1.0, 1.0 - (uv[:, 1] + 0.5) / 32.0, zs], axis=1)


def centres(size: int) -> np.ndarray:
    """[size, size, 2] pixel-centre coordinates (u, v): whole numbers."""
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    return np.stack([u, v], axis=-1)


def edge_values(tri_uv: np.ndarray, size: int) -> np.ndarray:
    """[3, size, size] signed distances (pixels) of every centre to the triangle's three edges,
    positive inside, whatever the winding."""
    p = centres(size)
    out = []
    area = cross2(tri_uv[1] - tri_uv[0], tri_uv[2] - tri_uv[0])
    for i in range(3):
        a, b = tri_uv[(i + 1) % 3], tri_uv[(i + 2) % 3]
        d = b - a
        out.append(np.sign(area) * ((d[0] * (p[..., 1] - a[1]) - d[1] * (p[..., 0] - a[0]))
                                    / np.linalg.norm(d)))
    return np.stack(out)


def one_triangle(tri_uv, z=0.0, **kwargs):
    verts = at_pixels(tri_uv, z)
    return R.render(verts, np.array([[0, 1, 2]]), CAM, SIZE, **kwargs)


# ---------------------------------------------------------------------------------------------
# Coverage


@pytest.mark.parametrize("seed", range(6))
def test_triangle_coverage_matches_brute_force_and_area(seed):
    rng = np.random.default_rng(seed)
    while True:
        tri = rng.uniform(-4, SIZE + 4, size=(3, 2))  # may stick out of the image
        area = 0.5 * abs(cross2(tri[1] - tri[0], tri[2] - tri[0]))
        if area > 300:
            break
    result = one_triangle(tri)
    dist = edge_values(tri, SIZE)
    expected = (dist > 0).all(axis=0)
    # Rule: vertices snap to 1/256 pixel, so centres within that of an edge may go either way.
    ambiguous = (np.abs(dist) < 1 / 128).any(axis=0)
    assert ambiguous.sum() <= 10  # a band 1/64 pixel wide along the edges
    np.testing.assert_array_equal(result.mask[~ambiguous], expected[~ambiguous])
    np.testing.assert_array_equal(result.face_index[result.mask], 0)
    assert (result.face_index[~result.mask] == -1).all()
    assert np.isneginf(result.depth[~result.mask]).all()


def test_large_triangle_area_is_analytic():
    tri = np.array([[3.3, 5.1], [60.7, 12.9], [20.2, 61.4]])
    area = 0.5 * abs(cross2(tri[1] - tri[0], tri[2] - tri[0]))
    count = one_triangle(tri).mask.sum()
    perimeter = sum(np.linalg.norm(tri[i] - tri[i - 1]) for i in range(3))
    assert abs(count - area) < 0.1 * perimeter  # sampling error of a straight-edged region
    assert abs(count - area) / area < 0.01


def test_fill_rule_is_watertight_without_double_cover():
    # A 40 x 40 square whose sides and diagonal run through pixel centres, split in two triangles.
    p = np.array([[10.0, 10.0], [50.0, 10.0], [50.0, 50.0], [10.0, 50.0]])
    verts = at_pixels(p)
    np.testing.assert_allclose(camera.project(verts, CAM, SIZE), p, atol=1e-12)  # the helper
    faces = np.array([[0, 2, 1], [0, 3, 2]])  # counter-clockwise in the model (y up)
    both = R.render(verts, faces, CAM, SIZE)
    first = R.render(verts, faces[:1], CAM, SIZE)
    second = R.render(verts, faces[1:], CAM, SIZE)
    assert not (first.mask & second.mask).any()  # centres on the diagonal are drawn once
    np.testing.assert_array_equal(first.mask | second.mask, both.mask)
    # Centres on the square's boundary belong to two of its four sides: the count is the area.
    assert both.mask.sum() == 40 * 40
    # Both windings cover the same pixels.
    flipped = R.render(verts, faces[:, ::-1], CAM, SIZE)
    np.testing.assert_array_equal(flipped.mask, both.mask)


def test_mesh_seen_through_fan_has_no_cracks():
    # A fan of 12 triangles around a centre that is itself a pixel centre: every pixel once.
    angles = np.linspace(0, 2 * np.pi, 13)[:-1]
    ring = np.stack([32 + 20 * np.cos(angles), 32 + 20 * np.sin(angles)], axis=1)
    uv = np.concatenate([[[32.0, 32.0]], ring])
    faces = np.array([[0, 1 + (i + 1) % 12, 1 + i] for i in range(12)])
    verts = at_pixels(uv)
    counts = sum(R.render(verts, faces[i:i + 1], CAM, SIZE).mask.astype(int) for i in range(12))
    assert counts.max() == 1
    np.testing.assert_array_equal(counts > 0, R.render(verts, faces, CAM, SIZE).mask)


# ---------------------------------------------------------------------------------------------
# Visibility


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_nearer_triangle_wins_in_either_order(order):
    near = at_pixels([[8, 8], [56, 12], [20, 56]], z=0.5)
    far = at_pixels([[4, 30], [60, 4], [60, 60]], z=-0.5)
    tris = [near, far]
    verts = np.concatenate([tris[order[0]], tris[order[1]]])
    faces = np.array([[0, 2, 1], [3, 5, 4]])
    result = R.render(verts, faces, CAM, SIZE, colors=None)
    near_index = order.index(0)
    near_mask = R.render(near, np.array([[0, 2, 1]]), CAM, SIZE).mask
    far_mask = R.render(far, np.array([[0, 2, 1]]), CAM, SIZE).mask
    assert (near_mask & far_mask).sum() > 200  # they do overlap
    np.testing.assert_array_equal(result.face_index[near_mask], near_index)
    np.testing.assert_array_equal(result.face_index[far_mask & ~near_mask], 1 - near_index)
    np.testing.assert_allclose(result.depth[near_mask], 0.5, atol=1e-6)


def test_triangle_soup_matches_brute_force_z_buffer():
    # 40 random overlapping triangles of both windings, sizes from sub-pixel to most of the image.
    rng = np.random.default_rng(7)
    centre = rng.uniform(0, SIZE, (40, 1, 2))
    uv = centre + rng.normal(0, 1, (40, 3, 2)) * rng.choice([0.7, 3, 12, 30], (40, 1, 1))
    z = rng.uniform(-1, 1, (40, 3))
    verts = np.concatenate([at_pixels(uv[i], z[i]) for i in range(40)])
    faces = np.arange(120).reshape(40, 3)
    result = R.render(verts, faces, CAM, SIZE)
    best = np.full((SIZE, SIZE), -np.inf)
    expected = np.full((SIZE, SIZE), -1)
    ambiguous = np.zeros((SIZE, SIZE), bool)
    tol = np.zeros((SIZE, SIZE))
    p = centres(SIZE)
    for f in range(40):
        dist = edge_values(uv[f], SIZE)
        area = cross2(uv[f, 1] - uv[f, 0], uv[f, 2] - uv[f, 0])
        if abs(area) < 1e-9:
            continue
        inside = (dist > 0).all(axis=0)
        ambiguous |= (np.abs(dist) < 1 / 128).any(axis=0) & (dist > -1 / 128).all(axis=0)
        l1 = cross2(p - uv[f, 0], uv[f, 2] - uv[f, 0]) / area  # barycentric weight of corner 1
        l2 = cross2(uv[f, 1] - uv[f, 0], p - uv[f, 0]) / area  # ... of corner 2
        depth = z[f, 0] * (1 - l1 - l2) + z[f, 1] * l1 + z[f, 2] * l2
        # The renderer interpolates on the snapped triangle: allow its depth gradient x 1/256 px.
        slope = np.hypot(*np.linalg.lstsq(np.c_[uv[f], np.ones(3)], z[f], rcond=None)[0][:2])
        nearer = inside & (depth > best)
        ambiguous |= inside & (np.abs(depth - best) < 1e-5 + 2 * slope / 256)  # near-ties
        best[nearer], expected[nearer], tol[nearer] = depth[nearer], f, 1e-5 + 2 * slope / 256
    ok = ~ambiguous
    assert ok.sum() > 0.9 * SIZE * SIZE and (expected >= 0).sum() > 0.3 * SIZE * SIZE
    np.testing.assert_array_equal(result.face_index[ok], expected[ok])
    drawn = ok & (expected >= 0)
    assert (np.abs(result.depth[drawn] - best[drawn]) <= tol[drawn]).all()


def test_skipping_hidden_back_faces_changes_nothing(monkeypatch):
    # An open mesh (a sphere with a cap cut off) seen from several sides shows its inside.
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.7)
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    faces = faces[verts[faces].mean(axis=1)[:, 0] < 0.45]
    views = [R.rotate_y(verts, yaw, center=(0, 0, 0)) for yaw in (0, 60, 120, 180, 270)]
    skipped = []
    real = raster._surely_hidden

    def spy(*args):
        hidden = real(*args)
        skipped.append(hidden.sum())
        return hidden

    monkeypatch.setattr(raster, "_surely_hidden", spy)
    fast = [R.render(v, faces, CAM, 96) for v in views]
    monkeypatch.setattr(raster, "_surely_hidden", lambda zbuf, size, tri, sel: np.zeros(len(sel), bool))
    full = [R.render(v, faces, CAM, 96) for v in views]
    assert min(skipped) > 30 and sum(skipped) > 500  # the test exercises the skipping
    inside_seen = 0
    for v, a, b in zip(views, fast, full):
        for name in ("image", "depth", "face_index"):
            assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
        tri = v[faces]
        normal_z = cross2(tri[:, 1, :2] - tri[:, 0, :2], tri[:, 2, :2] - tri[:, 0, :2])
        shown = np.unique(a.face_index[a.mask])
        inside_seen += (normal_z[shown] < 0).sum()
    assert inside_seen > 50  # back faces (the inside) are visible through the hole


def test_depth_is_interpolated_z():
    tri = np.array([[5.0, 5.0], [60.0, 9.0], [12.0, 58.0]])
    z = np.array([0.1, -0.3, 0.7])
    verts = at_pixels(tri, z)
    result = R.render(verts, np.array([[0, 1, 2]]), CAM, SIZE)
    p = centres(SIZE)[result.mask]
    # Barycentric coordinates of the centres, solved independently.
    m = np.array([[tri[1, 0] - tri[0, 0], tri[2, 0] - tri[0, 0]],
                  [tri[1, 1] - tri[0, 1], tri[2, 1] - tri[0, 1]]])
    l12 = np.linalg.solve(m, (p - tri[0]).T).T
    expected = z[0] * (1 - l12.sum(1)) + z[1] * l12[:, 0] + z[2] * l12[:, 1]
    np.testing.assert_allclose(result.depth[result.mask], expected, atol=1e-5)


def test_face_index_names_the_triangle_under_the_pixel():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.6)
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    result = R.render(verts, faces, CAM, SIZE)
    uv = camera.project(verts, CAM, SIZE)
    rows, cols = np.nonzero(result.mask)
    for r, c in zip(rows[::37], cols[::37]):
        f = result.face_index[r, c]
        tri = uv[faces[f]]
        dist = edge_values(tri, SIZE)[:, r, c]
        assert (dist > -1e-2).all(), (r, c, f)
        assert verts[faces[f], 2].mean() > 0  # the front half
    # The hidden back half never shows.
    back = np.flatnonzero(verts[faces].mean(axis=1)[:, 2] < -0.1)
    assert not np.isin(result.face_index, back).any()


def test_visible_points_front_and_back_poles():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    cam = np.array([1.2, 0.1, -0.05])
    result = R.render(verts, faces, cam, SIZE)
    points = np.array([[0, 0, 0.5], [0, 0, -0.5], [0.5, 0, 0], [0, -0.5, 0], [0, 0, 0],
                       [5, 0, 0.5]])
    vis = R.visible_points(points, result, cam, SIZE)
    # front pole; back pole hidden; silhouette points seen; the centre is inside; off-image point.
    np.testing.assert_array_equal(vis, [True, False, True, True, False, False])


# ---------------------------------------------------------------------------------------------
# Shading


def _flat_quad(tilt_deg: float):
    """A 1.2 x 1.2 square in the xy plane tilted about the x axis; normal +z before the tilt."""
    p = np.array([[-0.6, -0.6, 0], [0.6, -0.6, 0], [0.6, 0.6, 0], [-0.6, 0.6, 0]])
    t = np.deg2rad(tilt_deg)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    return p @ rot.T, np.array([[0, 1, 2], [0, 2, 3]])


@pytest.mark.parametrize("tilt", [0.0, 30.0, 60.0, -45.0])
def test_lambert_on_flat_quad(tilt):
    verts, faces = _flat_quad(tilt)
    colour = np.array([0.9, 0.6, 0.3])
    ambient, diffuse = 0.25, 0.7
    result = R.render(verts, faces, CAM, SIZE, colors=np.tile(colour, (4, 1)),
                      light_dir=(0, 0, 1), ambient=ambient, diffuse=diffuse)
    expected = colour * (ambient + diffuse * np.cos(np.deg2rad(tilt))) * 255
    pixels = result.image[result.mask].astype(float)
    assert result.mask.sum() > 500
    assert np.abs(pixels - expected).max() <= 0.5 + 1e-9


def test_light_behind_gives_ambient_only_and_back_faces_are_two_sided():
    verts, faces = _flat_quad(0.0)
    ambient = 0.3
    dark = R.render(verts, faces, CAM, SIZE, light_dir=(0, 0, -1), ambient=ambient, diffuse=0.6)
    expected = np.round(np.asarray(R.DEFAULT_COLOR) * ambient * 255)
    assert (np.abs(dark.image[dark.mask].astype(float) - expected) <= 1).all()
    # Seen from behind (reversed winding) the quad is lit as if it faced the camera...
    back = R.render(verts, faces[:, ::-1], CAM, SIZE, light_dir=(0, 0, 1), ambient=0.2, diffuse=0.8)
    front = R.render(verts, faces, CAM, SIZE, light_dir=(0, 0, 1), ambient=0.2, diffuse=0.8)
    np.testing.assert_array_equal(back.image, front.image)
    # ...unless back faces are culled.
    culled = R.render(verts, faces[:, ::-1], CAM, SIZE, cull_backfaces=True)
    assert not culled.mask.any()


def test_vertex_colours_interpolate():
    # Centroid exactly on the centre of pixel (32, 32).
    tri = np.array([[32.0, 8.0], [56.0, 44.0], [8.0, 44.0]])
    assert np.allclose(tri.mean(0), 32.0)
    result = one_triangle(tri, colors=np.eye(3), ambient=1.0, diffuse=0.0)
    np.testing.assert_allclose(result.image[32, 32], [255 / 3] * 3, atol=0.51)
    # A corner pixel is dominated by its corner's colour.
    assert result.image[10, 32].argmax() == 0


# ---------------------------------------------------------------------------------------------
# The camera: sphere area, centre, y flip


@pytest.mark.parametrize("cam", [(0.8, 0.0, 0.0), (1.1, 0.2, 0.3), (-0.9, 0.1, -0.2)])
def test_icosphere_area_and_centre_follow_the_camera(cam):
    r = 0.4
    centre = np.array([0.1, 0.15, -0.2])
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=r)
    verts = np.asarray(mesh.vertices) + centre
    cam = np.asarray(cam)
    size = 128
    result = R.render(verts, np.asarray(mesh.faces), cam, size)
    radius_px = abs(cam[0]) * r * size / 2
    assert abs(result.mask.sum() - np.pi * radius_px ** 2) / (np.pi * radius_px ** 2) < 0.01
    rows, cols = np.nonzero(result.mask)
    expected = camera.project(centre[None], cam, size)[0]
    np.testing.assert_allclose([cols.mean(), rows.mean()], expected, atol=0.3)


def test_larger_model_y_is_a_smaller_row():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
    rows = []
    for y in (-0.4, 0.0, 0.4):
        verts = np.asarray(mesh.vertices) + [0, y, 0]
        mask = R.render(verts, np.asarray(mesh.faces), CAM, SIZE).mask
        rows.append(np.nonzero(mask)[0].mean())
    assert rows[0] > rows[1] > rows[2]
    assert abs(rows[1] - camera.project(np.zeros((1, 3)), CAM, SIZE)[0, 1]) < 0.3


# ---------------------------------------------------------------------------------------------
# Options, helpers, determinism, errors


def test_culling_changes_nothing_on_a_closed_mesh():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.7)
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    a = R.render(verts, faces, CAM, SIZE)
    b = R.render(verts, faces, CAM, SIZE, cull_backfaces=True)
    np.testing.assert_array_equal(a.face_index, b.face_index)
    np.testing.assert_array_equal(a.image, b.image)


def test_supersampling_smooths_edges_and_keeps_the_mask():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.7)
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    plain = R.render(verts, faces, CAM, SIZE, background=(255, 255, 255))
    smooth = R.render(verts, faces, CAM, SIZE, background=(255, 255, 255), supersample=3)
    assert (plain.mask != smooth.mask).sum() <= 4  # same centres, up to snapping
    # Plain edges jump from mesh to white; supersampled ones have intermediate values.
    edge = plain.mask & ~np.roll(plain.mask, 1, axis=1)
    assert (smooth.image[edge].mean(axis=1) > plain.image[edge].mean(axis=1) + 5).mean() > 0.5


def test_background_options_and_overlay():
    verts, faces = _flat_quad(0.0)
    verts = verts * 0.5
    photo = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    on_photo = R.render(verts, faces, CAM, SIZE, background=photo)
    np.testing.assert_array_equal(on_photo.image[~on_photo.mask], photo[~on_photo.mask])
    grey = R.render(verts, faces, CAM, SIZE, background=(7, 8, 9))
    assert (grey.image[~grey.mask] == [7, 8, 9]).all()
    np.testing.assert_array_equal(grey.image[grey.mask], on_photo.image[on_photo.mask])
    blended = R.overlay(photo, grey, alpha=0.25)
    np.testing.assert_array_equal(blended[~grey.mask], photo[~grey.mask])
    expected = 0.75 * photo[grey.mask] + 0.25 * grey.image[grey.mask].astype(float)
    assert np.abs(blended[grey.mask] - expected).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(R.overlay(photo, grey, alpha=0.0), photo)
    # A photo smaller than the render (a non-square photo's frame rendered at its longer side)
    # covers the render's top-left corner: the same pixels as blending the whole and cutting.
    np.testing.assert_array_equal(R.overlay(photo[:40, :50], grey, alpha=0.25), blended[:40, :50])
    default = R.overlay(photo, grey)
    expected = (1 - R.DEFAULT_ALPHA) * photo[grey.mask] + R.DEFAULT_ALPHA * grey.image[grey.mask].astype(float)
    assert np.abs(default[grey.mask] - expected).max() <= 0.5 + 1e-9


def test_side_view_turns_the_face_to_the_right():
    # A flattened ellipsoid, thin in z; its front-most vertex stands in for the nose.
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    verts = np.asarray(mesh.vertices) * [1.0, 1.0, 0.3]
    nose = np.argmax(verts[:, 2])
    front = R.render(verts, mesh.faces, CAM, SIZE)
    side = R.side_view(verts, mesh.faces, CAM, SIZE)
    width = lambda m: np.ptp(np.nonzero(m.any(axis=0))[0]) + 1  # noqa: E731
    assert width(side.mask) < 0.5 * width(front.mask)
    turned = R.rotate_y(verts, 90.0)
    assert turned[nose, 0] == pytest.approx(turned[:, 0].max())  # the face points to +x


def test_rendering_is_deterministic():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    verts = np.asarray(mesh.vertices)
    verts = verts + np.random.default_rng(1).normal(0, 0.01, verts.shape)
    colors = np.random.default_rng(2).random((len(verts), 3))
    outs = [R.render(verts.copy(), np.asarray(mesh.faces).copy(), (1.1, 0.05, -0.02), 96,
                     colors=colors, supersample=2) for _ in range(2)]
    for name in ("image", "mask", "depth", "face_index"):
        assert getattr(outs[0], name).tobytes() == getattr(outs[1], name).tobytes()
    assert outs[0].image.dtype == np.uint8 and outs[0].image.shape == (96, 96, 3)
    assert outs[0].depth.dtype == np.float32 and outs[0].face_index.dtype == np.int32


def test_empty_and_offscreen_meshes():
    empty = R.render(np.zeros((0, 3)), np.zeros((0, 3), int), CAM, 16)
    assert not empty.mask.any() and (empty.face_index == -1).all()
    off = R.render(at_pixels([[-50, -50], [-10, -50], [-50, -10]]), [[0, 1, 2]], CAM, 16)
    assert not off.mask.any()


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=0), "image_size.*0"),
    (dict(image_size=True), "image_size.*True"),
    (dict(cam=(0.0, 0.0, 0.0)), r"cam.*\(0.0, 0.0, 0.0\)"),
    (dict(cam=(1.0, 0.0)), r"cam.*\(1.0, 0.0\)"),
    (dict(vertices=np.zeros((4, 2))), r"vertices.*\(4, 2\)"),
    (dict(vertices=np.full((4, 3), np.nan)), "vertices.*NaN"),
    (dict(faces=[[0, 1, 9]]), r"faces.*\[0, 9\]"),
    (dict(faces=[[0.0, 1.0, 2.0]]), "faces.*float"),
    (dict(colors=np.zeros((3, 3))), r"colors.*\(3, 3\)"),
    (dict(colors=np.full((4, 3), 2.0)), r"colors.*2\.0"),
    (dict(light_dir=(0, 0, 0)), r"light_dir.*\(0, 0, 0\)"),
    (dict(ambient=-0.1), "ambient.*-0.1"),
    (dict(diffuse=float("nan")), "diffuse.*nan"),
    (dict(background=(300, 0, 0)), r"background.*\(300, 0, 0\)"),
    (dict(background=np.zeros((5, 5, 3), np.uint8)), r"background.*\(5, 5, 3\)"),
    (dict(supersample=0), "supersample.*0"),
])
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, message):
    verts, faces = _flat_quad(0.0)
    args = dict(vertices=verts, faces=faces, cam=CAM, image_size=SIZE)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        R.render(**args)


def test_helpers_reject_bad_arguments():
    verts, faces = _flat_quad(0.0)
    result = R.render(verts, faces, CAM, SIZE)
    with pytest.raises(ValueError, match="alpha.*1.5"):
        R.overlay(result.image, result, alpha=1.5)
    with pytest.raises(ValueError, match=r"image.*\(65, 8, 3\)"):
        R.overlay(np.zeros((65, 8, 3), np.uint8), result)  # taller than the render
    with pytest.raises(ValueError, match=r"image.*\(8, 8\) uint8"):
        R.overlay(np.zeros((8, 8), np.uint8), result)
    with pytest.raises(ValueError, match=r"image.*float64"):
        R.overlay(np.zeros((8, 8, 3)), result)
    with pytest.raises(ValueError, match=r"points.*\(2, 2\)"):
        R.visible_points(np.zeros((2, 2)), result, CAM, SIZE)
    with pytest.raises(ValueError, match="image_size is 32"):
        R.visible_points(np.zeros((2, 3)), result, CAM, 32)
    with pytest.raises(ValueError, match="tol.*-1"):
        R.visible_points(np.zeros((2, 3)), result, CAM, SIZE, tol=-1)
