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
    net = build_ringnet(model, config)
    save_compact(net, config.__dict__, model.fingerprint(), root / "ckpt")
    return net
