"""Training's failure modes (issue 14): divergence stops cleanly with finite checkpoints kept, a
damaged newest checkpoint is skipped for an older one, a run is the same run however its paths are
written (or wherever it was moved), a bad --out is one error line, and train.py prints only its
own lines unless --verbose."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from flame import constants as C
from flame import lbs
from flame.layer import FlameLayer
from ringnet_tf.data.rings import RingConfig
from ringnet_tf.model import ModelConfig
from ringnet_tf.train_lib import ConfigError, TrainConfig, run
from tests.conftest import TRAIN_IDENTITIES, make_tiny_model, make_training_root

ROOT = Path(__file__).parents[1]
IDS = TRAIN_IDENTITIES
# Lines train.py may print: ours (progress, resume, skips, done, errors).
OUR_PREFIXES = ("step ", "done: ", "resuming ", "skipped ", "weights initialised", "error: ")
FOREIGN = ("Sharding callback", "I0000", "INFO:", "W0000", "E0000", "absl::InitializeLog")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    make_training_root(root)
    return root


def _config(setup: Path, out, **kw) -> TrainConfig:
    base = TrainConfig(
        data=str(setup / "data"), out=str(setup / out), flame_model=str(setup / "flame"),
        model=ModelConfig(image_size=32, backbone="tiny", num_shape=10, num_expression=5, dropout=0.0),
        rings=RingConfig(ring_size=4, rings_per_batch=2, image_size=32, seed=1),
        learning_rate=3e-3, num_steps=3, checkpoint_every=1, log_every=1, val_steps=1,
        jit_compile=False, export_saved_model=False)
    return dataclasses.replace(base, **kw)


def _tiny_flags(setup: Path) -> list[str]:
    return ["--data", str(setup / "data"), "--flame_model", str(setup / "flame"), "--image_size", "32",
            "--backbone", "tiny", "--num_shape", "10", "--num_expression", "5", "--dropout", "0",
            "--ring_size", "4", "--rings_per_batch", "2", "--jit_compile", "false"]


def _main(argv: list[str]) -> int:
    """train.py's main in this process (flags parsed afresh): its exit code."""
    import train

    train.F.unparse_flags()
    train.F(["train.py", *argv])
    return train.main(["train.py"])


def _checkpoint_weights(path: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(path)
    return {k: reader.get_tensor(k) for k, dtype in reader.get_variable_to_dtype_map().items()
            if dtype.is_floating}


# 1. Divergence.

def test_contour_rows_of_a_non_finite_rotation_stay_in_the_table():
    rot = np.tile(np.eye(3, dtype=np.float32), (4, C.NUM_JOINTS, 1, 1))
    rot[0, C.ROOT] = np.nan
    rot[1, C.NECK, 2, 0] = np.inf
    rot[2, C.ROOT, 0, 0] = -np.inf
    rows = lbs.contour_rows(tf.constant(rot)).numpy()
    assert rows.dtype == np.int32 and ((rows >= 0) & (rows <= C.CONTOUR_LAST_ROW)).all()
    assert rows[3] == 0  # the finite one keeps its row
    # The FLAME layer on a NaN pose: NaN landmarks, not an out-of-range gather.
    layer = FlameLayer(make_tiny_model(), 10, 5)
    pose = np.full((2, 6), np.nan, np.float32)
    out = layer(tf.zeros((2, 10)), tf.zeros((2, 5)), tf.constant(pose))
    assert np.isnan(out["landmarks"].numpy()).any()


def test_divergence_stops_before_a_checkpoint_holds_non_finite_weights(setup, capsys):
    # train.py's main in this process: exit code 3 and one line on stderr (no traceback), the
    # FloatingPointError's message (run's own, which train.py prints after "error: ").
    out = setup / "diverge"
    code = _main([*_tiny_flags(setup), "--out", str(out), "--learning_rate", "1", "--num_steps", "20",
                  "--checkpoint_every", "1", "--export_saved_model=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and err[0].startswith("error: ") and "step" in err[0], err
    message = err[0].removeprefix("error: ")
    assert "training stopped" in message and "--learning_rate" in message
    state = tf.train.get_checkpoint_state(str(out / "checkpoints"))
    kept = list(state.all_model_checkpoint_paths)
    assert kept and Path(kept[-1]).name in message  # the message names the last good checkpoint
    for path in kept:
        weights = _checkpoint_weights(path)
        assert weights and all(np.isfinite(w).all() for w in weights.values()), path


# 2. Damaged checkpoints.

@pytest.fixture(scope="module")
def three_checkpoints(setup):
    """A run with checkpoints at steps 1, 2, 3 (kept for copying)."""
    run(_config(setup, "three"), stream=io.StringIO())
    return setup / "three"


def _truncate_data(ckpt: Path) -> None:
    data = ckpt / "ckpt-3.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])


def _garbage_index(ckpt: Path) -> None:
    (ckpt / "ckpt-3.index").write_bytes(b"\x00garbage, not a table" * 10)


def _missing_shard(ckpt: Path) -> None:
    (ckpt / "ckpt-3.data-00000-of-00001").unlink()


def _garbage_state(ckpt: Path) -> None:
    (ckpt / "checkpoint").write_bytes(b"\x89\x00 this is { not a checkpoint state\n")


def _missing_state(ckpt: Path) -> None:
    (ckpt / "checkpoint").unlink()


@pytest.mark.parametrize("damage,skipped,resumed_at", [
    (_truncate_data, "ckpt-3", 2), (_garbage_index, "ckpt-3", 2), (_missing_shard, "ckpt-3", 2),
    (_garbage_state, "checkpoint", 3), (_missing_state, "checkpoint", 3),
])
def test_resume_skips_a_damaged_newest_checkpoint(setup, three_checkpoints, damage, skipped, resumed_at):
    name = f"damaged_{damage.__name__}"
    shutil.copytree(three_checkpoints, setup / name)
    damage(setup / name / "checkpoints")
    log = io.StringIO()
    result = run(_config(setup, name, num_steps=4), stream=log)
    lines = log.getvalue().splitlines()
    skips = [l for l in lines if l.startswith("skipped ")]
    assert len(skips) == 1 and skips[0].split(":")[0].endswith(skipped), lines
    assert any(l.startswith("resuming ") and f"at step {resumed_at} " in l for l in lines), lines
    assert result["step"] == 4
    # The checkpoints written since read again: a second resume skips nothing.
    log = io.StringIO()
    again = run(_config(setup, name, num_steps=4), stream=log)
    assert again["step"] == 4 and "skipped" not in log.getvalue()


def test_resume_with_no_readable_checkpoint_is_one_error(setup, three_checkpoints):
    shutil.copytree(three_checkpoints, setup / "all_damaged")
    for index in (setup / "all_damaged" / "checkpoints").glob("ckpt-*.index"):
        index.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="no readable checkpoint"):
        run(_config(setup, "all_damaged", num_steps=4), stream=io.StringIO())


# 3. The same run, however its paths are written.

def test_resume_accepts_the_same_run_under_other_spellings_and_after_a_move(setup, monkeypatch):
    monkeypatch.chdir(setup)
    relative = dataclasses.replace(_config(setup, "x", num_steps=1, jit_compile=None),
                                   data="data", flame_model="flame", out="spelled")
    run(relative, stream=io.StringIO())
    monkeypatch.chdir("/")  # elsewhere; absolute paths with trailing slashes now
    spelled = dataclasses.replace(relative, data=f"{setup / 'data'}/", flame_model=f"{setup / 'flame'}/",
                                  out=f"{setup / 'spelled'}/", num_steps=2)
    log = io.StringIO()
    assert run(spelled, stream=log)["step"] == 2 and "resuming" in log.getvalue()
    saved = json.loads((setup / "spelled" / "config.json").read_text())
    assert saved["data"] == str(setup / "data")  # stored resolved
    (setup / "spelled").rename(setup / "moved")
    log = io.StringIO()
    moved = dataclasses.replace(spelled, out=str(setup / "moved"), num_steps=3)
    assert run(moved, stream=log)["step"] == 3 and "at step 2" in log.getvalue()
    with pytest.raises(ConfigError, match="differs in learning_rate"):  # another run is still refused
        run(dataclasses.replace(moved, learning_rate=1e-2), stream=io.StringIO())


# 4. A bad --out, a missing dataset.

def test_bad_out_and_missing_data_are_one_error_line_and_exit_2(setup, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    cases = [(["--out", str(afile)], "not a directory"),
             (["--out", str(afile / "run")], "is a file"),
             (["--out", str(tmp_path / "ok"), "--data", str(tmp_path / "nowhere")], "does not exist (--data)"),
             (["--out", str(tmp_path / "ok"), "--val_data", str(tmp_path / "nowhere")],
              "does not exist (--val_data)")]
    if not os.access(readonly, os.W_OK):  # root writes anywhere
        cases.append((["--out", str(readonly / "run")], "not writable"))
    for args, expected in cases:
        code = _main([*_tiny_flags(setup), "--num_steps", "1", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (args, err)
    assert not (tmp_path / "ok").exists() and not (readonly / "run").exists()
    readonly.chmod(0o755)


# 5. Our lines only.

def _train_py(setup: Path, out: str, *extra: str, val: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # train.py's default
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *_tiny_flags(setup), "--out", str(setup / out),
                           *(["--val_data", str(setup / "val")] if val else []), "--num_steps", "2",
                           "--checkpoint_every", "1", "--log_every", "1", *extra],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


def test_train_py_prints_only_its_own_lines_unless_verbose(setup):
    # The quiet run does everything a run prints during (validation, checkpoints, the export);
    # the verbose one only needs a line of TensorFlow's (its checkpoint save logs one).
    proc = _train_py(setup, "quiet", "--export_saved_model=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert lines and all(l.startswith(OUR_PREFIXES) for l in lines), lines
    assert not [l for l in lines if any(f in l for f in FOREIGN)]
    assert (setup / "quiet" / "saved_model" / "saved_model.pb").is_file()
    verbose = _train_py(setup, "verbose", "--export_saved_model=false", "--num_steps", "1", "--verbose", val=False)
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert "Sharding callback" in verbose.stdout + verbose.stderr
