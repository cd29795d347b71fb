"""Tests of the open head (flame/openhead/): a FLAME-format head model generated from code.

They check behaviour against independent truth: FLAME's file layout read with plain pickle, the
smplx reference layer (when installed), the plain NumPy forward pass of tests/flame_reference.py,
and anatomy (where landmarks and joints must be). The model is built once per module (a few
seconds).
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from flame import constants as C
from flame import openhead
from flame.geometry import rotation_about_y
from flame.model import (DYNAMIC_EMBEDDING_FILENAME, MODEL_FILENAME, STATIC_EMBEDDING_FILENAME,
                         save_flame_files)
from flame.openhead import cache as openhead_cache
from flame.openhead import cli as openhead_cli
from tests.flame_reference import forward_reference

REPO = Path(__file__).resolve().parents[1]
FILES = (MODEL_FILENAME, STATIC_EMBEDDING_FILENAME, DYNAMIC_EMBEDDING_FILENAME)


@pytest.fixture(scope="module")
def model():
    return openhead.build_open_head()


@pytest.fixture(scope="module")
def written(model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("openhead")
    save_flame_files(model, folder)
    return folder


@pytest.fixture(scope="module")
def masks(model):
    return openhead.region_masks(model)


def forward(m, betas=(), expression=(), pose=None):
    """Posed vertices [V, 3] and joints [5, 3] of a FlameModel, by the reference forward pass."""
    pose = np.zeros(C.FULL_POSE_DIM) if pose is None else np.asarray(pose, float)
    out = forward_reference(m, np.asarray(betas, float), np.asarray(expression, float), pose)
    return out["vertices"], out["joints"]


def barycentric_points(verts, faces, face_idx, bary):
    return np.einsum("...k,...kc->...c", bary, verts[faces[face_idx]])


def static_landmarks(m, verts=None):
    verts = m.v_template if verts is None else verts
    return barycentric_points(verts, m.faces, m.static_lmk_faces, m.static_lmk_bary)


def ibug(points51, i):
    """Static landmark by its iBUG-68 index (17..67)."""
    return points51[i - C.NUM_CONTOUR_LANDMARKS]


# --- determinism, size, files -------------------------------------------------------------------
def test_two_builds_are_identical(model):
    again = openhead.build_open_head()
    assert again.fingerprint() == model.fingerprint()
    for name in ("faces", "static_lmk_faces", "dynamic_lmk_faces"):
        np.testing.assert_array_equal(getattr(again, name), getattr(model, name), err_msg=name)
    for name in ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "weights",
                 "static_lmk_bary", "dynamic_lmk_bary"):
        np.testing.assert_allclose(getattr(again, name), getattr(model, name), rtol=0,
                                   atol=1e-12, err_msg=name)


def _fan(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Eight triangles around vertex 0 at the origin (a shallow cap, z up towards the viewer),
    listed in a shuffled order, every coordinate moved by a few units in the last place: the
    round-off by which two machines' BLAS kernels differ."""
    rng = np.random.default_rng(seed)
    angles = np.arange(8) * np.pi / 4
    verts = np.concatenate([[[0.0, 0.0, 0.0]], np.stack([np.cos(angles), np.sin(angles), -0.2 * np.ones(8)], 1)])
    verts = verts * 0.01 * (1 + rng.uniform(-4e-16, 4e-16, verts.shape))
    faces = np.array([[0, 1 + i, 1 + (i + 1) % 8] for i in rng.permutation(8)])
    return verts, faces


@pytest.mark.parametrize("seed", range(6))
def test_a_landmark_on_a_shared_vertex_takes_the_lowest_face_whatever_the_round_off(seed):
    # The open head's nose tip and chin lie on vertices and mirror-symmetric faces: which face
    # held them once depended on the BLAS kernel, and so did the model's fingerprint.
    from flame.openhead.landmarks import _closest_on_mesh, _frontal_hits

    verts, faces = _fan(seed)
    ids = np.arange(len(faces))
    f, b = _frontal_hits(verts, faces, ids, np.zeros((1, 2)))
    assert f[0] == 0 and np.allclose(verts[faces[f[0]]].T @ b[0], 0.0, atol=1e-15)
    # a point above the centre: equally close to all eight faces
    f, b = _closest_on_mesh(np.array([[0.0, 0.0, 0.003]]), verts, faces, ids, k=8)
    assert f[0] == 0 and np.allclose(verts[faces[f[0]]].T @ b[0], 0.0, atol=1e-15)


def test_written_files_are_byte_identical_across_writes(model, written, tmp_path):
    save_flame_files(model, tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (written / name).read_bytes(), name


def test_size_and_finite(model):
    assert 4000 <= model.num_vertices <= 10000
    assert model.num_faces > model.num_vertices
    for name in ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "weights",
                 "static_lmk_bary", "dynamic_lmk_bary"):
        assert np.all(np.isfinite(getattr(model, name))), name
    assert model.faces.min() == 0 and model.faces.max() == model.num_vertices - 1
    assert len(np.unique(model.faces)) == model.num_vertices  # no unused vertex
    tri = model.v_template[model.faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) / 2
    assert area.min() > 0.0  # no degenerate triangle


def test_files_have_flames_layout(model, written):
    with open(written / MODEL_FILENAME, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    v = model.num_vertices
    expect = {"v_template": (v, 3), "f": (model.num_faces, 3), "shapedirs": (v, 3, 400),
              "posedirs": (v, 3, 36), "weights": (v, 5), "kintree_table": (2, 5)}
    for key, shape in expect.items():
        assert d[key].shape == shape, key
    assert d["v_template"].dtype == np.float64 and d["shapedirs"].dtype == np.float64
    assert np.issubdtype(d["f"].dtype, np.integer)
    assert scipy.sparse.issparse(d["J_regressor"]) and d["J_regressor"].shape == (5, v)
    assert list(d["kintree_table"][1]) == [0, 1, 2, 3, 4]
    assert list(d["kintree_table"][0][1:]) == [0, 1, 1, 1]
    with open(written / STATIC_EMBEDDING_FILENAME, "rb") as f:
        s = pickle.load(f, encoding="latin1")
    assert s["lmk_face_idx"].shape == (51,) and s["lmk_b_coords"].shape == (51, 3)
    dyn = np.load(written / DYNAMIC_EMBEDDING_FILENAME, allow_pickle=True, encoding="latin1")[()]
    assert dyn["lmk_face_idx"].shape == (79, 17) and dyn["lmk_b_coords"].shape == (79, 17, 3)


def test_smplx_flame_loads_the_files(model, written, tmp_path):
    torch = pytest.importorskip("torch")
    smplx = pytest.importorskip("smplx")
    for name in FILES:
        target = "FLAME_NEUTRAL.pkl" if name == MODEL_FILENAME else name
        os.symlink(written / name, tmp_path / target)
    layer = smplx.FLAME(model_path=str(tmp_path), num_betas=300, num_expression_coeffs=100,
                        use_face_contour=True, dtype=torch.float64)
    np.testing.assert_allclose(layer.v_template.numpy(), model.v_template, atol=1e-12)
    rng = np.random.default_rng(0)
    betas, expr = rng.normal(size=300), rng.normal(size=100)
    pose = np.zeros(15)
    pose[0:3] = [0.1, -0.3, 0.05]
    pose[3:6] = [0.2, 0.1, 0.0]
    pose[6:9] = [0.25, 0.0, 0.0]
    pose[9:12] = [0.0, 0.3, 0.0]
    pose[12:15] = [0.1, -0.2, 0.0]
    t = lambda a: torch.tensor(np.asarray(a)[None], dtype=torch.float64)  # noqa: E731
    with torch.no_grad():
        out = layer(betas=t(betas), expression=t(expr), global_orient=t(pose[0:3]),
                    neck_pose=t(pose[3:6]), jaw_pose=t(pose[6:9]), leye_pose=t(pose[9:12]),
                    reye_pose=t(pose[12:15]), transl=t(np.zeros(3)))
    ours, _ = forward(model, betas, expr, pose)
    # (smplx's Rodrigues adds 1e-8 to the angle: agreement to a tenth of a micron)
    np.testing.assert_allclose(out.vertices[0].numpy(), ours, atol=1e-7)
    # smplx appends the 51 static and 17 contour landmarks to the 5 joints
    lmk = out.joints[0, 5:].numpy()
    np.testing.assert_allclose(lmk[:51], static_landmarks(model, ours), atol=1e-7)
    assert lmk.shape == (68, 3)


# --- blend shapes -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,count", [("shapedirs", 300), ("exprdirs", 100)])
def test_components_ordered_by_variance(model, name, count):
    dirs = getattr(model, name)
    assert dirs.shape == (model.num_vertices, 3, count)
    flat = dirs.reshape(-1, count)
    norms = np.linalg.norm(flat, axis=0)
    assert np.all(norms > 0)
    assert np.all(np.diff(norms) <= 1e-12)
    gram = flat.T @ flat
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-9 * norms[0] ** 2  # principal components: orthogonal


def test_identity_gives_plausible_different_heads(model, masks):
    rng = np.random.default_rng(1)
    face = masks["face"]
    sizes = []
    for _ in range(8):
        v = model.v_template + model.shapedirs @ rng.normal(size=300)
        change = np.linalg.norm(v - model.v_template, axis=1)
        assert 0.002 < np.median(change[face]) < 0.02  # clearly different, not monstrous
        sizes.append(np.ptp(v[masks["skin"]][:, 1]))
    assert np.std(sizes) > 0.001


def test_shape_and_expression_keep_eyeballs_rigid_and_mouth_closed(model, masks):
    for dirs, identity in ((model.shapedirs, True), (model.exprdirs, False)):
        for eye in ("left_eyeball", "right_eyeball"):
            d = dirs[masks[eye]]  # [Ne, 3, K]
            np.testing.assert_allclose(d, np.broadcast_to(d[:1], d.shape), atol=1e-12)
            if not identity:
                assert np.abs(d).max() < 1e-12
        if not identity:
            continue  # expressions may part the lips
        # the two copies of each slit vertex move together: the mouth stays closed
        v = model.v_template
        upper = np.flatnonzero(masks["upper_lip"])
        lower = np.flatnonzero(masks["lower_lip"])
        dist = np.linalg.norm(v[upper][:, None] - v[lower][None], axis=2)
        i, j = np.nonzero(dist < 1e-12)
        assert len(i) >= 10
        np.testing.assert_allclose(dirs[upper[i]], dirs[lower[j]], atol=1e-12)


# --- rig ----------------------------------------------------------------------------------------
def test_regressor_and_weights(model, masks):
    reg, w = model.j_regressor, model.weights
    assert reg.min() >= 0 and np.allclose(reg.sum(axis=1), 1)
    assert w.min() >= 0 and np.allclose(w.sum(axis=1), 1)
    np.testing.assert_array_equal(model.parents, C.PARENTS)
    j = reg @ model.v_template
    left_eye = model.v_template[masks["left_eyeball"]].mean(axis=0)
    right_eye = model.v_template[masks["right_eyeball"]].mean(axis=0)
    np.testing.assert_allclose(j[C.LEFT_EYE], left_eye, atol=1e-9)
    np.testing.assert_allclose(j[C.RIGHT_EYE], right_eye, atol=1e-9)
    assert j[C.LEFT_EYE, 0] > 0 > j[C.RIGHT_EYE, 0]
    assert np.allclose(j[:3, 0], 0, atol=1e-9)  # root, neck and jaw on the midline
    assert j[C.ROOT, 1] < j[C.NECK, 1] < j[C.JAW, 1] < j[C.LEFT_EYE, 1]
    # jaw joint between the ears, behind the face, level with the ear region
    ears = model.v_template[masks["ears"]]
    assert ears[:, 1].min() < j[C.JAW, 1] < ears[:, 1].max()
    assert j[C.JAW, 2] < left_eye[2] - 0.04
    # eyeballs hang on their eye joint only, and nothing else does
    assert np.all(w[masks["left_eyeball"], C.LEFT_EYE] == 1)
    assert np.all(w[masks["right_eyeball"], C.RIGHT_EYE] == 1)
    others = ~(masks["left_eyeball"] | masks["right_eyeball"])
    assert np.all(w[others][:, [C.LEFT_EYE, C.RIGHT_EYE]] == 0)
    # the neck bottom is on the root, the crown on the neck joint
    v = model.v_template
    assert np.all(w[v[:, 1] < v[:, 1].min() + 0.005, C.ROOT] > 0.9)
    assert np.all(w[v[:, 1] > v[:, 1].max() - 0.03, C.NECK] == 1)


def test_pose_correctives(model):
    pd = model.posedirs.reshape(-1, 36)
    assert np.abs(pd[:, 18:]).max() == 0  # eye features have no correctives
    assert np.abs(pd[:, 9:18]).max() > 0 and np.abs(pd[:, :9]).max() > 0
    assert np.abs(pd).max() < 0.02  # small: centimetres per unit of (R - I)


def test_jaw_rotation_opens_the_mouth(model, masks):
    rest, _ = forward(model)
    pose = np.zeros(15)
    pose[6] = 0.3  # jaw about +x
    posed, _ = forward(model, pose=pose)
    lm0, lm1 = static_landmarks(model, rest), static_landmarks(model, posed)
    for i in (65, 66, 67):  # lower inner lip goes down
        assert ibug(lm1, i)[1] < ibug(lm0, i)[1] - 0.01
    for i in (61, 62, 63):  # upper inner lip stays
        assert np.linalg.norm(ibug(lm1, i) - ibug(lm0, i)) < 0.001
    assert ibug(lm1, 62)[1] - ibug(lm1, 66)[1] > 0.015  # the mouth is open
    move = np.linalg.norm(posed - rest, axis=1)
    assert move[masks["lower_lip"]].min() > 0.005
    assert move[masks["upper_lip"]].max() < 0.002
    still = masks["nose"] | masks["left_eyeball"] | masks["right_eyeball"] | masks["eyebrows"]
    assert move[still].max() < 1e-9


@pytest.mark.parametrize("joint,eye,other", [(C.LEFT_EYE, "left_eyeball", "right_eyeball"),
                                             (C.RIGHT_EYE, "right_eyeball", "left_eyeball")])
def test_eye_rotation_turns_only_its_eyeball(model, masks, joint, eye, other):
    rest, joints = forward(model)
    pose = np.zeros(15)
    pose[3 * joint:3 * joint + 3] = [0.1, 0.4, 0.0]
    posed, _ = forward(model, pose=pose)
    move = np.linalg.norm(posed - rest, axis=1)
    assert move[~masks[eye]].max() < 1e-12
    assert move[masks[eye]].max() > 0.004
    # a rotation about the eyeball centre: distances to it are kept
    r0 = np.linalg.norm(rest[masks[eye]] - joints[joint], axis=1)
    r1 = np.linalg.norm(posed[masks[eye]] - joints[joint], axis=1)
    np.testing.assert_allclose(r1, r0, atol=1e-12)
    np.testing.assert_allclose(r0, r0.mean(), atol=1e-9)  # eyeball centred on its joint


# --- geometry and anatomy -------------------------------------------------------------------------
def test_real_size_and_axes(model, masks):
    v = model.v_template
    skin = v[masks["skin"] & ~masks["ears"] & ~masks["neck"]]
    width = np.ptp(skin[:, 0])
    assert 0.13 < width < 0.17
    front_midline = masks["face"] & (np.abs(v[:, 0]) < 0.01) & (v[:, 2] > 0.04)
    chin_y = v[front_midline, 1].min()  # menton
    crown_y = v[:, 1].max()
    assert 0.20 <= crown_y - chin_y <= 0.235
    assert abs(v[masks["skin"] & ~masks["neck"]].mean(axis=0)[1]) < 0.04  # origin near the centre
    assert v[masks["left_eyeball"]][:, 0].min() > 0 > v[masks["right_eyeball"]][:, 0].max()
    nose_tip = v[np.argmax(v[:, 2])]
    assert masks["nose"][np.argmax(v[:, 2])] and abs(nose_tip[0]) < 1e-9
    np.testing.assert_allclose(np.sort(v[:, 0]), np.sort(-v[:, 0]), atol=1e-12)  # symmetric


def test_region_masks(model, masks):
    for name in ("skin", "left_eyeball", "right_eyeball", "lips", "upper_lip", "lower_lip",
                 "eyebrows"):
        assert masks[name].dtype == bool and masks[name].shape == (model.num_vertices,)
        assert masks[name].any(), name
    parts = (masks["skin"].astype(int) + masks["mouth_interior"] + masks["left_eyeball"]
             + masks["right_eyeball"])
    assert np.all(parts == 1)
    assert np.all((masks["face"].astype(int) + masks["scalp"] + masks["neck"] + masks["ears"])
                  == masks["skin"])
    assert not (masks["upper_lip"] & masks["lower_lip"]).any()
    assert np.all(masks["lips"] >= (masks["upper_lip"] | masks["lower_lip"]))
    v = model.v_template
    assert v[masks["upper_lip"], 1].mean() > v[masks["lower_lip"], 1].mean()
    assert np.all(v[masks["eyebrows"], 1] > v[masks["left_eyeball"], 1].max())
    assert v[masks["left_iris"], 2].min() > v[masks["left_eyeball"], 2].mean()
    with pytest.raises(ValueError):
        openhead.region_masks(dataclasses_replace_vertices(model))


def dataclasses_replace_vertices(model):
    import dataclasses
    return dataclasses.replace(model, v_template=model.v_template[:100])


def test_static_landmarks_on_surface_and_in_place(model):
    f, b = model.static_lmk_faces, model.static_lmk_bary
    assert f.shape == (51,) and np.all((f >= 0) & (f < model.num_faces))
    assert np.all((b >= 0) & (b <= 1)) and np.allclose(b.sum(axis=1), 1)
    lm = static_landmarks(model)
    x = lm[:, 0]
    # left/right: the subject's right is -x
    assert np.all(np.array([ibug(lm, i)[0] for i in range(17, 22)]) < 0)
    assert np.all(np.array([ibug(lm, i)[0] for i in range(22, 27)]) > 0)
    assert np.all(np.diff([ibug(lm, i)[0] for i in range(17, 27)]) > 0)  # brows run right to left
    for i in range(36, 42):
        assert ibug(lm, i)[0] < 0 < ibug(lm, i + 6)[0]
    assert ibug(lm, 36)[0] < ibug(lm, 39)[0] < 0 < ibug(lm, 42)[0] < ibug(lm, 45)[0]  # corners
    for top, bottom in ((37, 41), (38, 40), (43, 47), (44, 46)):
        assert ibug(lm, top)[1] > ibug(lm, bottom)[1]  # upper lid above lower lid
    eye_y = np.mean([ibug(lm, i)[1] for i in (36, 39, 42, 45)])
    brow_y = np.mean([ibug(lm, i)[1] for i in range(17, 27)])
    nose_bottom = ibug(lm, 33)
    mouth_corners = (ibug(lm, 48), ibug(lm, 54))
    assert brow_y > eye_y > nose_bottom[1] > max(c[1] for c in mouth_corners)
    assert np.all(np.diff([ibug(lm, i)[1] for i in range(27, 31)]) < 0)  # bridge runs down
    assert np.argmax(lm[:, 2]) == 30 - 17  # the nose tip is the most anterior landmark
    assert np.all(np.abs(x[[i - 17 for i in (27, 28, 29, 30, 33, 51, 57, 62, 66)]]) < 1e-6)
    assert mouth_corners[0][0] < -0.02 and mouth_corners[1][0] > 0.02
    assert np.all(np.diff([ibug(lm, i)[0] for i in range(31, 36)]) > 0)
    assert np.all(np.diff([ibug(lm, i)[0] for i in range(48, 55)]) > 0)  # upper outer lip
    assert np.all(np.diff([ibug(lm, i)[0] for i in range(54, 60)] + [ibug(lm, 48)[0]]) < 0)
    assert ibug(lm, 51)[1] > ibug(lm, 62)[1] >= ibug(lm, 66)[1] > ibug(lm, 57)[1]
    # NoW's seven landmarks: eye corners, nose bottom, mouth corners
    now = lm[list(C.NOW_LANDMARKS_IN_STATIC)]
    np.testing.assert_allclose(now[4], nose_bottom)
    assert now[0][0] < now[1][0] < 0 < now[2][0] < now[3][0]
    assert now[5][0] < 0 < now[6][0] and now[5][1] < now[4][1]


def test_inner_lip_landmarks_are_on_their_lips(model, masks):
    for ibug_ids, mask in (((61, 62, 63), masks["upper_lip"]), ((65, 66, 67), masks["lower_lip"])):
        for i in ibug_ids:
            face = model.faces[model.static_lmk_faces[i - 17]]
            weight = model.static_lmk_bary[i - 17]
            assert mask[face[weight > 1e-9]].all(), i


def yaw_of_row(row):
    return -row if row <= 39 else row - 39


def contour_points(model, row, verts=None):
    verts = model.v_template if verts is None else verts
    return barycentric_points(verts, model.faces, model.dynamic_lmk_faces[row],
                              model.dynamic_lmk_bary[row])


def test_contour_table_on_surface_and_smooth(model):
    f, b = model.dynamic_lmk_faces, model.dynamic_lmk_bary
    assert f.shape == (79, 17) and np.all((f >= 0) & (f < model.num_faces))
    assert np.all((b >= 0) & (b <= 1)) and np.allclose(b.sum(axis=-1), 1)
    pts = np.stack([contour_points(model, r) for r in range(79)])
    order = [39 - k for k in range(40)] + list(range(40, 79))  # rows sorted by yaw -39..+39
    ordered = pts[order]
    step = np.linalg.norm(np.diff(ordered, axis=0), axis=-1)
    assert step.max() < 0.004  # moves smoothly: a few millimetres per degree at most
    zero = pts[0]
    np.testing.assert_allclose(zero[:, 0], -zero[::-1, 0], atol=2e-3)  # frontal: symmetric
    assert np.all(zero[:8, 0] < 0) and np.all(zero[9:, 0] > 0)
    assert np.all(np.diff(zero[:9, 1]) < 0) and np.all(np.diff(zero[8:, 1]) > 0)  # down to chin
    assert zero[8, 1] == pytest.approx(zero[:, 1].min())


def outermost_along(points2d, centre, target, half_width=0.002):
    """Largest extent beyond `centre` of the points within a strip around the ray to `target`."""
    direction = (target - centre) / np.linalg.norm(target - centre)
    rel = points2d - centre
    along = rel @ direction
    across = np.abs(rel @ np.array([-direction[1], direction[0]]))
    return along[(across < half_width) & (along > 0)].max(), np.linalg.norm(target - centre)


@pytest.mark.parametrize("yaw", [25, 32, 39, -25, -32, -39])
def test_contour_lies_on_the_silhouette_when_turned_away(model, masks, yaw):
    row = int(round(min(-yaw, 39)))
    row = row if row >= 0 else min(39 - row, 78)
    assert yaw_of_row(row) == yaw
    rot = rotation_about_y(yaw)
    verts = model.v_template @ rot.T  # the head turned; camera on +z, orthographic
    pts = contour_points(model, row, verts)[:, :2]
    head = verts[masks["skin"] & ~masks["neck"]][:, :2]
    centre = (rot @ np.array([0.0, -0.05, 0.02]))[:2]  # inside the lower face
    far = range(9, 16) if yaw > 0 else range(1, 8)  # the side turned away from the camera
    for i in far:  # on the outline: nothing of the head projects beyond it
        outline, extent = outermost_along(head, centre, pts[i])
        assert extent > outline - 0.004, (i, extent, outline)
    near = range(1, 4) if yaw > 0 else range(13, 16)
    for i in near:  # the side facing the camera keeps its line in front of the ear, well inside
        outline, extent = outermost_along(head, centre, pts[i])  # the outline (ear, back of head)
        assert extent < outline - 0.008, (i, extent, outline)


# --- command line and cache ---------------------------------------------------------------------
def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "flame.openhead", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_the_same_files_and_refuses_to_overwrite(model, written, tmp_path, monkeypatch):
    out = tmp_path / "model"
    done = run_cli("--out", str(out))
    assert done.returncode == 0, done.stderr
    for name in FILES:
        assert str(out / name) in done.stdout
        assert (out / name).read_bytes() == (written / name).read_bytes(), name  # deterministic
    assert model.fingerprint() in done.stdout
    stamps = {name: (out / name).stat().st_mtime_ns for name in FILES}
    refused = run_cli("--out", str(out))
    assert refused.returncode == 2  # bad input: the project's exit code (flame.cli)
    assert len(refused.stderr.strip().splitlines()) == 1 and "--force" in refused.stderr
    assert refused.stderr.startswith("error: ")
    assert {name: (out / name).stat().st_mtime_ns for name in FILES} == stamps
    # --force overwrites (in-process, with the already built model, to save a build)
    monkeypatch.setattr(openhead_cli, "build_open_head", lambda: model)
    assert openhead.main(["--out", str(out), "--force"]) == 0
    assert any((out / name).stat().st_mtime_ns != stamps[name] for name in FILES)
    assert "--out" in run_cli("--help").stdout


def test_ensure_open_head_generates_once(model, tmp_path, monkeypatch):
    calls = []

    def fake_build():
        calls.append(1)
        return model

    monkeypatch.setattr(openhead_cache, "build_open_head", fake_build)
    monkeypatch.delenv(openhead.CACHE_ENV_VAR, raising=False)
    folder = openhead.ensure_open_head(str(tmp_path))
    assert folder == tmp_path / f"openhead-{openhead.OPEN_HEAD_VERSION}-{openhead.cache_key()}"
    assert all((folder / name).is_file() for name in FILES)
    stamps = {name: (folder / name).stat().st_mtime_ns for name in FILES}
    assert openhead.ensure_open_head(str(tmp_path)) == folder
    assert len(calls) == 1
    assert {name: (folder / name).stat().st_mtime_ns for name in FILES} == stamps
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temporary leftovers
    # the environment variable names the cache root when no folder is given
    monkeypatch.setenv(openhead.CACHE_ENV_VAR, str(tmp_path / "env"))
    assert openhead.ensure_open_head() == tmp_path / "env" / folder.name
    assert len(calls) == 2


def test_a_changed_generator_gets_a_new_cache_entry(model, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(openhead_cache, "build_open_head", lambda: calls.append(1) or model)
    monkeypatch.setattr(openhead_cache, "cache_key", lambda: "0123456789abcdef")
    first = openhead.ensure_open_head(tmp_path)
    monkeypatch.setattr(openhead_cache, "cache_key", lambda: "fedcba9876543210")
    second = openhead.ensure_open_head(tmp_path)
    assert first != second and first.parent == second.parent == tmp_path
    assert len(calls) == 2  # the new key built its own entry...
    assert all((second / name).is_file() for name in FILES)
    assert all((first / name).is_file() for name in FILES)  # ...and left the old one alone
    monkeypatch.setattr(openhead_cache, "cache_key", lambda: "0123456789abcdef")
    assert openhead.ensure_open_head(tmp_path) == first and len(calls) == 2


def test_cache_key_follows_the_generator_source(tmp_path):
    sources = openhead_cache.generator_sources()
    names = [p.name for p in sources]
    # every module of the package but its command line, and the flame modules whose code shapes
    # the arrays
    package = Path(openhead.__file__).parent
    assert set(p.name for p in package.glob("*.py")) - {"cli.py", "__main__.py"} == set(names) - {
        "constants.py", "geometry.py", "model.py"}
    assert {"constants.py", "geometry.py", "model.py"} <= set(names)
    assert openhead.cache_key() == openhead_cache.cache_key(sources)
    copies = []
    for i, path in enumerate(sources):  # same names, same bytes, elsewhere: the same key
        copies.append(tmp_path / str(i) / path.name)
        copies[-1].parent.mkdir()
        shutil.copyfile(path, copies[-1])
    assert openhead_cache.cache_key(copies) == openhead.cache_key()
    sculpt = copies[names.index("sculpt.py")]
    sculpt.write_text(sculpt.read_text() + "\n# a changed generator\n")
    changed = openhead_cache.cache_key(copies)
    assert changed != openhead.cache_key() and len(changed) == 16
