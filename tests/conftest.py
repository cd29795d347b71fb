"""Shared fixtures: small FLAME-format models built in memory, so tests need no licensed files."""
from __future__ import annotations

import numpy as np
import pytest

from flame import constants as C
from flame.model import FlameModel


def make_tiny_model(seed: int = 0, num_vertices: int = 64) -> FlameModel:
    """A small random model with FLAME's layout: 5 joints, 300 + 100 components, 51 + 79x17 landmarks.

    The geometry is meaningless (random points on a sphere, a fan of faces); it only has the right
    shapes, valid indices, skinning weights that sum to one and a regressor that averages vertices.
    """
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(num_vertices, 3))
    v = 0.1 * v / np.linalg.norm(v, axis=1, keepdims=True)
    num_faces = 2 * num_vertices
    faces = np.stack([rng.choice(num_vertices, 3, replace=False) for _ in range(num_faces)])
    weights = rng.random((num_vertices, C.NUM_JOINTS)) ** 4
    weights /= weights.sum(axis=1, keepdims=True)
    j_reg = rng.random((C.NUM_JOINTS, num_vertices))
    j_reg /= j_reg.sum(axis=1, keepdims=True)
    bary = rng.random((C.CONTOUR_NUM_ROWS, C.NUM_CONTOUR_LANDMARKS, 3)) + 0.1
    sbary = rng.random((C.NUM_STATIC_LANDMARKS, 3)) + 0.1
    return FlameModel(
        v_template=v,
        faces=faces.astype(np.int64),
        shapedirs=1e-3 * rng.normal(size=(num_vertices, 3, C.NUM_SHAPE_TOTAL)),
        exprdirs=1e-3 * rng.normal(size=(num_vertices, 3, C.NUM_EXPRESSION_TOTAL)),
        posedirs=1e-3 * rng.normal(size=(num_vertices, 3, C.NUM_POSE_FEATURES)),
        j_regressor=j_reg,
        weights=weights,
        parents=np.asarray(C.PARENTS, np.int64),
        static_lmk_faces=rng.integers(0, num_faces, C.NUM_STATIC_LANDMARKS).astype(np.int64),
        static_lmk_bary=sbary / sbary.sum(axis=1, keepdims=True),
        dynamic_lmk_faces=rng.integers(
            0, num_faces, (C.CONTOUR_NUM_ROWS, C.NUM_CONTOUR_LANDMARKS)).astype(np.int64),
        dynamic_lmk_bary=bary / bary.sum(axis=-1, keepdims=True),
        source=f"tiny model (seed {seed})",
    )


def make_tiny_dataset(root, identities: list[str], size: int = 48, seed: int = 0) -> None:
    """A dataset directory, one image per entry of `identities`, with random landmarks.

    Each identity has its own random pattern, and each image is that pattern plus its own noise,
    so identity is visible in the pixels (a network can learn shape consistency on it).
    """
    import cv2

    from ringnet_tf.data import dataset as D

    rng = np.random.default_rng(seed)
    patterns = {ident: rng.integers(0, 255, (size // 8, size // 8, 3)).astype(np.uint8)
                for ident in sorted(set(identities))}
    records = []
    for i, ident in enumerate(identities):
        name = f"images/{ident}/{i:02d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        base = cv2.resize(patterns[ident], (size, size), interpolation=cv2.INTER_NEAREST)
        noise = rng.integers(0, 255, (size, size, 3))
        cv2.imwrite(str(root / name), (0.75 * base + 0.25 * noise).astype(np.uint8))
        lm = np.concatenate([rng.uniform(0.2 * size, 0.8 * size, (68, 2)), np.ones((68, 1))], 1)
        records.append(D.Record(name, ident, lm.astype(np.float32)))
    D.write_manifest(root, records)
    D.write_meta(root, {"source": "test"})


def write_exif_jpeg(path, rgb: np.ndarray, orientation: int, quality: int = 95) -> None:
    """Writes `rgb` ([H, W, 3] uint8, as stored) as a JPEG whose EXIF orientation tag says how to
    turn it for viewing (6: a quarter to the right), with Pillow: a writer independent of the
    OpenCV decoding under test."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(rgb)).save(path, quality=quality, exif=exif)


@pytest.fixture
def tiny_model() -> FlameModel:
    return make_tiny_model()


@pytest.fixture(scope="module")
def flame_dir(tmp_path_factory):
    """A small random model (200 vertices) written in FLAME's file format, once per test module."""
    from flame.model import save_flame_files

    path = tmp_path_factory.mktemp("flame")
    save_flame_files(make_tiny_model(num_vertices=200), path)
    return path


TRAIN_IDENTITIES = [f"id{i}" for i in range(4) for _ in range(4)]


def make_training_root(root) -> None:
    """A tiny head model (root/flame) and tiny training and validation rings (root/data, root/val)."""
    from pathlib import Path

    from flame.model import save_flame_files

    root = Path(root)
    save_flame_files(make_tiny_model(), root / "flame")
    make_tiny_dataset(root / "data", TRAIN_IDENTITIES, size=40)
    make_tiny_dataset(root / "val", TRAIN_IDENTITIES[:8], size=40, seed=1)


def make_tiny_checkpoint(root, config):
    """A tiny head model (root/flame) and an untrained network of `config` saved as a compact
    checkpoint (root/ckpt); returns the network."""
    from pathlib import Path

    from flame.model import save_flame_files
    from ringnet_tf.inference import save_compact
    from ringnet_tf.model import build_ringnet

    root = Path(root)
    model = make_tiny_model()
    save_flame_files(model, root / "flame")
    import keras

    keras.utils.set_random_seed(0)  # the same untrained network whatever ran before (test order, xdist)
    net = build_ringnet(model, config)
    save_compact(net, config.__dict__, model.fingerprint(), root / "ckpt")
    return net


def check_demo_outputs(mesh, model: FlameModel, image_size: int) -> dict:
    """demo.py's outputs for one image (`mesh` and its <stem>.npz from --params; <stem>_neutral
    too if written) against a decoding independent of the demo's: the .npz parameters through a
    fresh FlameLayer give the mesh's vertices (and FLAME(shape, 0, 0) the neutral mesh), and
    through the camera and the inverted crop box the 68 landmarks written (photo pixels).
    Returns the .npz's arrays."""
    from pathlib import Path

    import tensorflow as tf

    from flame.layer import FlameLayer
    from flame.mesh_io import read_mesh
    from ringnet_tf import camera

    mesh = Path(mesh)
    vertices, faces = read_mesh(mesh)
    assert vertices.shape == (model.num_vertices, 3)
    np.testing.assert_array_equal(faces, model.faces)
    p = dict(np.load(mesh.with_suffix(".npz")))
    assert p["cam"].shape == (3,) and p["pose"].shape == (6,) and p["flame_pose"].shape == (15,)
    assert p["landmarks2d"].shape == (68, 2) and p["now_landmarks"].shape == (7, 3)
    layer = FlameLayer(model, len(p["shape"]), len(p["expression"]))
    out = layer(tf.constant(p["shape"][None]), tf.constant(p["expression"][None]), tf.constant(p["pose"][None]))
    np.testing.assert_allclose(out["vertices"][0].numpy(), vertices, atol=2e-6)
    crop_px = camera.project(out["landmarks"][0].numpy().astype(np.float64), p["cam"].astype(np.float64),
                             image_size)
    # The box's centre is the crop's centre, (size - 1) / 2, and `side` photo pixels span the crop.
    cx, cy, side = p["crop_box"].astype(np.float64)
    np.testing.assert_allclose(p["landmarks2d"], (crop_px - (image_size - 1) / 2) * side / image_size + [cx, cy],
                               atol=1e-3)
    neutral_path = mesh.with_name(mesh.stem + "_neutral" + mesh.suffix)
    if neutral_path.exists():
        zero = layer(tf.constant(p["shape"][None]), tf.zeros((1, layer.num_expression)),
                     tf.zeros((1, C.RINGNET_POSE_DIM)))
        np.testing.assert_allclose(read_mesh(neutral_path)[0], zero["vertices"][0].numpy(), atol=2e-6)
    return p


# The tiny network of the demo and export tests: it builds, exports and runs in seconds.
TINY_DEMO_CONFIG = {"image_size": 64, "backbone": "tiny", "num_shape": 10, "num_expression": 5}


@pytest.fixture(scope="session")
def tiny_demo_root(tmp_path_factory):
    """Built once per session and only read by its users: a tiny head model (flame/) and an
    untrained network of TINY_DEMO_CONFIG as a compact checkpoint (ckpt/), a run directory (run/:
    ringnet.keras and config.json) and a SavedModel (sm/)."""
    import shutil

    from ringnet_tf.export import export_saved_model
    from ringnet_tf.model import ModelConfig

    root = tmp_path_factory.mktemp("tiny_demo")
    net = make_tiny_checkpoint(root, ModelConfig(**TINY_DEMO_CONFIG))
    export_saved_model(net, root / "sm")
    (root / "run").mkdir()
    net.save(root / "run" / "ringnet.keras")
    shutil.copy(root / "ckpt" / "config.json", root / "run" / "config.json")
    return root
