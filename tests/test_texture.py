"""Textured meshes (ringnet_tf.texture, flame.uv) against independent truths: a synthetic head
rendered with known colours and flat light is projected into the atlas and read back at face
centres (whose colour is the mean of the face's vertex colours); visibility is checked by ray
casting (trimesh), the written OBJ / MTL / PNG by trimesh's loader and this project's strict reader."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.spatial
import trimesh

from flame import uv as U
from flame.geometry import rotation_about_y
from flame.io import FlameFileError, load_flame
from flame.mesh_io import read_obj
from ringnet_tf import render, texture as T
from ringnet_tf.camera import reframe_camera
from ringnet_tf.preprocess import Box

CROP = 224
PHOTO = 320
TEX = 256
BACKGROUND = (0, 0, 255)


@pytest.fixture(scope="module")
def model():
    return load_flame(None)


@pytest.fixture(scope="module")
def uv(model, tmp_path_factory):
    """The open head's atlas, computed once into a private cache."""
    cache = tmp_path_factory.mktemp("cache")
    return (*U.load_uv(model, cache_dir=cache), cache)


@pytest.fixture(scope="module")
def scene(model, uv):
    """A random head turned 25 degrees, with smooth known colours, rendered into a 'photo' of its
    own frame: the crop box is a zoomed, shifted square of the photo."""
    vt, ft, _ = uv
    rng = np.random.default_rng(3)
    beta = rng.normal(size=10)
    v = model.v_template + model.shapedirs[:, :, :10] @ beta
    v = (v - v.mean(0)) @ rotation_about_y(25.0).T
    # Low-frequency colours: the photo's bilinear sampling and a texel's size change them little.
    colors = 0.5 + 0.4 * np.sin(v * np.array([35.0, 45.0, 30.0]) + np.array([0.0, 1.0, 2.0]))
    cam = np.array([1.0 / 0.16, 0.0, 0.02])
    box = Box(cx=171.0, cy=148.0, size=210.0)
    a = box.affine(CROP)
    # photo pixel = (crop pixel - offset) / scale: the camera re-expressed in the photo's pixels.
    photo_cam = reframe_camera(cam, CROP, 1.0 / a[0, 0], -a[:, 2] / a[0, 0], PHOTO)
    photo = render.render(v, model.faces, photo_cam, PHOTO, colors=colors, ambient=1.0,
                          diffuse=0.0, background=BACKGROUND).image
    tex, mask = T.project_texture(photo, v, model.faces, cam, box, CROP, vt, ft, TEX)
    return {"v": v, "colors": colors, "cam": cam, "box": box, "photo": photo, "tex": tex,
            "mask": mask, "vt": vt, "ft": ft}


def _centroid_visibility(v: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per face: [F] bool, seen by an orthographic camera looking along -z (the first triangle a
    ray cast from in front of the centroid hits is the face itself); [F] float, the cosine between
    the face normal and +z."""
    mesh = trimesh.Trimesh(v, faces, process=False)
    centre = mesh.triangles_center
    origins = centre + np.array([0.0, 0.0, 1.0])
    hits = trimesh.ray.ray_triangle.RayMeshIntersector(mesh).intersects_first(
        origins, np.tile([0.0, 0.0, -1.0], (len(faces), 1)))
    normal = mesh.face_normals
    return hits == np.arange(len(faces)), normal[:, 2]


def _texel_of(uv_points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the texel containing each UV point (v up)."""
    col = np.clip(np.floor(uv_points[:, 0] * size), 0, size - 1).astype(int)
    row = np.clip(np.floor((1.0 - uv_points[:, 1]) * size), 0, size - 1).astype(int)
    return row, col


def test_round_trip_colours_of_visible_faces(model, scene):
    faces = model.faces
    seen, cos_z = _centroid_visibility(scene["v"], faces)
    centre_uv = scene["vt"][scene["ft"]].mean(axis=1)
    row, col = _texel_of(centre_uv, TEX)
    # Truth: with flat light the render's colour at a face's centroid is the mean of its vertex
    # colours (barycentric interpolation), independent of the texture code.
    truth = 255.0 * scene["colors"][faces].mean(axis=1)
    clear = seen & (cos_z > 0.5)
    assert clear.sum() > 2000
    in_mask = scene["mask"][row, col]
    # Almost every clearly visible face got its colour from the photo (the rest: faces smaller
    # than a texel, whose centroid texel belongs to a neighbour at a chart edge).
    assert in_mask[clear].mean() > 0.95
    got = scene["tex"][row, col].astype(np.float64)
    use = clear & in_mask
    err = np.abs(got[use] - truth[use]).max(axis=1)
    assert np.median(err) < 3.0 and np.percentile(err, 95) < 8.0, (np.median(err), np.percentile(err, 95))
    # The comparison discriminates: the same texels against other faces' truth are far off.
    shuffled = np.abs(got[use] - np.roll(truth[use], 37, axis=0)).max(axis=1)
    assert np.median(shuffled) > 20.0
    # Sampling the texture bilinearly at vertex UVs of clearly visible faces agrees too.
    sampled = T.sample_texture(scene["tex"], scene["vt"][scene["ft"][use]].reshape(-1, 2))
    corner_truth = 255.0 * scene["colors"][faces[use]].reshape(-1, 3)
    assert np.median(np.abs(sampled - corner_truth).max(axis=1)) < 4.0


def test_hidden_and_back_faces_stay_unfilled(model, scene, uv):
    vt, ft, _ = uv
    faces = model.faces
    seen, cos_z = _centroid_visibility(scene["v"], faces)
    row, col = _texel_of(vt[ft].mean(axis=1), TEX)
    # Back of the head: every face turned away from the camera (or hidden behind another part)
    # whose neighbourhood is also unseen; the centroid's texel may belong to a neighbour.
    hidden = (~seen) | (cos_z < 0)
    adjacency = trimesh.Trimesh(scene["v"], faces, process=False).face_adjacency
    neighbour_seen = np.zeros(len(faces), bool)
    for a, b in ((0, 1), (1, 0)):
        np.logical_or.at(neighbour_seen, adjacency[:, a], ~hidden[adjacency[:, b]])
    deep = hidden & ~neighbour_seen
    assert deep.sum() > 3000
    assert not scene["mask"][row[deep], col[deep]].any()
    # Without dilation, every texel outside the mask has the fill colour, and the photo's
    # background colour never leaks in at the outline.
    tex, mask = T.project_texture(scene["photo"], scene["v"], faces, scene["cam"], scene["box"], CROP,
                                  vt, ft, TEX, dilate=0, fill=(10, 20, 30))
    assert np.array_equal(mask, scene["mask"])
    assert (tex[~mask] == np.array([10, 20, 30], np.uint8)).all()
    blue = (tex[mask, 2].astype(int) - tex[mask, :2].max(axis=1)) > 200
    assert blue.mean() < 0.002


def test_texels_outside_the_photo_stay_unfilled(model, scene):
    # A photo that holds only the left half of the box: texels projecting beyond it get nothing.
    half = scene["photo"][:, :171]
    _, mask = T.project_texture(half, scene["v"], model.faces, scene["cam"], scene["box"], CROP,
                                scene["vt"], scene["ft"], TEX)
    assert 0 < mask.sum() < 0.8 * scene["mask"].sum()
    assert not (mask & ~scene["mask"]).any()


def test_obj_mtl_png_load_in_trimesh(tmp_path, model, scene):
    v, vt, ft, tex = scene["v"], scene["vt"], scene["ft"], scene["tex"]
    paths = T.write_textured_obj(tmp_path / "head.obj", v, model.faces, vt, ft, tex)
    assert [p.name for p in paths] == ["head.obj", "head.mtl", "head.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.mtl", "head.obj", "head.png"]
    assert "map_Kd head.png" in (tmp_path / "head.mtl").read_text()
    mesh = trimesh.load(tmp_path / "head.obj", process=False)
    assert isinstance(mesh.visual, trimesh.visual.texture.TextureVisuals)
    # trimesh splits vertices at UV seams: one vertex per distinct (v, vt) pair, with its uv.
    pairs = np.unique(np.stack([model.faces.ravel(), ft.ravel()], axis=1), axis=0)
    assert mesh.visual.uv.shape == (len(pairs), 2) == mesh.vertices.shape[:1] + (2,)
    # The same (position, uv) pairs, up to the file's 6 decimals: nearest neighbours both ways.
    ours = np.concatenate([v[pairs[:, 0]], vt[pairs[:, 1]]], axis=1)
    theirs = np.concatenate([mesh.vertices, mesh.visual.uv], axis=1)
    for a, b in ((ours, theirs), (theirs, ours)):
        distance, _ = scipy.spatial.cKDTree(b).query(a)
        assert distance.max() < 2e-6
    image = np.asarray(mesh.visual.material.image.convert("RGB"))
    assert np.array_equal(image, tex)
    # trimesh's own lookup (v up, row 0 at the top) agrees with ours at the visible faces' centres.
    centre_uv = vt[ft].mean(axis=1)[scene["mask"][_texel_of(vt[ft].mean(axis=1), TEX)]]
    theirs_rgb = trimesh.visual.uv_to_color(centre_uv, mesh.visual.material.image)[:, :3]
    assert np.median(np.abs(theirs_rgb - T.sample_texture(tex, centre_uv)).max(axis=1)) <= 3
    # FLAME's vertex order is kept: the strict reader sees our vertices and faces, in order.
    read_v, read_f = read_obj(tmp_path / "head.obj")
    np.testing.assert_allclose(read_v, v, atol=1e-6)
    assert np.array_equal(read_f, model.faces)
    # A name with spaces: the side files get plain names (mtllib / map_Kd split at whitespace).
    spaced = T.write_textured_obj(tmp_path / "my head.obj", v, model.faces, vt, ft, tex)
    assert [p.name for p in spaced] == ["my head.obj", "my_head.mtl", "my_head.png"]
    loaded = trimesh.load(tmp_path / "my head.obj", process=False)
    assert np.array_equal(np.asarray(loaded.visual.material.image.convert("RGB")), tex)


def test_write_is_all_or_nothing(tmp_path, model, scene):
    # The texture's name is taken by a folder (with content): renaming onto it fails, and the OBJ
    # and MTL already renamed are removed again.
    (tmp_path / "head.png").mkdir()
    (tmp_path / "head.png" / "x").write_text("x")
    with pytest.raises(OSError):
        T.write_textured_obj(tmp_path / "head.obj", scene["v"], model.faces, scene["vt"], scene["ft"],
                             scene["tex"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.png"]
    with pytest.raises(ValueError, match="head.ply"):
        T.write_textured_obj(tmp_path / "head.ply", scene["v"], model.faces, scene["vt"], scene["ft"],
                             scene["tex"])


def test_texture_file_is_validated(tmp_path, model, uv):
    vt, ft, _ = uv
    good = tmp_path / "FLAME_texture.npz"
    np.savez(good, vt=vt, ft=ft, mean=np.zeros((1, 8, 8, 3)), tex_dir=np.zeros((1, 8, 8, 3, 2)))
    got_vt, got_ft = U.load_uv(model, good)
    assert np.array_equal(got_vt, vt) and np.array_equal(got_ft, ft)

    cases = {
        "short_ft": dict(vt=vt, ft=ft[:-5]),
        "no_ft": dict(vt=vt),
        "bad_index": dict(vt=vt, ft=np.where(ft == 0, len(vt), ft)),
        "vt_3d": dict(vt=np.zeros((len(vt), 3)), ft=ft),
    }
    for name, arrays in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(FlameFileError) as e:
            U.load_uv(model, path)
        message = str(e.value)
        assert message.startswith(str(path)) and "\n" not in message, message
    with pytest.raises(FlameFileError, match=r"ft must be \[F, 3\] = \[10228, 3\]|ft must be"):
        U.load_uv(model, tmp_path / "short_ft.npz")
    not_npz = tmp_path / "junk.npz"
    not_npz.write_bytes(b"not a zip")
    with pytest.raises(FlameFileError, match="junk.npz"):
        U.load_uv(model, not_npz)
    with pytest.raises(FlameFileError, match="missing.npz"):
        U.load_uv(model, tmp_path / "missing.npz")


def test_atlas_is_deterministic_cached_and_valid(model, uv):
    vt, ft, cache = uv
    again_vt, again_ft = U.compute_uv_atlas(model.v_template, model.faces)
    assert np.array_equal(again_vt, vt) and np.array_equal(again_ft, ft)
    cached = list(cache.glob("uv/xatlas-*.npz"))
    assert len(cached) == 1
    assert all(np.array_equal(a, b) for a, b in zip(U.load_uv(model, cache_dir=cache), (vt, ft)))
    # A damaged cache entry is recomputed, not trusted.
    cached[0].write_bytes(b"broken")
    assert np.array_equal(U.load_uv(model, cache_dir=cache)[0], vt)
    # FLAME's texture-file form: per-face indices in the model's face order, each vt used by the
    # corners of one vertex only, coordinates in the unit square.
    assert ft.shape == model.faces.shape and vt.min() >= 0 and vt.max() <= 1
    owner = np.full(len(vt), -1)
    owner[ft.ravel()] = model.faces.ravel()
    assert np.array_equal(owner[ft], model.faces)
    # Charts do not overlap: the texels covered at 1024 match the UV area (up to the outline).
    q = vt[ft]
    area = 0.5 * np.abs((q[:, 1, 0] - q[:, 0, 0]) * (q[:, 2, 1] - q[:, 0, 1])
                        - (q[:, 1, 1] - q[:, 0, 1]) * (q[:, 2, 0] - q[:, 0, 0])).sum()
    face_of, bary = T.uv_raster(vt, ft, 1024)
    covered = (face_of >= 0).mean()
    assert abs(covered - area) < 0.02 * area
    assert np.allclose(bary[face_of >= 0].sum(axis=1), 1.0, atol=1e-5)


def test_small_texture_of_a_large_photo_is_low_passed(model, scene):
    # A grey head under per-pixel noise: at 48 texels a texel spans about 5 photo pixels, and one
    # bilinear sample per texel would keep most of the noise; the low pass first averages it out.
    rng = np.random.default_rng(0)
    noise = rng.integers(-60, 61, scene["photo"].shape)
    grey = np.clip(128 + noise, 0, 255).astype(np.uint8)
    size = 48
    tex, mask = T.project_texture(grey, scene["v"], model.faces, scene["cam"], scene["box"], CROP,
                                  scene["vt"], scene["ft"], size)
    assert mask.sum() > 200
    assert np.std(noise) > 30
    assert np.abs(tex[mask].astype(np.float64) - 128).std() < 5  # 13 without the low pass
    assert np.abs(np.median(tex[mask].astype(np.float64)) - 128) < 4


def test_bad_arguments_are_named(model, scene):
    args = (scene["photo"], scene["v"], model.faces, scene["cam"], scene["box"], CROP,
            scene["vt"], scene["ft"], 32)
    with pytest.raises(ValueError, match="photo_rgb"):
        T.project_texture(scene["photo"][..., 0], *args[1:])
    with pytest.raises(ValueError, match="ft must be"):
        T.project_texture(*args[:7], scene["ft"][:-1], 32)
    with pytest.raises(ValueError, match="fill"):
        T.project_texture(*args, fill=(0, 0))
    with pytest.raises(ValueError, match="dilate"):
        T.project_texture(*args, dilate=-1)
