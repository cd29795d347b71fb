"""Training-curve figures: scalars read back from TensorBoard events, stages on one step axis."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ringnet_tf import plot_run


def _write_run(root, steps: list[int], scale: float) -> None:
    writer = tf.summary.create_file_writer(str(root / "tensorboard"))
    with writer.as_default():
        for s in steps:
            tf.summary.scalar("train/landmarks", scale / s, step=s)
            tf.summary.scalar("interval/val_landmarks", 2 * scale / s, step=s)
    writer.close()


def test_stages_are_drawn_one_after_the_other(tmp_path):
    _write_run(tmp_path / "a", [50, 100, 150], 1.0)
    _write_run(tmp_path / "b", [50, 100], 10.0)
    series, starts = plot_run.read_stages([tmp_path / "a", tmp_path / "b"])
    assert starts == [150]
    steps, values = zip(*series["train/landmarks"])
    assert steps == (50, 100, 150, 200, 250)
    np.testing.assert_allclose(values, [1 / 50, 1 / 100, 1 / 150, 10 / 50, 10 / 100], rtol=1e-6)
    out = plot_run.plot([tmp_path / "a", tmp_path / "b"], tmp_path / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_run.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_plot_leaves_matplotlibs_backend_and_pyplot_alone(tmp_path, monkeypatch):
    import sys

    import matplotlib

    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: pytest.fail("plot changed the global backend"))
    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)
    _write_run(tmp_path / "a", [10, 20], 1.0)
    assert plot_run.plot(tmp_path / "a", tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "matplotlib.pyplot" not in sys.modules  # its own Figure and Agg canvas
