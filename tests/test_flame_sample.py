"""`python -m flame.sample`: a random head from a FLAME model written as a mesh file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flame.io import load_flame
from flame.mesh_io import read_mesh
from flame.sample import main


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_writes_a_readable_mesh_of_the_model(flame_dir, tmp_path, suffix, capsys):
    model = load_flame(flame_dir)
    out = tmp_path / f"head{suffix}"
    args = ["--out", str(out), "--flame_model", str(flame_dir), "--num_shape", "20",
            "--num_expression", "10", "--expression_std", "1", "--jaw_deg", "15"]
    assert main(args) == 0
    vertices, faces = read_mesh(out)
    assert vertices.shape == (model.num_vertices, 3) and np.all(np.isfinite(vertices))
    np.testing.assert_array_equal(faces, model.faces)  # vertex order kept: indices stay valid
    # a random identity, not the template
    assert np.abs(vertices - model.v_template).max() > 1e-4
    assert model.fingerprint() in capsys.readouterr().out


def test_seed_changes_the_head_and_existing_output_is_kept(flame_dir, tmp_path, capsys):
    first, second = tmp_path / "a.obj", tmp_path / "b.obj"
    assert main(["--out", str(first), "--flame_model", str(flame_dir), "--seed", "1"]) == 0
    assert main(["--out", str(second), "--flame_model", str(flame_dir), "--seed", "2"]) == 0
    assert np.abs(read_mesh(first)[0] - read_mesh(second)[0]).max() > 1e-4
    before = first.read_bytes()
    assert main(["--out", str(first), "--flame_model", str(flame_dir), "--seed", "2"]) == 2  # bad input
    assert "--force" in capsys.readouterr().err and first.read_bytes() == before
    assert main(["--out", str(first), "--flame_model", str(flame_dir), "--seed", "2",
                 "--force"]) == 0
    assert first.read_bytes() == second.read_bytes()  # deterministic for a seed


def test_a_bad_model_path_is_a_one_line_error(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x.obj"), "--flame_model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.obj").exists()


def test_an_unwritable_output_is_bad_input(flame_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["--out", str(tmp_path / "file" / "x.obj"), "--flame_model", str(flame_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_flame_commands_import_nothing_from_ringnet_tf():
    # flame/ stands alone (ringnet_tf builds on it): the command plumbing lives in flame.cli.
    from flame import cli
    from ringnet_tf import cli as ringnet_cli

    assert ringnet_cli.fail is cli.fail and ringnet_cli.EXIT_BAD_INPUT == cli.EXIT_BAD_INPUT == 2
    code = "import sys, flame.sample; print(sorted(m for m in sys.modules if m.startswith('ringnet_tf')))"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
