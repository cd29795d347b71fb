"""Converting RingNet's released checkpoint: on stand-ins of it (plain tf.compat.v1 graphs in
TF-slim's and HMR's naming, random weights), with and without FLAME's vertex output; refusals."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flame.geometry import rotation_from_axis_angle
from flame.io import load_flame
from flame.model import save_flame_files
from ringnet_tf import camera, preprocess
from ringnet_tf.convert import original as CO
from ringnet_tf.convert.standin import build_standin
from ringnet_tf.inference import load_predictor
from tests.conftest import make_tiny_model

SIZE = 64
FLIP = np.diag([1.0, -1.0, -1.0])


@pytest.fixture(scope="session")
def open_head():
    return load_flame(None)


@pytest.fixture(scope="session")
def full(tmp_path_factory, open_head):
    """A stand-in with FLAME inside (the open head's arrays), RingNet's default epsilon."""
    return build_standin(tmp_path_factory.mktemp("full") / "ring_6_68641", open_head, image_size=SIZE,
                         hidden=32, seed=0)


@pytest.fixture(scope="session")
def bare(tmp_path_factory):
    """A stripped stand-in: parameters only, another width and a batch-norm epsilon to fold."""
    return build_standin(tmp_path_factory.mktemp("bare") / "ring_6_68641", None, image_size=SIZE,
                         hidden=24, bn_epsilon=1e-3, seed=1)


def _convert(standin, out, **kwargs):
    said, warned = [], []
    result = CO.convert(standin.prefix, out, say=said.append, warn=warned.append, **kwargs)
    return result, said, warned


@pytest.fixture(scope="session")
def converted_full(full, tmp_path_factory):
    return _convert(full, tmp_path_factory.mktemp("conv") / "full")


@pytest.fixture(scope="session")
def converted_bare(bare, tmp_path_factory):
    return _convert(bare, tmp_path_factory.mktemp("conv") / "bare")


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def _run_graph(standin, images):
    """The stand-in's own graph: stages [N, T, P] and vertices [N, V, 3] (or None)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(f"{standin.prefix}.meta", clear_devices=True)
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, str(standin.prefix))
            fetch = [standin.stage_params, standin.vertices] if standin.vertices else [standin.stage_params]
            outs = [sess.run(fetch, {standin.input: img[None]}) for img in images]
    stages = np.stack([np.stack(o[0], 1)[0] for o in outs])
    vertices = np.stack([o[1][0] for o in outs]) if standin.vertices else None
    return stages, vertices


def _root_joint(head, theta):
    """[N, 3] FLAME's rest root joint for RingNet parameters' shape and expression (NumPy)."""
    shaped = (head.v_template + np.einsum("vck,nk->nvc", head.shapedirs[..., :100], theta[:, 9:109])
              + np.einsum("vck,nk->nvc", head.exprdirs[..., :50], theta[:, 109:159]))
    return np.einsum("v,nvc->nc", head.j_regressor[0], shaped)


def _raw_stages(predictor, images):
    net = predictor.net
    return net.get_layer("regressor")(net.get_layer("backbone")(images, training=False), training=False).numpy()


def _check_ours_against_ring(ours, ring, root):
    """Our parameters are RingNet's in our convention: R = F R_ring, the camera shifted (see
    ringnet_tf.model.ringnet_to_ours), everything else unchanged."""
    ours, ring = ours.astype(np.float64), ring.astype(np.float64)
    for o, r in zip(ours, ring):
        np.testing.assert_allclose(rotation_from_axis_angle(o[3:6]),
                                   FLIP @ rotation_from_axis_angle(r[3:6]), atol=1e-4)
    half = 1.0 / (SIZE * ring[:, 0])
    np.testing.assert_allclose(ours[:, 0], ring[:, 0], atol=1e-4)
    np.testing.assert_allclose(ours[:, 1], ring[:, 1] + half, atol=1e-4)
    np.testing.assert_allclose(ours[:, 2], -ring[:, 2] - 2 * root[:, 1] - half, atol=1e-4)
    np.testing.assert_allclose(ours[:, 6:], ring[:, 6:], atol=1e-4)


def test_the_converted_network_reproduces_the_graph_with_its_vertices(full, converted_full, open_head):
    result, said, warned = converted_full
    assert warned == []
    figures = result.verification
    assert figures.params <= 1e-4 and figures.vertices <= 1e-5 and figures.pixels <= 1e-2
    assert figures.vertex_path == "network" and figures.vertex_tensor == full.vertices
    assert any("3 stages" in line and "regressor width 32" in line for line in said)
    assert any("ignored by rule: 14 optimizer slots, beta1_power, beta2_power, global_step" in line for line in said)
    config = json.loads((result.out / "config.json").read_text())
    assert config["model"]["pool1"] == "slim" and config["model"]["output_convention"] == "ringnet"
    assert config["model"]["hidden"] == 32 and config["weights_dtype"] == "float32"
    assert config["conversion"]["verification"]["vertices"] == figures.vertices

    # Independently of the converter's own check: other images, our NumPy reading of the convention.
    predictor = load_predictor(result.out)
    images = _images(3, seed=7)
    # The demo's path below: uint8 crops through predict(), the graph fed RingNet's normalisation.
    crops = np.random.default_rng(3).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.uint8)
    # RingNet's normalisation written out from its demo (not preprocess.normalise, which is under test)
    all_stages, all_v = _run_graph(full, np.concatenate([images, 2 * (crops / 255.0 - 0.5)]))  # one import
    stages, ring_v = all_stages[:3], all_v[:3]
    assert np.abs(_raw_stages(predictor, images) - stages).max() < 1e-4
    out = {k: v.numpy() for k, v in predictor.net(images, training=False).items()}
    ring = stages[:, -1].astype(np.float64)
    root = _root_joint(open_head, ring)
    _check_ours_against_ring(out["params"], ring, root)
    expected_v = (ring_v - root[:, None]) @ FLIP + root[:, None]
    assert np.abs(out["vertices"] - expected_v).max() < 1e-5
    ring_px = (ring[:, None, :1] * (ring_v[..., :2] + ring[:, None, 1:3]) + 1) * SIZE / 2
    assert np.abs(camera.project(out["vertices"].astype(np.float64), out["params"].astype(np.float64), SIZE)
                  - ring_px).max() < 1e-2

    # The demo's path: uint8 crops through predict() match the graph fed RingNet's normalisation.
    pred = predictor.predict(crops)
    stages, ring_v = all_stages[3:], all_v[3:]
    root = _root_joint(open_head, stages[:, -1].astype(np.float64))
    _check_ours_against_ring(pred["params"], stages[:, -1], root)
    assert np.abs(pred["vertices"] - ((ring_v - root[:, None]) @ FLIP + root[:, None])).max() < 1e-5


def test_a_graph_without_vertices_converts_with_the_parameter_check_and_folds_epsilon(bare, converted_bare,
                                                                                   open_head):
    result, said, warned = converted_bare
    assert result.verification.vertices is None and result.verification.params <= 1e-4
    assert len(warned) == 1 and "no FLAME vertex output" in warned[0] and "parameters checked only" in warned[0]
    assert "RingNet's documented one" in warned[0]
    assert any("epsilon 0.001" in line and "folded into moving_variance" in line for line in said)
    predictor = load_predictor(result.out)
    images = _images(2, seed=11)
    stages, _ = _run_graph(bare, images)
    assert np.abs(_raw_stages(predictor, images) - stages).max() < 1e-4
    params = predictor.net(images, training=False)["params"].numpy()
    _check_ours_against_ring(params, stages[:, -1], _root_joint(open_head, stages[:, -1].astype(np.float64)))


def test_another_head_model_is_verified_through_the_checkpoints_flame(full, tmp_path):
    # RingNet's real case without --flame_model: the checkpoint's FLAME is not the head model given.
    head_dir = tmp_path / "tiny_head"
    save_flame_files(make_tiny_model(), head_dir)
    result, said, warned = _convert(full, tmp_path / "out", flame_model=str(head_dir))
    assert result.verification.vertex_path == "checkpoint FLAME"
    assert result.verification.vertices <= 1e-5 and result.verification.pixels <= 1e-2
    assert any("is not the FLAME inside the checkpoint" in w for w in warned)
    predictor = load_predictor(result.out, str(head_dir))
    assert predictor.predict(np.zeros((1, SIZE, SIZE, 3), np.uint8))["vertices"].shape == (1, 64, 3)


def test_a_mismatching_graph_is_an_error_and_nothing_is_written(tmp_path):
    # Keras' pool1 (zero padding, VALID) inside the graph: the slim conversion cannot match it.
    standin = build_standin(tmp_path / "keraspool" / "ring_6_68641", None, image_size=SIZE, hidden=8, seed=2,
                            pool1="keras", optimizer_slots=False)
    out = tmp_path / "out"
    with pytest.raises(CO.ConversionError, match="verification failed: parameters differ") as info:
        _convert(standin, out)
    assert "\n" not in str(info.value) and "nothing written" in str(info.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def _linked_copy(standin, folder: Path, skip: str = "") -> Path:
    """The stand-in's files under `folder` (symlinks, except the one named by `skip`)."""
    folder.mkdir(parents=True)
    prefix = folder / standin.prefix.name
    for src in standin.prefix.parent.glob(standin.prefix.name + ".*"):
        if not (skip and src.name.endswith(skip)):
            (folder / src.name).symlink_to(src)
    return prefix


def test_a_graph_tf_cannot_import_is_converted_with_a_warning(bare, converted_bare, tmp_path):
    from tensorflow.core.protobuf import meta_graph_pb2

    prefix = _linked_copy(bare, tmp_path / "ckpt", skip=".meta")
    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString(Path(f"{bare.prefix}.meta").read_bytes())
    node = meta.graph_def.node.add()
    node.name, node.op = "contrib/Removed", "RingNetRemovedContribOp"  # an op TF no longer has
    Path(f"{prefix}.meta").write_bytes(meta.SerializeToString())
    said, warned = [], []
    result = CO.convert(prefix, tmp_path / "out", say=said.append, warn=warned.append)
    assert result.verification is None
    assert len(warned) == 1 and "cannot import" in warned[0] and "NOT verified" in warned[0]
    config = json.loads((result.out / "config.json").read_text())
    assert config["conversion"]["verification"].startswith("not verified")
    # Still the right network: the verified conversion's (checked against this graph's outputs by
    # the converter and by test_a_graph_without_vertices_...), weight for weight.
    verified = converted_bare[0].out
    verified_config = json.loads((verified / "config.json").read_text())
    for key in ("model", "flame_fingerprint", "weights_dtype"):  # all load_predictor reads
        assert config[key] == verified_config[key], key
    with np.load(result.out / "weights.npz") as got, np.load(verified / "weights.npz") as want:
        assert sorted(got.files) == sorted(want.files) and len(got.files) > 200
        for k in want.files:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _rewrite_checkpoint(standin, folder: Path, rename: dict[str, str] | None = None,
                        reshape: dict[str, tuple[int, ...]] | None = None) -> Path:
    """The stand-in's checkpoint with variables renamed or reshaped (same .meta).

    Written by the SaveV2 op that tf.compat.v1.train.Saver runs (the same name-keyed bundle), in
    one call: rebuilding 300 graph variables and loading them one session run each took seconds."""
    import tensorflow as tf

    folder.mkdir(parents=True)
    prefix = folder / standin.prefix.name
    reader = tf.train.load_checkpoint(str(standin.prefix))
    names, values = [], []
    for name, _ in tf.train.list_variables(str(standin.prefix)):
        value = reader.get_tensor(name)
        if reshape and name in reshape:
            value = np.resize(value, reshape[name])
        names.append((rename or {}).get(name, name))
        values.append(tf.constant(value))
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=values)
    shutil.copy(f"{standin.prefix}.meta", f"{prefix}.meta")
    return prefix


def _refused(args: list[str], capsys) -> str:
    code = CO.main(args)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, captured.err
    return errors[0]


RENAMED = "resnet_v2_50/block2/unit_3/bottleneck_v2/conv2/weights"


def test_a_renamed_or_reshaped_variable_is_refused_in_one_line(bare, tmp_path, capsys):
    renamed = _rewrite_checkpoint(bare, tmp_path / "renamed", rename={RENAMED: RENAMED.replace("weights", "kernel")})
    line = _refused(["--ckpt", str(renamed), "--out", str(tmp_path / "o1")], capsys)
    assert RENAMED.replace("weights", "kernel") in line and "not one of RingNet's" in line
    reshaped = _rewrite_checkpoint(bare, tmp_path / "reshaped", reshape={"3D_module/fc2/biases": (25,)})
    line = _refused(["--ckpt", str(reshaped), "--out", str(tmp_path / "o2")], capsys)
    assert "3D_module/fc2/biases has shape [25], expected [24]" in line
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_bad_inputs_are_refused_in_one_line_and_nothing_is_written(bare, tmp_path, capsys):
    import tensorflow as tf

    out = tmp_path / "out"
    args = ["--out", str(out)]
    # No .index.
    line = _refused(["--ckpt", str(tmp_path / "nowhere" / "ring_6_68641"), *args], capsys)
    assert "ring_6_68641.index: no such file" in line
    # A truncated .data.
    truncated = _linked_copy(bare, tmp_path / "truncated", skip=".data-00000-of-00001")
    data = Path(f"{bare.prefix}.data-00000-of-00001").read_bytes()
    Path(f"{truncated}.data-00000-of-00001").write_bytes(data[:len(data) // 2])
    line = _refused(["--ckpt", str(truncated), *args], capsys)
    assert ".data-00000-of-00001: cannot read" in line and "truncated" in line
    # A .meta that is not a graph.
    for i, junk in enumerate([b"\x00\xff not a graph " * 50, b"\n\x05hello"]):
        notgraph = _linked_copy(bare, tmp_path / f"notgraph{i}", skip=".meta")
        Path(f"{notgraph}.meta").write_bytes(junk)
        line = _refused(["--ckpt", str(notgraph), *args], capsys)
        assert f"notgraph{i}/ring_6_68641.meta:" in line and ("MetaGraphDef" in line or "no graph" in line)
    # A checkpoint of another network.
    other = tmp_path / "other" / "model"
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 8], name="x")
        with tf.compat.v1.variable_scope("dense"):
            w = tf.compat.v1.get_variable("kernel", [8, 4], use_resource=False)
            b = tf.compat.v1.get_variable("bias", [4], use_resource=False)
        tf.matmul(x, w) + b
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, str(other))
    line = _refused(["--ckpt", str(other), *args], capsys)
    assert "not RingNet's checkpoint" in line and "dense/" in line
    assert not out.exists()


def test_an_existing_output_is_kept_without_force(bare, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = _refused(["--ckpt", str(bare.prefix), "--out", str(out)], capsys)
    assert "--force" in line and (out / "keep.txt").read_text() == "mine"


def test_the_command_line_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ringnet_tf.convert_original", "--ckpt", str(tmp_path / "x"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=300)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'x'}.index: no such file; --ckpt takes a checkpoint prefix (the name before "
        f".index / .meta / .data-*, e.g. DIR/ring_6_68641)"]


def test_verification_images_include_ringnets_crop_of_the_bundled_photo():
    images = CO.verification_images(SIZE)
    rgb = preprocess.read_image(Path(__file__).parents[1] / "examples" / "astronaut.jpg")
    crop = preprocess.crop(rgb, preprocess.centre_box(*rgb.shape[:2]), SIZE)
    np.testing.assert_array_equal(images[0], preprocess.normalise(crop))
    assert images.shape == (3, SIZE, SIZE, 3) and images.dtype == np.float32
    assert images.min() >= -1 and images.max() <= 1
