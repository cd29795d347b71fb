"""Mesh export: OBJ and PLY read back by trimesh and by a plain text parse, order preserved."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from flame.mesh_io import read_mesh, write_mesh


@pytest.fixture
def mesh():
    rng = np.random.default_rng(0)
    vertices = rng.normal(size=(30, 3))
    vertices[7] = vertices[3]  # a duplicated vertex, as along FLAME's mouth seam: must survive
    faces = np.stack([rng.choice(30, 3, replace=False) for _ in range(40)])
    faces[:10] = np.arange(30).reshape(10, 3)  # every vertex is used, as in a FLAME mesh
    return vertices, faces


def _parse_obj(text: str):
    v = [list(map(float, line.split()[1:])) for line in text.splitlines() if line.startswith("v ")]
    f = [[int(tok.split("/")[0]) - 1 for tok in line.split()[1:]]
         for line in text.splitlines() if line.startswith("f ")]
    return np.array(v), np.array(f)


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_round_trip_keeps_order_and_duplicates(tmp_path, mesh, suffix):
    vertices, faces = mesh
    path = write_mesh(tmp_path / f"m{suffix}", vertices, faces)
    v, f = read_mesh(path)
    np.testing.assert_allclose(v, vertices, atol=1e-6)
    np.testing.assert_array_equal(f, faces)


def test_obj_is_plain_wavefront(tmp_path, mesh):
    vertices, faces = mesh
    path = write_mesh(tmp_path / "m.obj", vertices, faces)
    v, f = _parse_obj(path.read_text())
    np.testing.assert_allclose(v, vertices, atol=1e-6)
    np.testing.assert_array_equal(f, faces)


def test_vertex_colours_round_trip(tmp_path, mesh):
    vertices, faces = mesh
    colors = np.random.default_rng(1).random((30, 3))
    for suffix in (".ply", ".obj"):
        path = write_mesh(tmp_path / f"c{suffix}", vertices, faces, colors=colors)
        loaded = trimesh.load(str(path), process=False)
        np.testing.assert_allclose(loaded.visual.vertex_colors[:, :3] / 255.0, colors, atol=1 / 255)


def test_bad_inputs_name_the_file_and_write_nothing(tmp_path, mesh):
    vertices, faces = mesh
    with pytest.raises(ValueError, match="m.stl.*unknown mesh format"):
        write_mesh(tmp_path / "m.stl", vertices, faces)
    with pytest.raises(ValueError, match="bad.obj.*faces"):
        write_mesh(tmp_path / "bad.obj", vertices, faces + 100)
    assert list(tmp_path.iterdir()) == []
