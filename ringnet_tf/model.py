"""The RingNet network: ResNet-50 encoder -> iterative regressor -> FLAME -> weak-perspective camera.

Letters in shapes: B images, P parameters (159 with the paper's sizes), T regressor stages.

Two config fields exist for networks converted from RingNet's released TF 1 checkpoint
(`ringnet_tf.convert_original`); both default to this project's own choices, so configs written
before they existed load unchanged:
- `pool1`: "keras" (keras.applications' ResNet50V2: ZeroPadding2D(1), then a 3x3 / 2 VALID max
  pool) or "slim" (TF-slim's resnet_v2_50: a 3x3 / 2 SAME max pool, no padding layer). The two
  differ only there and hold the same weights in the same order.
- `output_convention`: "ours" or "ringnet". With "ringnet" the regressor estimates parameters in
  RingNet's (HMR's) convention and `RingNetConvention` maps every stage's estimate to ours, exactly
  (see its docstring): outputs are then in this project's convention like any other network's.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from flame import constants as C
from flame.layer import FlameLayer
from flame.model import FlameModel
from ringnet_tf import camera
from ringnet_tf.params import ParamSpec

BACKBONES = ("resnet50", "tiny")
POOL1_KINDS = ("keras", "slim")
OUTPUT_CONVENTIONS = ("ours", "ringnet")
POSE_HEADS = ("regress", "landmarks")


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
    # ResNet-50's first max pool: "keras" or "slim" (see the module docstring).
    pool1: str = "keras"
    # "ours" or "ringnet": the regressor's own convention (see the module docstring).
    output_convention: str = "ours"
    # "regress" (RingNet: the regressor's global rotation and camera) or "landmarks" (the pose
    # guidance network: 68 predicted 3D landmarks, the pose solved from them; `LandmarkPose`).
    pose_head: str = "regress"

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
        if self.pool1 not in POOL1_KINDS:
            raise ValueError(f"pool1 must be one of {', '.join(POOL1_KINDS)}; got {self.pool1!r}")
        if self.pool1 != "keras" and self.backbone != "resnet50":
            raise ValueError(f"pool1 {self.pool1!r} applies to the resnet50 backbone only; "
                             f"got backbone {self.backbone!r}")
        if self.output_convention not in OUTPUT_CONVENTIONS:
            raise ValueError(f"output_convention must be one of {', '.join(OUTPUT_CONVENTIONS)}; "
                             f"got {self.output_convention!r}")
        if self.pose_head not in POSE_HEADS:
            raise ValueError(f"pose_head must be one of {', '.join(POSE_HEADS)}; got {self.pose_head!r}")
        if self.pose_head == "landmarks" and self.output_convention != "ours":
            raise ValueError("pose_head 'landmarks' needs output_convention 'ours'")
        self.spec  # validates the parameter sizes  # noqa: B018

    def mean_params(self) -> np.ndarray:
        """[P] float32 starting estimate: zero pose, shape and expression; centred camera.

        In the "ringnet" convention the upright head has the global rotation pi about x (HMR's
        start), so that is the starting pose there. A converted checkpoint stores its own mean.
        """
        theta = np.zeros(self.spec.total, np.float32)
        slices = self.spec.slices()
        theta[slices["cam"].start] = self.init_cam_scale
        if self.output_convention == "ringnet":
            theta[slices["pose"].start] = np.pi
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


@keras.saving.register_keras_serializable(package="ringnet_tf")
class LandmarkPose(keras.layers.Layer):
    """The pose guidance head: 68 3D landmarks from the features, and the pose solved from them.

    Predicts Y [B, 68, 3], the landmarks in the camera's normalised frame (`camera.to_camera_frame`:
    x, y as projected, z the depth on the same scale), by one dense layer from [features; theta]
    whose bias starts at the mean face's landmarks seen by the mean camera (and whose kernel starts
    small), so training starts from the mean estimate, like the regressor.

    The pose: the weighted similarity (`ringnet_tf.procrustes`) from FLAME's landmarks at zero
    global rotation X (shape, expression and jaw applied) to Y, over the 51 static landmarks only:
    the 17 contour landmarks slide over the face with the head's yaw, so at zero rotation they are
    not the points Y shows. With Y = s R X + t and FLAME's global rotation about its root joint J0,
    the global rotation is R and the weak-perspective camera is (s, t_x / s + (R J0 - J0)_x,
    t_y / s + (R J0 - J0)_y). No weights besides the dense layer.

    Call: features [B, F], theta [B, P], rest_landmarks [B, 68, 3], root [B, 3]
      -> (landmarks [B, 68, 3], rotation [B, 3] axis-angle, cam [B, 3]).
    """

    def __init__(self, mean_landmarks: list | np.ndarray, **kwargs: Any):
        kwargs.pop("dtype", None)
        super().__init__(dtype="float32", **kwargs)
        self.mean_landmarks_value = np.asarray(mean_landmarks, np.float32).reshape(68 * 3)
        self.fc = keras.layers.Dense(
            68 * 3, dtype="float32", name="fc_landmarks",
            kernel_initializer=keras.initializers.VarianceScaling(1e-4, mode="fan_avg", distribution="uniform"),
            bias_initializer=keras.initializers.Constant(self.mean_landmarks_value))
        weights = np.zeros(68, np.float32)
        weights[17:] = 1.0  # static landmarks only (see the docstring)
        self.solve_weights = weights

    def build(self, features_shape, theta_shape=None, rest_landmarks_shape=None, root_shape=None) -> None:
        self.fc.build((None, int(features_shape[-1]) + int(theta_shape[-1])))
        self.built = True

    def call(self, features, theta, rest_landmarks, root):
        from ringnet_tf import procrustes

        x = keras.ops.concatenate([keras.ops.cast(features, "float32"), theta], axis=-1)
        y = keras.ops.reshape(self.fc(x), (-1, 68, 3))
        w = tf.broadcast_to(tf.constant(self.solve_weights), tf.shape(y)[:2])
        scale, rot, trans = procrustes.similarity(rest_landmarks, y, w)
        moved = tf.einsum("bij,bj->bi", rot, root) - root  # R J0 - J0
        safe = tf.where(tf.abs(scale) < 1e-6, tf.fill(tf.shape(scale), 1e-6), scale)
        cam = tf.stack([scale, trans[:, 0] / safe + moved[:, 0], trans[:, 1] / safe + moved[:, 1]], axis=-1)
        rotation = procrustes.rotation_to_axis_angle(rot)
        # Static shapes for what follows (the solve's gathers lose them; the camera's slicing needs them).
        return y, tf.ensure_shape(rotation, [None, 3]), tf.ensure_shape(cam, [None, 3])

    def compute_output_shape(self, features_shape, theta_shape, rest_landmarks_shape, root_shape):
        b = features_shape[0]
        return (b, 68, 3), (b, 3), (b, 3)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(mean_landmarks=self.mean_landmarks_value.tolist())
        return config


# RingNet's pixels: u = (x_n + 1) * S / 2 (HMR's keypoint normalisation); ours subtract half a pixel.
RINGNET_PIXEL_OFFSET = 0.5
# Below this |sin(angle / 2)| the axis-angle of a rotation uses its series (exact to float32 there).
_SMALL_HALF_SINE = 1e-4


def ringnet_to_ours(theta, root_y, image_size: float, xp=keras.ops):
    """RingNet's (HMR's) parameters to this project's, exactly: the same mesh, the same pixels.

    RingNet's meshes are FLAME turned upside down (its global rotation includes pi about x) and
    projected with y down and the pixel convention u = (x_n + 1) S / 2. With F = diag(1, -1, -1)
    (a half turn about x) and J0 FLAME's root joint (FLAME rotates about J0, not the origin):
      - global rotation: R_ours = F R_ring, so every vertex V_ours = F (V_ring - J0) + J0;
      - camera scale s unchanged; tx_ours = tx + h; ty_ours = -ty - 2 J0_y - h, where h = 1 / (S s)
        is half a pixel in metres (pixel centres at whole numbers in both conventions);
      - jaw, shape and expression unchanged.
    Then `camera.project(V_ours, cam_ours, S)` equals RingNet's projection of V_ring, pixel for pixel.
    The rotation is composed with quaternions (q_F = (0, 1, 0, 0)), so it stays exact near pi.

    Args:
      theta: [..., P] RingNet's parameters (cam 3, pose 6, shape, expression).
      root_y: [...] y of FLAME's rest-pose root joint for each estimate's shape and expression.
      image_size: the network's input side S.
      xp: the array namespace: keras.ops (default; tensors) or numpy.
    Returns:
      [..., P] in this project's convention (same array type).
    """
    s, tx, ty = theta[..., 0], theta[..., 1], theta[..., 2]
    r = theta[..., 3:6]
    # Half a pixel, in metres; a vanishing scale is kept finite (its sign kept).
    tiny = 1e-8
    safe_s = xp.where(xp.abs(s) < tiny, xp.where(s < 0, -tiny, tiny), s)
    half = RINGNET_PIXEL_OFFSET * 2.0 / (image_size * safe_s)
    # Axis-angle -> unit quaternion (w, x, y, z); sin(a/2)/a by its series near zero.
    angle_sq = xp.sum(r * r, axis=-1)
    angle = xp.sqrt(xp.maximum(angle_sq, 1e-30))
    small = angle_sq < 1e-8
    k = xp.where(small, 0.5 - angle_sq / 48.0, xp.sin(0.5 * angle) / angle)
    qw, qx, qy, qz = xp.cos(0.5 * angle), k * r[..., 0], k * r[..., 1], k * r[..., 2]
    # q_F * q with q_F = (0, 1, 0, 0): (w, x, y, z) -> (-x, w, -z, y); then w >= 0 (same rotation).
    sign = xp.where(qx > 0, -1.0, 1.0)
    w, v = -qx * sign, xp.stack([qw * sign, -qz * sign, qy * sign], axis=-1)
    half_sine = xp.sqrt(xp.sum(v * v, axis=-1))
    safe = xp.maximum(half_sine, _SMALL_HALF_SINE)
    # angle / sin(angle / 2) = 2 atan2(n, w) / n, and its limit 2 / w (1 - n^2 / (3 w^2)) near zero.
    # (w is ~1 wherever the series is used; the clamp keeps the unused branch finite elsewhere.)
    w_near_one = xp.maximum(w, 0.5)
    factor = xp.where(half_sine < _SMALL_HALF_SINE,
                      2.0 / w_near_one * (1.0 - half_sine * half_sine / (3.0 * w_near_one * w_near_one)),
                      2.0 * xp.arctan2(safe, w) / safe)
    rot = v * factor[..., None]
    cam = xp.stack([s, tx + half, -ty - 2.0 * root_y - half], axis=-1)
    return xp.concatenate([cam, rot, theta[..., 6:]], axis=-1)


@keras.saving.register_keras_serializable(package="ringnet_tf")
class RingNetConvention(keras.layers.Layer):
    """`ringnet_to_ours` as a layer, float32: theta [N, P], root_y [N] -> [N, P] (no weights)."""

    def __init__(self, image_size: int, **kwargs: Any):
        kwargs.pop("dtype", None)
        super().__init__(dtype="float32", **kwargs)
        self.image_size = int(image_size)

    def call(self, theta, root_y):
        theta = keras.ops.cast(theta, "float32")
        return ringnet_to_ours(theta, keras.ops.cast(root_y, "float32"), float(self.image_size))

    def compute_output_shape(self, theta_shape, root_y_shape):
        return theta_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(image_size=self.image_size)
        return config


def _tiny_backbone(image_size: int) -> keras.Model:
    """Three strided conv blocks and global pooling, [B, H, W, 3] -> [B, 64]: compiles in seconds."""
    images = keras.Input((image_size, image_size, 3))
    x = images
    for block, width in enumerate((16, 32, 64), start=1):  # named as ResNet's stages, for prefixes
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name=f"conv{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"conv{block}_bn")(x)
        x = keras.layers.ReLU(name=f"conv{block}_relu")(x)
    return keras.Model(images, keras.layers.GlobalAveragePooling2D()(x), name="backbone")


def _with_slim_pool1(backbone: keras.Model) -> keras.Model:
    """keras.applications' ResNet50V2 with TF-slim's pool1: the padding layer becomes an identity
    and the VALID 3x3 / 2 max pool a SAME one. Every other layer is cloned with its config (and
    the weights copied), so names, weight order and shapes stay those of the Keras model.

    Why: Keras pads with zeros before its VALID pool, and since conv1 has no activation before
    the pool, a zero can be the maximum; slim's SAME pool pads nothing that can win, and (at even
    sizes) lays its windows one pixel later. Features of the two differ by up to ~6% of their range.
    """
    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name == "pool1_pad":
            return keras.layers.Identity(name="pool1_nopad")
        if layer.name == "pool1_pool":
            return keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool",
                                             dtype=layer.dtype_policy)
        return layer.__class__.from_config(layer.get_config())

    for name in ("pool1_pad", "pool1_pool"):
        backbone.get_layer(name)  # raises ValueError if keras.applications renamed them
    slim = keras.models.clone_model(backbone, clone_function=clone)
    slim.set_weights(backbone.get_weights())
    return slim


def build_backbone(image_size: int, weights: str = "none", name: str = "resnet50",
                   pool1: str = "keras") -> keras.Model:
    """The encoder: ResNet-50 (v2: pre-activation, inputs in [-1, 1] as RingNet's are), globally
    average pooled, [B, H, W, 3] -> [B, 2048]; or the "tiny" test backbone.

    `weights`: "none", "imagenet" (Keras downloads them: only when asked, never in tests), or a
    path to a `.weights.h5` file of this backbone. `pool1`: "keras" or "slim" (module docstring).
    """
    if pool1 not in POOL1_KINDS:
        raise ValueError(f"pool1 must be one of {', '.join(POOL1_KINDS)}; got {pool1!r}")
    if name == "tiny":
        backbone = _tiny_backbone(image_size)
        if weights == "imagenet":
            raise ValueError("the tiny backbone has no ImageNet weights")
    else:
        backbone = keras.applications.ResNet50V2(
            include_top=False, weights="imagenet" if weights == "imagenet" else None,
            input_shape=(image_size, image_size, 3), pooling="avg", name="backbone")
        if pool1 == "slim":
            backbone = _with_slim_pool1(backbone)
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
    features = build_backbone(config.image_size, config.backbone_weights, config.backbone,
                              config.pool1)(images)
    outputs = _head_outputs(features, flame, config, lambda name, make: make())
    return keras.Model(images, outputs, name="ringnet")


def head_model(net: keras.Model, config: ModelConfig, feature_mean: np.ndarray | None = None,
               feature_std: np.ndarray | None = None) -> keras.Model:
    """The network after its backbone, sharing its layers (and so its weights) with `net`:
    features [B, F] -> the same outputs as `net`. For training the regressor on features computed
    once (`ringnet_tf.train_head`).

    With feature_mean and feature_std [F], the regressor sees standardised features
    (x - mean) / std instead (the pose guidance head, if any, still the raw ones): the same
    function only once its first layer is rescaled to match (`train_head.fold_standardisation`).
    """
    features = keras.Input(tuple(net.get_layer("backbone").output.shape[1:]), name="features")
    flame = net.get_layer("flame")
    standardised = None
    if feature_mean is not None:
        standardised = keras.layers.Normalization(mean=feature_mean, variance=np.square(feature_std),
                                                  name="standardise")(features)
    return keras.Model(features, _head_outputs(features, flame, config, lambda name, make: net.get_layer(name),
                                               regressor_features=standardised), name="ringnet_head")


def _head_outputs(features, flame: FlameLayer, config: ModelConfig,
                  layer: Callable[[str, Callable[[], keras.layers.Layer]], keras.layers.Layer],
                  regressor_features=None) -> dict:
    """The graph after the backbone. layer(name, make) gives the layer called `name`: a new one
    (make()) when building a network, the existing one when reusing a network's layers;
    regressor_features (default: features) is what the regressor reads."""
    spec = config.spec
    regressor = layer("regressor", lambda: IterativeRegressor(
        config.mean_params(), config.num_stages, config.hidden, config.dropout, name="regressor"))
    stages = regressor(features if regressor_features is None else regressor_features)
    if config.output_convention == "ringnet":
        # Every stage's estimate needs the root joint of its own shape and expression: one FLAME
        # pass over all B * T estimates (zero pose; only its joints are used).
        flat = keras.ops.reshape(stages, (-1, spec.total))
        ring = {name: flat[:, s] for name, s in spec.slices().items()}
        rest = flame(ring["shape"], ring["expression"], keras.ops.zeros_like(ring["pose"]))
        flat = layer("ringnet_convention", lambda: RingNetConvention(config.image_size, name="ringnet_convention"))(
            flat, rest["joints"][:, 0, 1])
        stages = keras.ops.reshape(flat, (-1, config.num_stages, spec.total))
    theta = stages[:, -1]
    parts = {name: theta[:, s] for name, s in spec.slices().items()}
    extra = {}
    if config.pose_head == "landmarks":
        # The regressor's shape, expression and jaw; global rotation and camera from the 3D
        # landmarks the head predicts (LandmarkPose).
        jaw = parts["pose"][:, 3:]
        rest = flame(parts["shape"], parts["expression"], keras.ops.concatenate(
            [keras.ops.zeros_like(jaw), jaw], axis=-1))
        head = layer("pose_head", lambda: LandmarkPose(_mean_camera_landmarks(flame, config), name="pose_head"))
        landmarks_cam, rotation, cam = head(features, theta, rest["landmarks"], rest["joints"][:, 0])
        parts = {**parts, "cam": cam, "pose": keras.ops.concatenate([rotation, jaw], axis=-1)}
        theta = keras.ops.concatenate([parts[name] for name in spec.slices()], axis=-1)
        extra = {"landmarks_camera": landmarks_cam}
    project = layer("project", lambda: WeakPerspective(name="project"))
    return {"params": theta, "params_stages": stages, **decode(flame, parts, project=project), **extra}


def decode(flame: FlameLayer, params: Any, project: Callable = camera.project_normalised) -> dict[str, Any]:
    """Parameters -> the network's outputs: the one decoding (the network, serving, refinement,
    benchmarks), through FLAME and the weak-perspective camera.

    Args:
      flame: the head model's layer.
      params: [B, P] estimates (tensor or float32 array), or their parts {"cam": [B, 3],
        "pose": [B, 6], "shape": [B, S], "expression": [B, E]} (Keras tensors too).
      project: (points, cam) -> normalised image points; in a functional model a layer
        (`WeakPerspective`), since plain ops cannot take symbolic tensors.
    Returns (same tensor kind as the parts):
      cam, pose, shape, expression (the parts); vertices [B, V, 3]; landmarks3d [B, 68, 3];
      landmarks2d [B, 68, 2] normalised image coordinates (y up); now_landmarks [B, 7, 3].
    """
    spec = ParamSpec(flame.num_shape, flame.num_expression)
    parts = params if isinstance(params, Mapping) else spec.split(params)
    out = flame(parts["shape"], parts["expression"], parts["pose"])
    return {**{name: parts[name] for name in spec.sizes},
            "vertices": out["vertices"], "landmarks3d": out["landmarks"],
            "landmarks2d": project(out["landmarks"], parts["cam"]), "now_landmarks": out["now_landmarks"]}


def neutral(flame: FlameLayer, shape: Any) -> dict[str, tf.Tensor]:
    """FLAME(shape, 0, 0), the neutral mesh NoW evaluates: shape [B, S] float32 ->
    vertices [B, V, 3], now_landmarks [B, 7, 3]. Any batch size, also inside a traced function."""
    shape = tf.cast(shape, tf.float32)
    batch = tf.shape(shape)[0]
    out = flame(shape, tf.zeros([batch, flame.num_expression]), tf.zeros([batch, C.RINGNET_POSE_DIM]))
    return {"vertices": out["vertices"], "now_landmarks": out["now_landmarks"]}


def _mean_camera_landmarks(flame: FlameLayer, config: ModelConfig) -> np.ndarray:
    """[68, 3] the mean face's landmarks (all parameters zero) seen by the mean camera, normalised."""
    spec = config.spec
    zeros = [np.zeros((1, n), np.float32) for n in (spec.num_shape, spec.num_expression, C.RINGNET_POSE_DIM)]
    lms = keras.ops.convert_to_numpy(flame(*zeros)["landmarks"])[0]
    cam = config.mean_params()[spec.slices()["cam"]]
    return camera.to_camera_frame(lms.astype(np.float32), cam.astype(np.float32))
