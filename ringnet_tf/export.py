"""SavedModel export of a trained RingNet network, with serving signatures.

Signatures (any batch size; images already cropped around the face as the shared preprocessing
does, any height and width: they are resized to the network's input size):
  serving_default / serve: images [B, H, W, 3] uint8 RGB
  serve_float:             images [B, H, W, 3] float32 in [-1, 1]
Both return: params [B, P], cam [B, 3], pose [B, 6], shape [B, S], expression [B, E],
  flame_pose [B, 15], vertices [B, V, 3], landmarks3d [B, 68, 3], now_landmarks [B, 7, 3],
  landmarks2d [B, 68, 2] in pixels of the given images (x right, y down).
And `faces`: no input -> [F, 3] int32 triangles; `image_size`: no input -> the network's input side;
`neutral`: shape [B, S] -> vertices [B, V, 3] and now_landmarks [B, 7, 3] of FLAME(shape, 0, 0)
(the neutral mesh NoW evaluates).

A SavedModel exported from a network built with a real FLAME holds FLAME's arrays: FLAME's
licence forbids redistributing it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from flame import lbs
from flame.fileutil import staged_dir
from flame.layer import FlameLayer
from ringnet_tf import camera, model, preprocess

OUTPUT_KEYS = ("params", "cam", "pose", "shape", "expression", "vertices", "landmarks3d",
               "now_landmarks")


def flame_layer_of(net: keras.Model) -> FlameLayer:
    """The network's one FlameLayer; ValueError if it has none or several."""
    layers = [layer for layer in net.layers if isinstance(layer, FlameLayer)]
    if len(layers) != 1:
        raise ValueError(f"expected one FlameLayer in the network, found {len(layers)}")
    return layers[0]


def serving_outputs(out: Mapping[str, Any], image_size: int, image_wh: Any = None) -> dict[str, Any]:
    """The network's outputs (or `model.decode`'s, with params) as the signatures return them:
    OUTPUT_KEYS, flame_pose [B, 15], and landmarks2d [B, 68, 2] in pixels (x right, y down) of the
    network's input, or of an image of `image_wh` ([2] width, height) it was resized from."""
    result = {k: out[k] for k in OUTPUT_KEYS}
    result["flame_pose"] = lbs.full_pose(out["pose"])
    pixels = camera.normalised_to_pixels(out["landmarks2d"], image_size)
    if image_wh is not None:
        pixels = preprocess.resize_points(pixels, image_size, image_wh)
    result["landmarks2d"] = pixels
    return result


def serve(net: keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
    """images: [B, H, W, 3] float32 in [-1, 1] -> the documented outputs (module docstring)."""
    size = net.input_shape[1]
    out = net(preprocess.resize_to_input(images, size), training=False)
    wh = tf.cast(tf.stack([tf.shape(images)[2], tf.shape(images)[1]]), tf.float32)
    return serving_outputs(out, size, wh)


def export_saved_model(net: keras.Model, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Writes the SavedModel, whole or not at all (see `flame.fileutil.staged_dir`); refuses an
    existing, non-empty folder unless `force`, which replaces it once the new one is complete."""
    with staged_dir(out_dir, force) as staging:
        _write_archive(net, staging)
    return Path(out_dir)


def _write_archive(net: keras.Model, out: Path) -> None:
    flame = flame_layer_of(net)
    faces = flame.faces
    archive = keras.export.ExportArchive()
    archive.track(net)
    float_images = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
    # Both image signatures call this one function: the network is traced once, not per signature.
    serve_float = tf.function(lambda images: serve(net, images), input_signature=[float_images])
    # "serve" first: the first endpoint is also serving_default.
    archive.add_endpoint(
        "serve", lambda images: serve_float(preprocess.normalise(images)),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    archive.add_endpoint("serve_float", serve_float, input_signature=[float_images])
    archive.add_endpoint("faces", lambda: tf.identity(faces), input_signature=[])
    archive.add_endpoint("image_size", lambda: tf.constant(net.input_shape[1], tf.int32), input_signature=[])
    archive.add_endpoint(
        "neutral", lambda shape: model.neutral(flame, shape),
        input_signature=[tf.TensorSpec([None, flame.num_shape], tf.float32, name="shape")])
    archive.write_out(str(out), verbose=False)
