"""Loading a trained RingNet for inference, and the compact checkpoint format.

Three sources, one interface (`Predictor`):
- a training run directory (`train.py --out`): `config.json` + `ringnet.keras`, or, for a run that
  has not finished, its newest checkpoint under `checkpoints/`;
- a compact checkpoint directory (what `checkpoints/` ships): `config.json` + `weights.npz`, the
  network's weights without the FLAME arrays (float16 by default), which are rebuilt from the head
  model and checked against the recorded fingerprint;
- a SavedModel (`export.py`, or `saved_model/` of a run).
A checkpoint trained with one head model refuses to run with another (fingerprint check).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flame.fileutil import atomic_write

if TYPE_CHECKING:
    import keras

    from flame.layer import FlameLayer
    from flame.model import FlameModel

COMPACT_WEIGHTS = "weights.npz"
CONFIG_NAME = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming it."""


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_NAME
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {CONFIG_NAME}: not a RingNet checkpoint") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{file}: not text (binary data), not a RingNet config") from None
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model", {}), dict):
        raise CheckpointError(f"{file}: not a RingNet config (expected a JSON object with a "
                              f"'model' object, got {type(config).__name__})")
    return config


def _one_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, shortened: library errors can be pages long."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def _check_fingerprint(path: Path, config: dict[str, Any], flame: FlameModel) -> None:
    want = config.get("flame_fingerprint")
    if want != flame.fingerprint():
        raise CheckpointError(
            f"{path} was trained with head model {want}, but {flame.source} is {flame.fingerprint()}: "
            f"use the head model it was trained with (--flame_model), or a checkpoint trained on yours")


def stored_weights(net: keras.Model) -> list[keras.Variable]:
    """The network's weights in order, without the FLAME layer's (rebuilt from the head model)."""
    from ringnet_tf.export import flame_layer_of

    skip = {id(w) for w in flame_layer_of(net).weights}
    return [w for w in net.weights if id(w) not in skip]




def save_compact(net: keras.Model, model_config: dict[str, Any], flame_fingerprint: str, out_dir: str | os.PathLike,
                 dtype: str = "float16", extra: dict[str, Any] | None = None) -> Path:
    """Writes config.json and weights.npz (every weight but FLAME's arrays, cast to `dtype`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = stored_weights(net)
    # Keyed by position: Keras' automatic layer names depend on what else a process has built.
    arrays = {f"w{i:04d}": np.asarray(w.numpy()).astype(dtype) for i, w in enumerate(weights)}
    atomic_write(out / COMPACT_WEIGHTS, lambda f: np.savez_compressed(f, **arrays))
    config = {"model": model_config, "flame_fingerprint": flame_fingerprint, "weights_dtype": dtype,
              **(extra or {})}
    atomic_write(out / CONFIG_NAME, lambda f: f.write(json.dumps(config, indent=2, sort_keys=True).encode()))
    return out


class Predictor:
    """Runs a network on crops. `predict(crops)` with crops [B, S, S, 3] uint8 returns NumPy arrays:
    params, cam [B, 3], pose [B, 6], shape, expression, flame_pose [B, 15], vertices [B, V, 3],
    landmarks3d [B, 68, 3], now_landmarks [B, 7, 3], landmarks2d [B, 68, 2] (crop pixels).
    `neutral(shape)` gives FLAME(shape, 0, 0): vertices [B, V, 3], now_landmarks [B, 7, 3].
    `decode(params)` gives what `predict` would for other parameters (e.g. refined ones); it
    needs the FLAME layer (`flame_layer`, None for a SavedModel).
    """

    image_size: int
    faces: np.ndarray
    flame_layer: FlameLayer | None
    source: str

    def predict(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def neutral(self, shape: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def decode(self, params: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"{self.source}: decoding parameters needs a checkpoint's FLAME layer")


class KerasPredictor(Predictor):
    """A Keras network; `config` is its checkpoint's config.json (empty when built in memory)."""

    def __init__(self, net: keras.Model, source: str, config: dict[str, Any] | None = None):
        import tensorflow as tf

        from ringnet_tf.export import flame_layer_of, serve
        from ringnet_tf.preprocess import normalise

        self.net, self.source, self.config = net, source, dict(config or {})
        self.image_size = int(net.input_shape[1])
        self.flame_layer = flame_layer_of(net)
        self.faces = self.flame_layer.faces_numpy()
        self._fn = tf.function(lambda x: serve(net, normalise(x)))

    def predict(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self._fn(np.asarray(crops, np.uint8)).items()}

    def neutral(self, shape: np.ndarray) -> dict[str, np.ndarray]:
        from ringnet_tf.model import neutral

        return {k: v.numpy() for k, v in neutral(self.flame_layer, shape).items()}

    def decode(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """params [B, P] -> `predict`'s outputs for them (landmarks2d in crop pixels)."""
        import tensorflow as tf

        from ringnet_tf.export import serving_outputs
        from ringnet_tf.model import decode

        theta = tf.constant(params, tf.float32)
        out = serving_outputs({"params": theta, **decode(self.flame_layer, theta)}, self.image_size)
        return {k: v.numpy() for k, v in out.items()}


class SavedModelPredictor(Predictor):
    """An exported SavedModel (`export.py`): predict and neutral through its signatures."""

    def __init__(self, path: Path):
        import tensorflow as tf

        self.source = str(path)
        self.sm = tf.saved_model.load(str(path))
        if not hasattr(self.sm, "serve") or not hasattr(self.sm, "neutral"):
            raise CheckpointError(f"{path}: a SavedModel without RingNet's serve/neutral endpoints")
        self.faces = self.sm.faces().numpy().astype(np.int64)
        self.image_size = int(self.sm.image_size().numpy())
        self.flame_layer = None

    def predict(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.sm.serve(np.asarray(crops, np.uint8)).items()}

    def neutral(self, shape: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.sm.neutral(np.asarray(shape, np.float32)).items()}


def load_predictor(path: str | os.PathLike, flame_model: str | None = None) -> Predictor:
    """A Predictor from a run directory, a compact checkpoint or a SavedModel (see module doc)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path}: a file; give a checkpoint folder (run directory, compact "
                              f"checkpoint or SavedModel)")
    if (path / "saved_model.pb").exists():
        try:
            return SavedModelPredictor(path)
        except CheckpointError:
            raise
        except Exception as e:  # TF raises a zoo of types for a damaged SavedModel
            raise CheckpointError(f"{path / 'saved_model.pb'}: not a usable SavedModel "
                                  f"({type(e).__name__}: {_one_line(e)})") from None
    import keras

    from flame.io import load_flame
    from ringnet_tf.model import ModelConfig, build_ringnet

    config = _read_config(path)
    flame = load_flame(flame_model)
    _check_fingerprint(path, config, flame)
    if (path / "ringnet.keras").exists():
        import zipfile

        file = path / "ringnet.keras"
        # Keras reports a damaged archive as "File not found"; check it is a whole zip first.
        if not zipfile.is_zipfile(file):
            raise CheckpointError(f"{file}: damaged or not a Keras archive (not a zip file)")
        try:
            net = keras.models.load_model(file)
        except Exception as e:
            raise CheckpointError(f"{file}: cannot load ({type(e).__name__}: {_one_line(e)})") from None
        return KerasPredictor(net, str(path), config)
    in_progress = not (path / COMPACT_WEIGHTS).exists() and (path / "checkpoints").is_dir()
    if not (path / COMPACT_WEIGHTS).exists() and not in_progress:
        raise CheckpointError(f"{path}: holds neither ringnet.keras nor {COMPACT_WEIGHTS}")
    try:
        model_config = ModelConfig(**{**config["model"], "backbone_weights": "none"})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: bad model config ({e})") from None
    net = build_ringnet(flame, model_config)
    if in_progress:
        # A run that has not finished (or was stopped): its newest training checkpoint.
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(str(path / "checkpoints"))
        if latest is None:
            raise CheckpointError(f"{path / 'checkpoints'}: no readable training checkpoint")
        try:
            tf.train.Checkpoint(net=net).restore(latest).expect_partial()
        except Exception as e:
            raise CheckpointError(f"{latest}: cannot restore ({type(e).__name__}: {_one_line(e)})") from None
        return KerasPredictor(net, latest, config)
    weights = stored_weights(net)
    file = path / COMPACT_WEIGHTS
    try:
        with np.load(file, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("a single array, not an .npz archive")
            if len(data.files) != len(weights):
                raise CheckpointError(f"{file}: {len(data.files)} weights, the network described "
                                      f"by its config has {len(weights)}")
            for i, w in enumerate(weights):
                value = data[f"w{i:04d}"]
                if value.shape != tuple(w.shape):
                    raise CheckpointError(f"{file}: weight {i} ({w.path}) has shape {value.shape}, "
                                          f"the network {tuple(w.shape)}")
                if not np.isfinite(value).all():
                    raise CheckpointError(f"{file}: weight {i} ({w.path}) holds NaN or infinity")
                w.assign(value.astype(w.dtype))
    except CheckpointError:
        raise
    except Exception as e:  # truncated zip (BadZipFile, EOFError), not a zip, missing keys...
        raise CheckpointError(f"{file}: damaged or not a weights archive "
                              f"({type(e).__name__}: {_one_line(e)})") from None
    return KerasPredictor(net, str(path), config)
