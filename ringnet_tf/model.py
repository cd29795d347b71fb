"""The RingNet network: ResNet-50 encoder -> iterative regressor -> FLAME -> weak-perspective camera.

Letters in shapes: B images, P parameters (159 with the paper's sizes), T regressor stages.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from flame.layer import FlameLayer
from flame.model import FlameModel
from ringnet_tf import camera
from ringnet_tf.params import ParamSpec

BACKBONES = ("resnet50", "tiny")
BACKBONE_WEIGHTS_HELP = "none (random init), imagenet (Keras' download; network needed), or a .weights.h5 path"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the network; written next to every checkpoint."""

    image_size: int = 224
    # "resnet50" (the paper's encoder) or "tiny" (a 3-layer CNN for tests and quick experiments).
    backbone: str = "resnet50"
    num_shape: int = 100
    num_expression: int = 50
    num_stages: int = 3  # iterative error feedback steps (HMR uses 3)
    hidden: int = 512
    dropout: float = 0.5
    backbone_weights: str = "none"
    # Initial ("mean") camera scale: normalised image units per metre. A head about 0.2 m tall
    # filling ~70% of a loosely cropped image: 2 * 0.7 / 0.2 = 7.
    init_cam_scale: float = 7.0

    @property
    def spec(self) -> ParamSpec:
        return ParamSpec(self.num_shape, self.num_expression)

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 (ResNet-50's minimum); got {self.image_size}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}; got {self.backbone!r}")
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be at least 1; got {self.num_stages}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        self.spec  # validates the parameter sizes  # noqa: B018

    def mean_params(self) -> np.ndarray:
        """[P] float32 starting estimate: zero pose, shape and expression; centred camera."""
        theta = np.zeros(self.spec.total, np.float32)
        theta[self.spec.slices()["cam"].start] = self.init_cam_scale
        return theta


@keras.saving.register_keras_serializable(package="ringnet_tf")
class IterativeRegressor(keras.layers.Layer):
    """HMR's iterative error feedback: theta_{t+1} = theta_t + f([feature; theta_t]), T times.

    f is FC(hidden) -> ReLU -> Dropout -> FC(hidden) -> ReLU -> Dropout -> FC(P), shared across
    stages; its last layer starts near zero (Xavier scaled by 0.01), so training starts from the
    mean parameters. Runs in float32 whatever the global policy: the estimate accumulates.

    Call: features [B, F] -> [B, T, P], every stage's estimate (the last is the prediction).
    """

    def __init__(self, mean_params: list[float] | np.ndarray, num_stages: int = 3, hidden: int = 512,
                 dropout: float = 0.5, **kwargs: Any):
        kwargs.pop("dtype", None)
        super().__init__(dtype="float32", **kwargs)
        self.mean_params_value = np.asarray(mean_params, np.float32)
        self.num_params = int(self.mean_params_value.shape[0])
        self.num_stages = int(num_stages)
        self.hidden = int(hidden)
        self.dropout_rate = float(dropout)
        self.fc1 = keras.layers.Dense(hidden, activation="relu", dtype="float32", name="fc1")
        self.drop1 = keras.layers.Dropout(dropout, name="drop1")
        self.fc2 = keras.layers.Dense(hidden, activation="relu", dtype="float32", name="fc2")
        self.drop2 = keras.layers.Dropout(dropout, name="drop2")
        small_xavier = keras.initializers.VarianceScaling(1e-4, mode="fan_avg", distribution="uniform")
        self.fc_out = keras.layers.Dense(self.num_params, kernel_initializer=small_xavier,
                                         dtype="float32", name="fc_out")

    def build(self, features_shape) -> None:
        feat = int(features_shape[-1])
        self.fc1.build((None, feat + self.num_params))
        self.fc2.build((None, self.hidden))
        self.fc_out.build((None, self.hidden))
        self.mean = self.add_weight(
            name="mean_params", shape=(self.num_params,), trainable=False,
            initializer=keras.initializers.Constant(self.mean_params_value))
        self.built = True

    def call(self, features, training=None):
        features = keras.ops.cast(features, "float32")
        theta = keras.ops.broadcast_to(self.mean, (keras.ops.shape(features)[0], self.num_params))
        stages = []
        for _ in range(self.num_stages):
            x = keras.ops.concatenate([features, theta], axis=-1)
            x = self.drop1(self.fc1(x), training=training)
            x = self.drop2(self.fc2(x), training=training)
            theta = theta + self.fc_out(x)
            stages.append(theta)
        return keras.ops.stack(stages, axis=1)

    def compute_output_shape(self, features_shape):
        return (features_shape[0], self.num_stages, self.num_params)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(mean_params=self.mean_params_value.tolist(), num_stages=self.num_stages,
                      hidden=self.hidden, dropout=self.dropout_rate)
        return config


@keras.saving.register_keras_serializable(package="ringnet_tf")
class WeakPerspective(keras.layers.Layer):
    """Projects points with `ringnet_tf.camera`: points [B, N, 3], cam [B, 3] -> [B, N, 2] normalised."""

    def __init__(self, **kwargs: Any):
        kwargs.pop("dtype", None)
        super().__init__(dtype="float32", **kwargs)

    def call(self, points, cam):
        return camera.project_normalised(points, cam)

    def compute_output_shape(self, points_shape, cam_shape):
        return (*points_shape[:-1], 2)


def _tiny_backbone(image_size: int) -> keras.Model:
    """Three strided conv blocks and global pooling, [B, H, W, 3] -> [B, 64]: compiles in seconds."""
    images = keras.Input((image_size, image_size, 3))
    x = images
    for width in (16, 32, 64):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    return keras.Model(images, keras.layers.GlobalAveragePooling2D()(x), name="backbone")


def build_backbone(image_size: int, weights: str = "none", name: str = "resnet50") -> keras.Model:
    """The encoder: ResNet-50 (v2: pre-activation, inputs in [-1, 1] as RingNet's are), globally
    average pooled, [B, H, W, 3] -> [B, 2048]; or the "tiny" test backbone.

    `weights`: "none", "imagenet" (Keras downloads them: only when asked, never in tests), or a
    path to a `.weights.h5` file of this backbone.
    """
    if name == "tiny":
        backbone = _tiny_backbone(image_size)
        if weights == "imagenet":
            raise ValueError("the tiny backbone has no ImageNet weights")
    else:
        backbone = keras.applications.ResNet50V2(
            include_top=False, weights="imagenet" if weights == "imagenet" else None,
            input_shape=(image_size, image_size, 3), pooling="avg", name="backbone")
    if weights not in ("none", "imagenet"):
        try:
            backbone.load_weights(weights)
        except (OSError, ValueError) as e:
            raise ValueError(f"{weights}: cannot load backbone weights ({e})") from None
    return backbone


def build_ringnet(flame: FlameModel | FlameLayer, config: ModelConfig = ModelConfig()) -> keras.Model:
    """The RingNet network as a Keras functional model.

    Input: images [B, H, W, 3] float, values in [-1, 1] (see the shared preprocessing).
    Outputs (dict): params [B, P] (final estimate), params_stages [B, T, P], cam [B, 3], pose [B, 6],
      shape [B, S], expression [B, E], vertices [B, V, 3], landmarks3d [B, 68, 3],
      landmarks2d [B, 68, 2] (normalised image coordinates, y up), now_landmarks [B, 7, 3].
    """
    spec = config.spec
    if isinstance(flame, FlameModel):
        flame = FlameLayer(flame, spec.num_shape, spec.num_expression, name="flame")
    if (flame.num_shape, flame.num_expression) != (spec.num_shape, spec.num_expression):
        raise ValueError(f"FLAME layer has {flame.num_shape} / {flame.num_expression} components; "
                         f"config asks for {spec.num_shape} / {spec.num_expression}")
    images = keras.Input((config.image_size, config.image_size, 3), name="images")
    features = build_backbone(config.image_size, config.backbone_weights, config.backbone)(images)
    regressor = IterativeRegressor(config.mean_params(), config.num_stages, config.hidden,
                                   config.dropout, name="regressor")
    stages = regressor(features)
    theta = stages[:, -1]
    parts = {name: theta[:, s] for name, s in spec.slices().items()}
    decoded = flame(parts["shape"], parts["expression"], parts["pose"])
    landmarks2d = WeakPerspective(name="project")(decoded["landmarks"], parts["cam"])
    outputs = {
        "params": theta, "params_stages": stages, **parts,
        "vertices": decoded["vertices"], "landmarks3d": decoded["landmarks"],
        "landmarks2d": landmarks2d, "now_landmarks": decoded["now_landmarks"],
    }
    return keras.Model(images, outputs, name="ringnet")
