"""A stand-in of RingNet's released checkpoint (`ring_6_68641`), for tests and benchmarks.

The release itself is not redistributable here and needs a registration-free but manual download;
its layout is known (see /work/shared/ringnet-facts.md and `ringnet_tf.convert.original`). This
module rebuilds that layout with plain `tf.compat.v1` graph ops, random weights:
- the input placeholder `input_images` [batch, S, S, 3];
- TF-slim's `resnet_v2_50` (variables `resnet_v2_50/conv1/{weights,biases}`,
  `resnet_v2_50/block{1..4}/unit_{u}/bottleneck_v2/{preact,shortcut,conv1,conv2,conv3}/...`,
  `resnet_v2_50/postnorm/...`), fused batch norm in inference mode, pool1 a 3x3 / 2 SAME max pool;
- HMR's regressor: `mean_param` [1, 159] tiled, T stages of theta += 3D_module(concat(feature,
  theta)), `3D_module/fc{1,2,3}/{weights,biases}` shared across stages (ReLU after fc1 and fc2);
- optionally FLAME, HMR-style: its arrays as non-trainable variables (`v_template` [V, 3],
  `shapedirs` [400, 3V], `posedirs` [36, 3V], `J_regressor` [V, 5], `lbs_weights` [V, 5]) and a
  plain linear-blend-skinning forward pass under the name scope `Flamenetnormal` after every stage
  (so the last stage's vertices are in `Flamenetnormal_2/...`, as RingNet's `Flamenetnormal_2/Add_9`).
  Its vertices are RingNet's convention: FLAME posed by the regressed global rotation, which starts
  at pi about x (upside down, to project upright with y down);
- a few optimizer variables (`.../Adam`, `.../Adam_1`, `beta1_power`, `beta2_power`, `global_step`)
  that a training checkpoint carries.
Saved with `tf.compat.v1.train.Saver` (`.meta`, `.index`, `.data-00000-of-00001`).

The FLAME forward pass here is written independently of `flame.lbs` (4x4 transforms along the
kinematic tree, blended per vertex), so a converted network matching it checks both.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from flame import constants as C
from flame.model import FlameModel

# slim resnet_v2_50: (base depth, units) per block; the last unit of blocks 1-3 has stride 2.
RESNET_BLOCKS: tuple[tuple[int, int], ...] = ((64, 3), (128, 4), (256, 6), (512, 3))
NUM_PARAMS = 159  # cam 3, pose 6, shape 100, expression 50
NUM_SHAPE, NUM_EXPRESSION = 100, 50
SLOT_SUFFIXES = ("Adam", "Adam_1")


@dataclasses.dataclass(frozen=True)
class StandIn:
    """A saved stand-in: its checkpoint prefix and the names of its tensors."""

    prefix: Path
    image_size: int
    batch: int
    input: str  # e.g. "input_images:0"
    params: str  # the last stage's theta, e.g. "add_2:0"
    vertices: str | None  # the last FLAME call's vertices, or None without FLAME
    stage_params: tuple[str, ...]

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["prefix"] = str(self.prefix)
        return json.dumps(d, indent=2)


def build_standin(prefix: str | Path, flame: FlameModel | None, *, image_size: int = 64,
                  hidden: int = 32, num_stages: int = 3, batch: int = 1,
                  bn_epsilon: float = 1.001e-5, pool1: str = "slim", seed: int = 0,
                  optimizer_slots: bool = True) -> StandIn:
    """Builds, initialises (random) and saves a stand-in graph and checkpoint at `prefix`.

    Args:
      prefix: checkpoint prefix, e.g. DIR/ring_6_68641 (DIR is created).
      flame: the head model whose arrays the graph's FLAME uses; None leaves FLAME out (a
        "stripped" graph: parameters only).
      image_size: input side S; hidden: the regressor's width (RingNet: 512).
      bn_epsilon: written into the batch-norm ops (TF clamps it to at least 1.001e-5).
      pool1: "slim" (3x3 / 2 SAME, as TF-slim) or "keras" (zero padding 1, then VALID, as
        keras.applications: a graph the converter must *not* match, for tests).
    Returns:
      The StandIn (also written next to the checkpoint as `<prefix>.standin.json`).
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {}
    graph = tf.Graph()

    def variable(name: str, value: np.ndarray, trainable: bool = True):
        # Ref variables (VariableV2 + Identity "read"), as TF 1.12 wrote them; zero initialisers
        # keep the weights out of the .meta, the values are fed to the initialisers.
        value = np.asarray(value)
        var = v1.get_variable(name, shape=value.shape, dtype=tf.as_dtype(value.dtype),
                              initializer=v1.zeros_initializer(), trainable=trainable,
                              use_resource=False)
        values[var.op.name] = value
        return var

    def conv_weights(k: int, cin: int, cout: int, gain: float = 1.0) -> np.ndarray:
        return (gain * rng.normal(size=(k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)

    def batch_norm(x, depth: int, relu: bool = True):
        gamma = variable("gamma", rng.uniform(0.6, 1.0, depth).astype(np.float32))
        beta = variable("beta", rng.normal(0.0, 0.1, depth).astype(np.float32))
        mean = variable("moving_mean", rng.normal(0.0, 0.1, depth).astype(np.float32), False)
        var = variable("moving_variance", rng.uniform(0.5, 1.5, depth).astype(np.float32), False)
        y, _, _ = v1.nn.fused_batch_norm(x, gamma, beta, mean, var, epsilon=bn_epsilon,
                                         is_training=False, name="FusedBatchNorm")
        return tf.nn.relu(y, name="Relu") if relu else y

    def conv(x, k: int, depth: int, stride: int = 1, bias: bool = False, same: bool = True,
             gain: float = 1.0):
        cin = int(x.shape[-1])
        if stride > 1:  # slim's conv2d_same: explicit symmetric padding, then VALID
            total = k - 1
            x = tf.pad(x, [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2], [0, 0]])
            padding = "VALID"
        else:
            padding = "SAME" if same else "VALID"
        w = variable("weights", conv_weights(k, cin, depth, gain))
        y = tf.nn.conv2d(x, w, strides=[1, stride, stride, 1], padding=padding, name="Conv2D")
        if bias:
            y = tf.nn.bias_add(y, variable("biases", rng.normal(0.0, 0.05, depth).astype(np.float32)),
                               name="BiasAdd")
        return y

    def bottleneck(x, base: int, stride: int):
        depth, depth_in = 4 * base, int(x.shape[-1])
        with v1.variable_scope("bottleneck_v2"):
            with v1.variable_scope("preact"):
                preact = batch_norm(x, depth_in)
            if depth == depth_in:
                shortcut = x if stride == 1 else tf.nn.max_pool2d(x, 1, stride, "VALID", name="shortcut")
            else:
                with v1.variable_scope("shortcut"):
                    shortcut = conv(preact, 1, depth, stride, bias=True)
            with v1.variable_scope("conv1"):
                r = conv(preact, 1, base)
                with v1.variable_scope("BatchNorm"):
                    r = batch_norm(r, base)
            with v1.variable_scope("conv2"):
                r = conv(r, 3, base, stride)
                with v1.variable_scope("BatchNorm"):
                    r = batch_norm(r, base)
            with v1.variable_scope("conv3"):
                r = conv(r, 1, depth, bias=True, gain=0.5)
            return tf.add(shortcut, r, name="add")

    with graph.as_default():
        images = v1.placeholder(tf.float32, [batch, image_size, image_size, 3], name="input_images")
        with v1.variable_scope("resnet_v2_50"):
            with v1.variable_scope("conv1"):
                x = conv(images, 7, 64, stride=2, bias=True)
            if pool1 == "slim":
                x = tf.nn.max_pool2d(x, 3, 2, "SAME", name="pool1/MaxPool")
            elif pool1 == "keras":
                x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
                x = tf.nn.max_pool2d(x, 3, 2, "VALID", name="pool1/MaxPool")
            else:
                raise ValueError(f"pool1 must be slim or keras; got {pool1!r}")
            for b, (base, units) in enumerate(RESNET_BLOCKS, 1):
                with v1.variable_scope(f"block{b}"):
                    for u in range(1, units + 1):
                        stride = 2 if (u == units and b < len(RESNET_BLOCKS)) else 1
                        with v1.variable_scope(f"unit_{u}"):
                            x = bottleneck(x, base, stride)
            with v1.variable_scope("postnorm"):
                x = batch_norm(x, int(x.shape[-1]))
            x = tf.reduce_mean(x, [1, 2], keepdims=True, name="pool5")
        features = tf.squeeze(x, [1, 2], name="Encoder_resnet/Squeeze")

        mean = np.zeros((1, NUM_PARAMS), np.float32)
        mean[0, :3] = (8.0, 0.02, -0.03)  # RingNet-like camera: scale ~8 / m, near-centred
        mean[0, 3:6] = (np.pi, 0.0, 0.0)  # HMR's upside-down start
        mean_var = variable("mean_param", mean)
        theta = tf.tile(mean_var, [batch, 1], name="Tile")
        feat_dim = int(features.shape[-1])
        # fc3 rows scaled per output group: small camera and rotation updates, larger shape ones.
        out_scale = np.concatenate([[0.3, 0.003, 0.003], [0.05] * 6, [0.3] * 100, [0.3] * 50])
        fc_values = {
            "fc1": (rng.normal(size=(feat_dim + NUM_PARAMS, hidden)) / np.sqrt(feat_dim + NUM_PARAMS),
                    rng.normal(0.0, 0.1, hidden)),
            "fc2": (rng.normal(size=(hidden, hidden)) / np.sqrt(hidden), rng.normal(0.0, 0.1, hidden)),
            "fc3": (rng.normal(size=(hidden, NUM_PARAMS)) / np.sqrt(hidden) * out_scale,
                    rng.normal(size=NUM_PARAMS) * out_scale * 0.3),
        }
        flame_vars = _flame_variables(variable, flame) if flame is not None else None
        stage_thetas, vertices = [], None
        for stage in range(num_stages):
            state = tf.concat([features, theta], 1)
            with v1.variable_scope("3D_module", reuse=stage > 0):
                net = state
                for name in ("fc1", "fc2", "fc3"):
                    with v1.variable_scope(name):
                        w_value, b_value = fc_values[name]
                        w = variable("weights", w_value.astype(np.float32))
                        bias = variable("biases", b_value.astype(np.float32))
                        net = tf.nn.bias_add(tf.matmul(net, w), bias, name="BiasAdd")
                        if name != "fc3":
                            net = tf.nn.relu(net, name="Relu")
            theta = theta + net  # "add", "add_1", ...: RingNet fetches the last one
            stage_thetas.append(theta)
            if flame_vars is not None:
                vertices = _flame_forward(flame_vars, theta)
        if optimizer_slots:
            for name in [n for n in values if n.startswith("3D_module/")] + ["mean_param"]:
                for suffix in SLOT_SUFFIXES:
                    variable(f"{name}/{suffix}", np.zeros_like(values[name]), trainable=False)
            variable("beta1_power", np.float32(0.9 ** 10), trainable=False)
            variable("beta2_power", np.float32(0.999 ** 10), trainable=False)
            variable("global_step", np.int64(68641), trainable=False)
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as sess:
            # One session run: the initializers with every variable's initial value fed (what
            # `var.load` feeds, one run per variable; the graph is the same).
            sess.run(v1.global_variables_initializer(),
                     {var.initializer.inputs[1]: values[var.op.name] for var in v1.global_variables()})
            saver.save(sess, str(prefix))
    standin = StandIn(prefix, image_size, batch, images.name, stage_thetas[-1].name,
                      vertices.name if vertices is not None else None,
                      tuple(t.name for t in stage_thetas))
    Path(str(prefix) + ".standin.json").write_text(standin.to_json())
    return standin


def _flame_variables(variable, flame: FlameModel) -> dict:
    """FLAME's arrays as HMR keeps them: float32 non-trainable variables, HMR's layouts."""
    v = flame.num_vertices
    dirs = np.concatenate([flame.shapedirs, flame.exprdirs], axis=-1)  # [V, 3, 400]
    return {
        "v_template": variable("v_template", flame.v_template.astype(np.float32), False),
        "shapedirs": variable("shapedirs", dirs.reshape(3 * v, -1).T.astype(np.float32), False),
        "posedirs": variable("posedirs", flame.posedirs.reshape(3 * v, -1).T.astype(np.float32), False),
        "J_regressor": variable("J_regressor", flame.j_regressor.T.astype(np.float32), False),
        "lbs_weights": variable("lbs_weights", flame.weights.astype(np.float32), False),
        "num_vertices": v,
        "num_components": dirs.shape[-1],
        "num_shape_total": flame.shapedirs.shape[-1],
    }


def _rodrigues(r):
    """[N, 3] axis-angle -> [N, 3, 3], the textbook formula on a unit axis."""
    import tensorflow as tf

    angle = tf.sqrt(tf.reduce_sum(r * r, axis=1, keepdims=True) + 1e-16)
    axis = r / angle
    a = angle[:, :, None]
    x, y, z = axis[:, 0], axis[:, 1], axis[:, 2]
    zero = tf.zeros_like(x)
    k = tf.reshape(tf.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=1), [-1, 3, 3])
    eye = tf.eye(3, batch_shape=[1])
    return eye + tf.sin(a) * k + (1.0 - tf.cos(a)) * tf.matmul(k, k)


def _flame_forward(fv: dict, theta):
    """FLAME(shape, expression, [global, 0, jaw, 0, 0]) in RingNet's frame: [B, V, 3]."""
    import tensorflow as tf

    with tf.name_scope("Flamenetnormal"):
        b, v = int(theta.shape[0]), fv["num_vertices"]
        shape = theta[:, 9:9 + NUM_SHAPE]
        expression = theta[:, 9 + NUM_SHAPE:9 + NUM_SHAPE + NUM_EXPRESSION]
        n_shape, n_all = fv["num_shape_total"], fv["num_components"]
        coeffs = tf.concat([shape, tf.zeros([b, n_shape - NUM_SHAPE]), expression,
                            tf.zeros([b, n_all - n_shape - NUM_EXPRESSION])], 1)
        v_shaped = tf.reshape(tf.matmul(coeffs, fv["shapedirs"]), [b, v, 3]) + fv["v_template"]
        joints = tf.stack([tf.matmul(v_shaped[:, :, i], fv["J_regressor"]) for i in range(3)], axis=2)
        zeros = tf.zeros([b, 3])
        pose = tf.concat([theta[:, 3:6], zeros, theta[:, 6:9], zeros, zeros], 1)
        rots = tf.reshape(_rodrigues(tf.reshape(pose, [-1, 3])), [b, C.NUM_JOINTS, 3, 3])
        feats = tf.reshape(rots[:, 1:] - tf.eye(3), [b, C.NUM_POSE_FEATURES])
        v_posed = v_shaped + tf.reshape(tf.matmul(feats, fv["posedirs"]), [b, v, 3])
        bottom = tf.tile(tf.constant([[[0.0, 0.0, 0.0, 1.0]]]), [b, 1, 1])
        world = []
        for j, parent in enumerate(C.PARENTS):
            offset = joints[:, j] if parent < 0 else joints[:, j] - joints[:, parent]
            local = tf.concat([tf.concat([rots[:, j], offset[:, :, None]], 2), bottom], 1)
            world.append(local if parent < 0 else tf.matmul(world[parent], local))
        world = tf.stack(world, axis=1)  # [B, J, 4, 4]
        # Skinning transforms: subtract each joint's rest position (applied to rest-pose points).
        rest = tf.linalg.matvec(world[:, :, :3, :3], joints)
        skin = tf.concat([world[:, :, :3, :3], (world[:, :, :3, 3] - rest)[..., None]], 3)  # [B, J, 3, 4]
        blended = tf.einsum("vj,bjrc->bvrc", fv["lbs_weights"], skin)
        homog = tf.concat([v_posed, tf.ones([b, v, 1])], 2)
        return tf.einsum("bvrc,bvc->bvr", blended, homog)
