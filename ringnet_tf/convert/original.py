"""RingNet's released TF 1 checkpoint -> this project's compact checkpoint, verified against its graph.

    python -m ringnet_tf.convert_original --ckpt DIR/ring_6_68641 --out DIR [--flame_model FLAME]

Everything is read from the files, nothing guessed:
- the variables (`tf.train.list_variables`): TF-slim's `resnet_v2_50/...` (270 variables), HMR's
  regressor `3D_module/fc{1,2,3}/{weights,biases}` and `mean_param`; FLAME's arrays if the graph
  keeps them as variables (`v_template`, `shapedirs`, `posedirs`, `J_regressor`, `lbs_weights`:
  used only to verify). Optimizer slots (`.../Adam`, `.../Adam_1`, ...), `beta1_power`,
  `beta2_power` and `global_step` are ignored by rule. Any other variable, or a shape the
  architecture does not have, is an error naming it.
- the `.meta` graph, parsed without building it: the input placeholder (and so the image size),
  the number of stages (the chain theta_0 = tile(mean_param), theta_t = theta_{t-1} + fc3(...)),
  the regressor width (fc1's declared shape, which must agree with the checkpoint) and every
  batch norm's epsilon (from its FusedBatchNorm op; a graph epsilon other than Keras' 1.001e-5
  is folded exactly into moving_variance: var + eps_graph - eps_keras).

The network it writes is `build_ringnet` with `pool1="slim"` (slim's SAME max pool) and
`output_convention="ringnet"`: the regressor reproduces RingNet's parameters, and
`ringnet_tf.model.ringnet_to_ours` maps them (every stage) to this project's convention, so the
checkpoint's outputs mean what every other checkpoint's mean. Weights are stored as float32.

Verification, every time, before anything is written: the `.meta` is imported
(`import_meta_graph(clear_devices=True)`) and restored in a `tf.Graph` / `tf.compat.v1.Session`,
and it and the converted network (loaded back from the written files) run on the same images:
- parameters: every stage's theta against the converted regressor's (RingNet convention), 1e-4;
- vertices, when the graph computes FLAME's vertices (RingNet's `Flamenetnormal_2/Add_9`, found
  as the one [B, V, 3] output downstream of the last stage): ours against F (V_graph - J0) + J0,
  F = diag(1, -1, -1), J0 FLAME's root joint, 1e-5 m; and the projection of both, each with its
  own camera and pixel convention, 0.01 pixel. This is what settles the convention.
A graph without that output is converted with the parameter check only and RingNet's documented
convention (said so); a graph TF cannot import any more is converted with a warning that it was
not verified. A mismatch is an error, and nothing is written (a staging folder is renamed at the end).

Without `--flame_model` the network uses the open head model (the regression is RingNet's, the
meshes are the open head's); with FLAME 2019's generic_model.pkl (the model RingNet used) the
meshes are RingNet's. When the checkpoint holds FLAME's arrays, the vertex check runs through them
whichever head model is given.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

import numpy as np

from flame import constants as C
from flame.geometry import rotation_from_axis_angle

if TYPE_CHECKING:
    from flame.model import FlameModel
    from ringnet_tf.inference import KerasPredictor

PARAMS_TOLERANCE = 1e-4
VERTEX_TOLERANCE = 1e-5  # metres
PIXEL_TOLERANCE = 1e-2
# Keras' BatchNormalization epsilon in ResNet50V2 (TF 1.x fused batch norm clamped to the same).
KERAS_BN_EPSILON = 1.001e-5
RINGNET_VERTICES = "Flamenetnormal_2/Add_9:0"  # what RingNet's run_RingNet.py fetches
F_FLIP = np.diag([1.0, -1.0, -1.0])

# RingNet's parameter vector: cam 3, pose 6 (global, jaw), shape 100, expression 50.
RINGNET_NUM_SHAPE, RINGNET_NUM_EXPRESSION = 100, 50
RINGNET_NUM_PARAMS = 3 + C.RINGNET_POSE_DIM + RINGNET_NUM_SHAPE + RINGNET_NUM_EXPRESSION
FEATURE_DIM = 2048
RESNET_BLOCKS: tuple[tuple[int, int], ...] = ((64, 3), (128, 4), (256, 6), (512, 3))
RESNET = "resnet_v2_50"
REGRESSOR = "3D_module"
MEAN = "mean_param"

_SLOT = re.compile(r"/(Adam|Adam_1|Momentum|RMSProp|RMSProp_1|Adagrad|ExponentialMovingAverage)$")
_COUNTER = re.compile(r"(^|/)(beta1_power|beta2_power|global_step)(_\d+)?$")
FLAME_ARRAYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights")
_FUSED_BN = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
_READS = ("Identity", "ReadVariableOp", "Snapshot", "Enter", "RefIdentity")
_VARIABLE_OPS = ("VariableV2", "Variable", "VarHandleOp")
_THETA_PASS = _READS + ("Tile", "Reshape", "ExpandDims", "BroadcastTo", "Cast")


class ConversionError(ValueError):
    """The conversion cannot go on; the message is one line naming the file and the problem."""


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


# ----------------------------------------------------------------------------------------------
# The files


@dataclasses.dataclass(frozen=True)
class CheckpointFiles:
    prefix: Path
    index: Path
    meta: Path
    data: tuple[Path, ...]


def locate(path: str | os.PathLike) -> CheckpointFiles:
    """The checkpoint's files from its prefix (DIR/ring_6_68641), one of its files, or a folder
    holding exactly one checkpoint."""
    p = Path(path)
    if p.is_dir():
        indexes = sorted(p.glob("*.index"))
        if len(indexes) != 1:
            what = "no .index file" if not indexes else \
                f"{len(indexes)} checkpoints ({', '.join(i.stem for i in indexes[:3])}): name one"
            raise ConversionError(f"{p}: holds {what}; --ckpt takes a checkpoint prefix such as DIR/ring_6_68641")
        p = indexes[0].with_suffix("")
    else:
        name = re.sub(r"\.(index|meta|data-\d{5}-of-\d{5})$", "", p.name)
        p = p.with_name(name)
    index, meta = Path(f"{p}.index"), Path(f"{p}.meta")
    if not index.is_file():
        raise ConversionError(f"{index}: no such file; --ckpt takes a checkpoint prefix (the name "
                              f"before .index / .meta / .data-*, e.g. DIR/ring_6_68641)")
    if not meta.is_file():
        raise ConversionError(f"{meta}: no such file; the converter reads the graph (stages, "
                              f"widths, epsilons, tensor names) from it")
    data = sorted(p.parent.glob(f"{p.name}.data-*-of-*"))
    if not data:
        raise ConversionError(f"{p}.data-00000-of-00001: no such file (the checkpoint's values)")
    total = int(data[0].name.rsplit("-of-", 1)[1])
    if len(data) != total:
        raise ConversionError(f"{p}.data-*: {len(data)} of {total} shards present")
    return CheckpointFiles(p, index, meta, tuple(data))


def list_variables(files: CheckpointFiles) -> dict[str, tuple[int, ...]]:
    import tensorflow as tf

    try:
        return {name: tuple(shape) for name, shape in tf.train.list_variables(str(files.prefix))}
    except (tf.errors.OpError, ValueError) as e:
        raise ConversionError(f"{files.index}: not a readable TensorFlow checkpoint index ({_one_line(e)})") from None


# ----------------------------------------------------------------------------------------------
# The variables: what each becomes


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a checkpoint variable goes: a layer of the backbone or the regressor, and its weight."""

    variable: str
    shape: tuple[int, ...]
    part: str  # "backbone" or "regressor"
    layer: str
    weight: str
    bn_scope: str | None = None  # moving_variance: the batch norm whose epsilon is folded in


def network_targets(hidden: int, num_params: int) -> list[Target]:
    """Every variable of RingNet's network, its expected shape and its Keras destination.

    TF-slim's resnet_v2_50 block b, unit u is keras.applications' ResNet50V2 `conv{b+1}_block{u}`;
    inside a unit: preact <-> _preact_bn, shortcut <-> _0_conv, conv{1,2,3} <-> _{1,2,3}_conv,
    conv{1,2}/BatchNorm <-> _{1,2}_bn; postnorm <-> post_bn.
    """
    out: list[Target] = []

    def conv(slim: str, layer: str, k: int, cin: int, cout: int, bias: bool) -> None:
        out.append(Target(f"{slim}/weights", (k, k, cin, cout), "backbone", layer, "kernel"))
        if bias:
            out.append(Target(f"{slim}/biases", (cout,), "backbone", layer, "bias"))

    def bn(slim: str, layer: str, depth: int) -> None:
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            out.append(Target(f"{slim}/{name}", (depth,), "backbone", layer, name,
                              slim if name == "moving_variance" else None))

    conv(f"{RESNET}/conv1", "conv1_conv", 7, 3, 64, bias=True)
    depth_in = 64
    for b, (base, units) in enumerate(RESNET_BLOCKS, 1):
        for u in range(1, units + 1):
            slim, keras_name = f"{RESNET}/block{b}/unit_{u}/bottleneck_v2", f"conv{b + 1}_block{u}"
            bn(f"{slim}/preact", f"{keras_name}_preact_bn", depth_in)
            if depth_in != 4 * base:
                conv(f"{slim}/shortcut", f"{keras_name}_0_conv", 1, depth_in, 4 * base, bias=True)
            conv(f"{slim}/conv1", f"{keras_name}_1_conv", 1, depth_in, base, bias=False)
            bn(f"{slim}/conv1/BatchNorm", f"{keras_name}_1_bn", base)
            conv(f"{slim}/conv2", f"{keras_name}_2_conv", 3, base, base, bias=False)
            bn(f"{slim}/conv2/BatchNorm", f"{keras_name}_2_bn", base)
            conv(f"{slim}/conv3", f"{keras_name}_3_conv", 1, base, 4 * base, bias=True)
            depth_in = 4 * base
    bn(f"{RESNET}/postnorm", "post_bn", depth_in)
    widths = {"fc1": (FEATURE_DIM + num_params, hidden), "fc2": (hidden, hidden), "fc3": (hidden, num_params)}
    for slim_name, keras_name in (("fc1", "fc1"), ("fc2", "fc2"), ("fc3", "fc_out")):
        rows, cols = widths[slim_name]
        out.append(Target(f"{REGRESSOR}/{slim_name}/weights", (rows, cols), "regressor", keras_name, "kernel"))
        out.append(Target(f"{REGRESSOR}/{slim_name}/biases", (cols,), "regressor", keras_name, "bias"))
    out.append(Target(MEAN, (1, num_params), "regressor", "regressor", "mean_params"))
    return out


@dataclasses.dataclass
class VariablePlan:
    targets: list[Target]
    hidden: int
    num_params: int
    flame: dict[str, str]  # FLAME array role -> variable name
    ignored: list[str]
    shapes: dict[str, tuple[int, ...]]


def plan_variables(files: CheckpointFiles, shapes: dict[str, tuple[int, ...]]) -> VariablePlan:
    """Classifies every variable of the checkpoint; raises ConversionError on anything unknown."""
    where = files.index
    ignored = sorted(n for n in shapes if _SLOT.search(n) or _COUNTER.search(n))
    rest = {n: s for n, s in shapes.items() if n not in set(ignored)}
    if not any(n.startswith(RESNET + "/") for n in rest):
        example = next(iter(sorted(rest)), "none")
        raise ConversionError(f"{where}: not RingNet's checkpoint: none of its {len(rest)} variables is "
                              f"TF-slim's {RESNET}/... (e.g. {example})")
    for needed in (MEAN, f"{REGRESSOR}/fc1/weights"):
        if needed not in rest:
            raise ConversionError(f"{where}: no variable {needed}: not RingNet's (HMR's) regressor")
    mean_shape, fc1_shape = rest[MEAN], rest[f"{REGRESSOR}/fc1/weights"]
    num_params = int(mean_shape[-1]) if mean_shape else 0
    if num_params != RINGNET_NUM_PARAMS or mean_shape not in ((num_params,), (1, num_params)):
        raise ConversionError(f"{where}: {MEAN} has shape {list(mean_shape)}, expected RingNet's "
                              f"[1, {RINGNET_NUM_PARAMS}] (camera 3, pose 6, shape 100, expression 50)")
    if len(fc1_shape) != 2:
        raise ConversionError(f"{where}: {REGRESSOR}/fc1/weights has shape {list(fc1_shape)}, "
                              f"expected [{FEATURE_DIM + num_params}, width]")
    hidden = int(fc1_shape[1])
    targets = network_targets(hidden, num_params)
    by_name = {t.variable: t for t in targets}
    flame: dict[str, str] = {}
    for name in sorted(rest):
        shape = rest[name]
        target = by_name.get(name)
        if target is not None:
            ok = shape == target.shape or (name == MEAN and shape == (num_params,))
            if not ok:
                raise ConversionError(f"{where}: variable {name} has shape {list(shape)}, expected "
                                      f"{list(target.shape)}")
            continue
        base = name.rsplit("/", 1)[-1]
        if base in FLAME_ARRAYS and not name.startswith((RESNET + "/", REGRESSOR + "/")):
            if base in flame:
                raise ConversionError(f"{where}: two FLAME {base} arrays ({flame[base]}, {name})")
            flame[base] = name
            continue
        raise ConversionError(f"{where}: variable {name} {list(shape)} is not one of RingNet's (TF-slim "
                              f"{RESNET}/..., {REGRESSOR}/fc1..fc3, {MEAN}, FLAME's arrays); nothing converted")
    missing = [t.variable for t in targets if t.variable not in rest]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConversionError(f"{where}: variable {missing[0]} is missing{more}")
    if flame and len(flame) != len(FLAME_ARRAYS):
        absent = [a for a in FLAME_ARRAYS if a not in flame]
        raise ConversionError(f"{where}: FLAME arrays {', '.join(flame.values())} without {', '.join(absent)}")
    if flame:
        _check_flame_shapes(where, {role: (name, rest[name]) for role, name in flame.items()})
    return VariablePlan(targets, hidden, num_params, flame, ignored, shapes)


def _check_flame_shapes(where: Path, arrays: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    name, shape = arrays["v_template"]
    if len(shape) != 2 or shape[1] != 3:
        raise ConversionError(f"{where}: variable {name} has shape {list(shape)}, expected [V, 3]")
    v = shape[0]
    allowed = {
        "shapedirs": [(k, 3 * v) for k in _FLAME_COMPONENTS] + [(v, 3, k) for k in _FLAME_COMPONENTS],
        "posedirs": [(C.NUM_POSE_FEATURES, 3 * v), (v, 3, C.NUM_POSE_FEATURES)],
        "J_regressor": [(v, C.NUM_JOINTS), (C.NUM_JOINTS, v)],
        "lbs_weights": [(v, C.NUM_JOINTS)],
    }
    for role, options in allowed.items():
        name, shape = arrays[role]
        if shape not in options:
            raise ConversionError(f"{where}: variable {name} has shape {list(shape)}, expected one of "
                                  f"{', '.join(str(list(o)) for o in options)} for {v} vertices")


# FLAME's full basis (300 identity + 100 expression) or exactly RingNet's (100 + 50).
_FLAME_COMPONENTS = (C.NUM_SHAPE_TOTAL + C.NUM_EXPRESSION_TOTAL, RINGNET_NUM_SHAPE + RINGNET_NUM_EXPRESSION)


# ----------------------------------------------------------------------------------------------
# The graph, read without building it


@dataclasses.dataclass
class GraphInfo:
    input_tensor: str
    input_shape: tuple[int, ...]  # -1 for an open dimension
    image_size: int
    stage_tensors: list[str]
    bn_epsilon: dict[str, float]  # batch-norm variable scope -> epsilon
    declared: dict[str, tuple[int, ...]]  # variable -> shape declared in the graph


def read_meta(path: Path):
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    try:
        meta.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ConversionError(f"{path}: not a TensorFlow MetaGraphDef ({_one_line(e)})") from None
    except OSError as e:
        raise ConversionError(f"{path}: cannot read ({e.strerror or e})") from None
    if not meta.graph_def.node:
        raise ConversionError(f"{path}: holds no graph (not a TensorFlow .meta file)")
    return meta


def _source(inp: str) -> str:
    return inp.lstrip("^").split(":")[0]


class _Graph:
    """Name lookups over a GraphDef: nodes, consumers, variable reads."""

    def __init__(self, graph_def):
        self.nodes = {n.name: n for n in graph_def.node}
        self.consumers: dict[str, list] = {}
        for n in graph_def.node:
            for inp in n.input:
                if not inp.startswith("^"):
                    self.consumers.setdefault(_source(inp), []).append(n)

    def variable_of(self, name: str, depth: int = 8) -> str | None:
        """The variable a node reads (through Identity / ReadVariableOp), or None."""
        node = self.nodes.get(name)
        for _ in range(depth):
            if node is None:
                return None
            if node.op in _VARIABLE_OPS:
                return node.name
            if node.op not in _READS or not node.input:
                return None
            node = self.nodes.get(_source(node.input[0]))
        return None

    def through_reads(self, name: str) -> str:
        node = self.nodes.get(name)
        while node is not None and node.op in ("Identity", "Snapshot") and node.input:
            node = self.nodes.get(_source(node.input[0]))
        return node.name if node is not None else name

    def ancestors(self, name: str) -> set[str]:
        seen, stack = set(), [name]
        while stack:
            n = stack.pop()
            if n in seen or n not in self.nodes:
                continue
            seen.add(n)
            stack.extend(_source(i) for i in self.nodes[n].input if not i.startswith("^"))
        return seen


def _shape_attr(node) -> tuple[int, ...] | None:
    attr = node.attr.get("shape")
    if attr is None or attr.shape.unknown_rank:
        return None
    return tuple(int(d.size) for d in attr.shape.dim)


def analyse_graph(meta_path: Path, meta, plan: VariablePlan, image_size: int | None = None) -> GraphInfo:
    """Input, stages, epsilons and declared widths from the GraphDef (see the module docstring)."""
    import tensorflow as tf

    g = _Graph(meta.graph_def)
    declared = {n.name: s for n in meta.graph_def.node if n.op in _VARIABLE_OPS
                and (s := _shape_attr(n)) is not None}
    for t in plan.targets:
        if t.variable in declared and declared[t.variable] != plan.shapes[t.variable]:
            raise ConversionError(f"{meta_path}: the graph declares {t.variable} as {list(declared[t.variable])}, "
                                  f"the checkpoint holds {list(plan.shapes[t.variable])}")
    fc1 = f"{REGRESSOR}/fc1/weights"
    if fc1 not in declared:
        raise ConversionError(f"{meta_path}: the graph has no variable {fc1}: not RingNet's graph")

    # Stages: theta_0 = tile(mean_param) (through reads), theta_t = theta_{t-1} + delta_t, where
    # delta_t is an op adding fc3's biases.
    fc3_bias = f"{REGRESSOR}/fc3/biases"

    def is_delta(name: str) -> bool:
        node = g.nodes.get(g.through_reads(name))
        return node is not None and node.op in ("BiasAdd", "Add", "AddV2") and any(
            g.variable_of(_source(i)) == fc3_bias for i in node.input)

    def closure(names: set[str]) -> set[str]:
        out, stack = set(), list(names)
        while stack:
            n = stack.pop()
            if n in out:
                continue
            out.add(n)
            stack.extend(c.name for c in g.consumers.get(n, []) if c.op in _THETA_PASS)
        return out

    if MEAN not in g.nodes:
        raise ConversionError(f"{meta_path}: the graph has no variable {MEAN}")
    current, stages = closure({MEAN}), []
    while True:
        adds = {c.name for n in current for c in g.consumers.get(n, [])
                if c.op in ("Add", "AddV2") and any(is_delta(_source(i)) for i in c.input
                                                    if _source(i) not in current)}
        if not adds:
            break
        if len(adds) > 1:
            raise ConversionError(f"{meta_path}: stage {len(stages) + 1} is ambiguous: {', '.join(sorted(adds))} "
                                  f"all add a {REGRESSOR}/fc3 output to theta")
        add = adds.pop()
        stages.append(add)
        current = closure({add})
        if len(stages) > 100:
            raise ConversionError(f"{meta_path}: the theta += delta chain does not end")
    if not stages:
        raise ConversionError(f"{meta_path}: no theta += {REGRESSOR}/fc3 chain starts from {MEAN}: "
                              f"not RingNet's regressor")

    # The input: the one float [B, H, W, 3] placeholder the last stage depends on.
    upstream = g.ancestors(stages[-1])
    placeholders = [g.nodes[n] for n in sorted(upstream) if g.nodes[n].op == "Placeholder"]
    images = [p for p in placeholders if p.attr["dtype"].type == tf.float32.as_datatype_enum
              and (s := _shape_attr(p)) is not None and len(s) == 4 and s[3] == 3]
    if len(images) != 1:
        found = ", ".join(p.name for p in placeholders) or "none"
        raise ConversionError(f"{meta_path}: expected one float [B, S, S, 3] image placeholder feeding "
                              f"{stages[-1]}, found {found}")
    shape = _shape_attr(images[0])
    size = shape[1] if shape[1] == shape[2] and shape[1] > 0 else None
    if size is None:
        if image_size is None:
            raise ConversionError(f"{meta_path}: the input {images[0].name} has shape {list(shape)}: "
                                  f"no fixed square size; pass --image_size")
        size = image_size
    elif image_size is not None and image_size != size:
        raise ConversionError(f"{meta_path}: the input {images[0].name} is {size} px, not --image_size {image_size}")

    # Batch norm: the epsilon of the op reading each scope's moving_mean.
    found: dict[str, set[tuple[float, bool]]] = {}
    for n in meta.graph_def.node:
        if n.op in _FUSED_BN and len(n.input) >= 4:
            var = g.variable_of(_source(n.input[3]))
            if var and var.endswith("/moving_mean"):
                found.setdefault(var[:-len("/moving_mean")], set()).add(
                    (float(n.attr["epsilon"].f), bool(n.attr["is_training"].b)))
        elif n.op == "Const" and n.name.endswith("/batchnorm/add/y"):  # non-fused batch norm
            scope = n.name[:-len("/batchnorm/add/y")]
            eps = float(np.asarray(tf.make_ndarray(n.attr["value"].tensor)).reshape(-1)[0])
            training = f"{scope}/moments/mean" in g.nodes
            found.setdefault(scope, set()).add((eps, training))
    epsilons: dict[str, float] = {}
    for t in plan.targets:
        if t.bn_scope is None:
            continue
        seen = found.get(t.bn_scope)
        if not seen:
            raise ConversionError(f"{meta_path}: no batch-norm op reads {t.bn_scope}/moving_mean: its "
                                  f"epsilon cannot be read")
        if len({e for e, _ in seen}) > 1:
            raise ConversionError(f"{meta_path}: batch norm {t.bn_scope} runs with several epsilons "
                                  f"{sorted(e for e, _ in seen)}")
        if any(training for _, training in seen):
            raise ConversionError(f"{meta_path}: batch norm {t.bn_scope} runs in training mode (batch "
                                  f"statistics): not an inference graph, its outputs cannot be matched")
        epsilons[t.bn_scope] = next(iter(seen))[0]
    return GraphInfo(f"{images[0].name}:0", shape, int(size), [f"{s}:0" for s in stages], epsilons,
                     declared)


# ----------------------------------------------------------------------------------------------
# The values


def read_values(files: CheckpointFiles, names: list[str]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(files.prefix))
    except (tf.errors.OpError, ValueError) as e:
        raise ConversionError(f"{files.index}: cannot open the checkpoint ({_one_line(e)})") from None
    out = {}
    for name in names:
        try:
            value = np.asarray(reader.get_tensor(name))
        except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:  # IndexError: a short read
            shard = files.data[0] if len(files.data) == 1 else f"{files.prefix}.data-*"
            raise ConversionError(f"{shard}: cannot read {name}: damaged or truncated ({_one_line(e)})") from None
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ConversionError(f"{files.prefix}: variable {name} holds NaN or infinity")
        out[name] = value
    return out


def graph_flame_model(plan: VariablePlan, values: dict[str, np.ndarray], source: str):
    """The FLAME arrays kept in the checkpoint as a FlameModel (for the vertex check only: faces
    and landmark embeddings are placeholders). HMR's layouts: shapedirs [K, 3V] (K = 400: 300
    identity + 100 expression; or 150: RingNet's 100 + 50), posedirs [36, 3V], J_regressor [V, 5];
    FLAME's own [V, 3, K] / [5, V] are accepted too."""
    from flame.model import FlameModel

    a = {role: np.asarray(values[name], np.float64) for role, name in plan.flame.items()}
    v = a["v_template"].shape[0]

    def per_vertex(arr: np.ndarray) -> np.ndarray:  # [K, 3V] -> [V, 3, K]
        return arr if arr.ndim == 3 else arr.T.reshape(v, 3, -1)

    dirs, posedirs = per_vertex(a["shapedirs"]), per_vertex(a["posedirs"])
    k = dirs.shape[-1]
    n_shape = C.NUM_SHAPE_TOTAL if k == C.NUM_SHAPE_TOTAL + C.NUM_EXPRESSION_TOTAL else RINGNET_NUM_SHAPE
    shapedirs, exprdirs = dirs[:, :, :n_shape], dirs[:, :, n_shape:]
    pad = lambda d, n: np.concatenate([d, np.zeros((v, 3, n - d.shape[-1]))], -1)  # noqa: E731
    j_reg = a["J_regressor"] if a["J_regressor"].shape[0] == C.NUM_JOINTS else a["J_regressor"].T
    return FlameModel(
        v_template=a["v_template"], faces=np.array([[0, 1, 2]], np.int64),
        shapedirs=pad(shapedirs, C.NUM_SHAPE_TOTAL), exprdirs=pad(exprdirs, C.NUM_EXPRESSION_TOTAL),
        posedirs=posedirs, j_regressor=j_reg, weights=a["lbs_weights"],
        parents=np.asarray(C.PARENTS, np.int64),
        static_lmk_faces=np.zeros(C.NUM_STATIC_LANDMARKS, np.int64),
        static_lmk_bary=np.full((C.NUM_STATIC_LANDMARKS, 3), 1 / 3),
        dynamic_lmk_faces=np.zeros((C.CONTOUR_NUM_ROWS, C.NUM_CONTOUR_LANDMARKS), np.int64),
        dynamic_lmk_bary=np.full((C.CONTOUR_NUM_ROWS, C.NUM_CONTOUR_LANDMARKS, 3), 1 / 3),
        source=source)


def flame_difference(a, b) -> float:
    """Largest difference between two head models' arrays RingNet uses (inf if they differ in size)."""
    if a.num_vertices != b.num_vertices:
        return float("inf")
    pairs = [(a.v_template, b.v_template), (a.shapedirs[..., :RINGNET_NUM_SHAPE], b.shapedirs[..., :RINGNET_NUM_SHAPE]),
             (a.exprdirs[..., :RINGNET_NUM_EXPRESSION], b.exprdirs[..., :RINGNET_NUM_EXPRESSION]),
             (a.posedirs, b.posedirs), (a.j_regressor, b.j_regressor), (a.weights, b.weights)]
    return max(float(np.abs(x - y).max()) for x, y in pairs)


# ----------------------------------------------------------------------------------------------
# The converted network


def model_config(info: GraphInfo, plan: VariablePlan, values: dict[str, np.ndarray]):
    from ringnet_tf.model import ModelConfig

    mean = np.asarray(values[MEAN]).reshape(-1)
    return ModelConfig(image_size=info.image_size, backbone="resnet50", num_shape=RINGNET_NUM_SHAPE,
                       num_expression=RINGNET_NUM_EXPRESSION, num_stages=len(info.stage_tensors),
                       hidden=plan.hidden, dropout=0.5, backbone_weights="none",
                       init_cam_scale=float(mean[0]), pool1="slim", output_convention="ringnet")


def assign_weights(net, plan: VariablePlan, info: GraphInfo, values: dict[str, np.ndarray]) -> None:
    """Copies every mapped variable into the network (every backbone and regressor weight once)."""
    backbone, regressor = net.get_layer("backbone"), net.get_layer("regressor")
    assigned: set[int] = set()
    for t in plan.targets:
        if t.part == "backbone":
            layer = backbone.get_layer(t.layer)
        else:
            layer = regressor if t.layer == "regressor" else getattr(regressor, t.layer)
        weights = {w.name: w for w in layer.weights} if t.layer != "regressor" else {"mean_params": regressor.mean}
        var = weights[t.weight]
        value = np.asarray(values[t.variable], np.float64)
        if t.bn_scope is not None:
            # (x - m) / sqrt(v + e_graph) == (x - m) / sqrt(v' + e_keras) with v' = v + e_graph - e_keras.
            value = value + info.bn_epsilon[t.bn_scope] - float(layer.epsilon)
        value = value.reshape(tuple(var.shape))
        var.assign(value.astype(var.dtype))
        assigned.add(id(var))
    expected = {id(w) for w in backbone.weights} | {id(w) for w in regressor.weights}
    if assigned != expected:  # a Keras version with other layers: refuse rather than half-convert
        raise ConversionError(f"internal: {len(expected - assigned)} Keras weights left unassigned")


# ----------------------------------------------------------------------------------------------
# Verification


def verification_images(size: int) -> np.ndarray:
    """[N, S, S, 3] float32 in [-1, 1]: the bundled photo cropped as RingNet's demo did (if the
    repository has it), a smooth pattern and uniform noise (fixed seeds)."""
    from ringnet_tf import preprocess

    images = []
    photo = Path(__file__).resolve().parents[2] / "examples" / "astronaut.jpg"
    if photo.is_file():
        rgb = preprocess.read_image(photo)
        images.append(preprocess.normalise(preprocess.crop(rgb, preprocess.centre_box(*rgb.shape[:2]), size)))
    t = np.linspace(0.0, 1.0, size)
    y, x = np.meshgrid(t, t, indexing="ij")
    images.append(np.stack([np.sin(6 * x + 1), np.cos(5 * y - 2 * x), np.sin(9 * x * y)], -1))
    images.append(np.random.default_rng(0).uniform(-1, 1, (size, size, 3)))
    return np.stack(images).astype(np.float32)


@dataclasses.dataclass
class GraphRun:
    stages: np.ndarray | None = None  # [N, T, P]
    vertices: np.ndarray | None = None  # [N, V, 3]
    vertex_tensor: str | None = None
    not_importable: str | None = None  # why TF cannot import the graph
    no_vertices_reason: str | None = None


def run_original(files: CheckpointFiles, info: GraphInfo, images: np.ndarray,
                 num_vertices: int | None) -> GraphRun:
    """Imports the .meta in its own tf.Graph, restores the checkpoint, runs it on `images`."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # import_meta_graph's deprecation notices
    try:
        with graph.as_default():
            try:
                saver = v1.train.import_meta_graph(str(files.meta), clear_devices=True)
            except Exception as e:  # an op TF no longer has, a graph it cannot rebuild
                return GraphRun(not_importable=f"{type(e).__name__}: {_one_line(e)}")
            if saver is None:
                saver = v1.train.Saver()
            with v1.Session(graph=graph) as sess:
                try:
                    saver.restore(sess, str(files.prefix))
                except (tf.errors.OpError, ValueError) as e:
                    raise ConversionError(f"{files.prefix}: restoring it into its own graph failed "
                                          f"({_one_line(e)})") from None
                fetch = {"stages": [graph.get_tensor_by_name(n) for n in info.stage_tensors]}
                vertex_tensor, reason = _find_vertex_output(graph, info.stage_tensors[-1], num_vertices)
                if vertex_tensor is not None:
                    fetch["vertices"] = vertex_tensor
                feed = graph.get_tensor_by_name(info.input_tensor)
                batch = info.input_shape[0] if info.input_shape[0] > 0 else len(images)
                outs = []
                for start in range(0, len(images), batch):
                    chunk = images[start:start + batch]
                    if len(chunk) < batch:  # a fixed batch size: pad with copies, keep the real rows
                        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
                    outs.append((sess.run(fetch, {feed: chunk}), min(batch, len(images) - start)))
                again = sess.run(fetch["stages"][-1], {feed: images[:batch] if batch <= len(images) else
                                                       np.repeat(images[:1], batch, 0)})
                if np.abs(again - outs[0][0]["stages"][-1]).max() > PARAMS_TOLERANCE / 10:
                    raise ConversionError(f"{files.meta}: the graph gives different outputs for the same "
                                          f"input (dropout or batch statistics in training mode?)")
    finally:
        logger.setLevel(level)
    stages = np.concatenate([np.stack(o["stages"], 1)[:n] for o, n in outs])
    vertices = np.concatenate([o["vertices"][:n] for o, n in outs]) if vertex_tensor is not None else None
    return GraphRun(stages, vertices, vertex_tensor.name if vertex_tensor is not None else None,
                    no_vertices_reason=reason)


def _find_vertex_output(graph, final_theta: str, num_vertices: int | None):
    """FLAME's vertices after the last stage: the [B, V, 3] tensor downstream of the last theta
    that feeds no other [B, V, 3] tensor (RingNet's Flamenetnormal_2/Add_9). Returns (tensor,
    None) or (None, why not)."""
    if num_vertices is None:
        return None, "the vertex count is unknown"
    start = graph.get_tensor_by_name(final_theta).op
    seen, stack = set(), [start]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        stack.extend(c for t in op.outputs for c in t.consumers())

    def is_mesh(t) -> bool:
        s = t.shape
        return s.rank == 3 and s[1] == num_vertices and s[2] == 3 and t.dtype.is_floating

    candidates = [t for name in seen for t in graph.get_operation_by_name(name).outputs if is_mesh(t)]
    if not candidates:
        return None, f"no [B, {num_vertices}, 3] tensor depends on {final_theta}"
    names = {t.name for t in candidates}

    def feeds_another(t) -> bool:
        stack, visited = [c for c in t.consumers()], set()
        while stack:
            op = stack.pop()
            if op.name in visited:
                continue
            visited.add(op.name)
            if any(o.name in names and o.name != t.name for o in op.outputs):
                return True
            stack.extend(c for o in op.outputs for c in o.consumers())
        return False

    known = [t for t in candidates if t.name == RINGNET_VERTICES]
    if known:  # the tensor RingNet's own inference code fetches
        return known[0], None
    sinks = [t for t in candidates if not feeds_another(t)]
    if len(sinks) == 1:
        return sinks[0], None
    raise ConversionError(f"several [B, {num_vertices}, 3] outputs depend on {final_theta} "
                          f"({', '.join(sorted(t.name for t in sinks)[:3])}): cannot tell FLAME's vertices")


def _rotations(r: np.ndarray) -> np.ndarray:
    """[N, 3] axis-angle -> [N, 3, 3] float64 rotations (flame.geometry's Rodrigues)."""
    return np.stack([rotation_from_axis_angle(v) for v in np.asarray(r, np.float64)])


@dataclasses.dataclass
class Verification:
    images: int
    params: float | None = None
    params_stages: int = 0
    vertices: float | None = None
    pixels: float | None = None
    rotation: float | None = None
    vertex_tensor: str | None = None
    vertex_path: str = ""  # how our vertices were made: "network" or "checkpoint FLAME"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verify(predictor: KerasPredictor, run: GraphRun, images: np.ndarray, ref_flame: FlameModel | None,
           same_head: bool) -> Verification:
    """Compares the converted network with the graph's outputs; raises ConversionError beyond tolerance.

    ref_flame: the head model the graph's vertices are compared through (the checkpoint's own
    FLAME when it holds one, else the network's); same_head: it is the network's head model.
    """
    import tensorflow as tf

    from flame.layer import FlameLayer
    from ringnet_tf import camera
    from ringnet_tf.model import ringnet_to_ours

    net = predictor.net
    size = int(net.input_shape[1])
    x = tf.constant(images)
    raw = net.get_layer("regressor")(net.get_layer("backbone")(x, training=False), training=False).numpy()
    report = Verification(images=len(images), params_stages=raw.shape[1])
    report.params = float(np.abs(raw - run.stages).max())
    if report.params > PARAMS_TOLERANCE:
        worst = np.unravel_index(np.argmax(np.abs(raw - run.stages)), raw.shape)
        raise ConversionError(f"verification failed: parameters differ from the graph's by {report.params:.3g} "
                              f"(tolerance {PARAMS_TOLERANCE:g}; stage {worst[1] + 1}, parameter {worst[2]}): "
                              f"nothing written")
    if run.vertices is None:
        return report
    ring = run.stages[:, -1].astype(np.float64)
    shape, expression = raw[:, -1, 9:9 + RINGNET_NUM_SHAPE], raw[:, -1, 9 + RINGNET_NUM_SHAPE:]
    if same_head:
        layer = predictor.flame_layer
        out = net(x, training=False)
        ours_v, ours_theta = out["vertices"].numpy(), out["params"].numpy()
        report.vertex_path = "network"
    else:
        layer = FlameLayer(ref_flame, RINGNET_NUM_SHAPE, RINGNET_NUM_EXPRESSION)
        report.vertex_path = "checkpoint FLAME"
    root = layer(tf.constant(shape), tf.constant(expression), tf.zeros((len(images), C.RINGNET_POSE_DIM)))["joints"].numpy()[:, 0]
    if not same_head:
        ours_theta = ringnet_to_ours(tf.constant(raw[:, -1]), tf.constant(root[:, 1]), float(size)).numpy()
        split = 9 + RINGNET_NUM_SHAPE
        ours_v = layer(tf.constant(ours_theta[:, 9:split]), tf.constant(ours_theta[:, split:]),
                       tf.constant(ours_theta[:, 3:9]))["vertices"].numpy()
    # The documented convention: V_ours = F (V_ring - J0) + J0; pixels (x + 1) S / 2, y down.
    expected = (run.vertices - root[:, None]) @ F_FLIP + root[:, None]
    report.vertices = float(np.abs(ours_v - expected).max())
    ring_px = (ring[:, None, :1] * (run.vertices[..., :2] + ring[:, None, 1:3]) + 1.0) * size / 2
    report.pixels = float(np.abs(camera.project(ours_v.astype(np.float64), ours_theta.astype(np.float64), size)
                                 - ring_px).max())
    report.rotation = float(np.abs(_rotations(ours_theta[:, 3:6]) - F_FLIP @ _rotations(ring[:, 3:6])).max())
    report.vertex_tensor = run.vertex_tensor
    if report.vertices > VERTEX_TOLERANCE or report.pixels > PIXEL_TOLERANCE:
        hint = "" if ref_flame is not None else (" (the checkpoint holds no FLAME arrays: was the graph built "
                                                 "with another head model than --flame_model?)")
        raise ConversionError(f"verification failed: vertices differ from the graph's ({run.vertex_tensor}) by "
                              f"{report.vertices:.3g} m (tolerance {VERTEX_TOLERANCE:g} m), projections by "
                              f"{report.pixels:.3g} px (tolerance {PIXEL_TOLERANCE:g}){hint}: nothing written")
    return report


# ----------------------------------------------------------------------------------------------
# The whole conversion


@dataclasses.dataclass
class Result:
    out: Path
    seconds: float
    verification: Verification | None
    lines: list[str]


def convert(ckpt: str | os.PathLike, out: str | os.PathLike, flame_model: str | None = None,
            force: bool = False, image_size: int | None = None,
            say: Callable[[str], None] = print, warn: Callable[[str], None] | None = None) -> Result:
    """Converts and verifies; writes `out` whole or not at all. Raises ConversionError (one line)."""
    from flame.fileutil import check_new_dir, staged_dir

    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        say(line)

    try:
        check_new_dir(out, force)
    except OSError as e:
        raise ConversionError(str(e)) from None
    files = locate(ckpt)
    # TensorFlow and Keras (seconds to import) only once the output and the input files passed
    # the cheap checks above.
    import tensorflow as tf

    from flame.io import load_flame
    from ringnet_tf.inference import load_predictor, save_compact
    from ringnet_tf.model import build_ringnet

    started = time.perf_counter()
    plan = plan_variables(files, list_variables(files))
    slots = [n for n in plan.ignored if _SLOT.search(n)]
    counters = [n for n in plan.ignored if not _SLOT.search(n)]
    report(f"{files.prefix}: {len(plan.targets)} variables mapped ({len(plan.targets) - 7} ResNet-50 v2, 7 regressor); "
           f"ignored by rule: {len(slots)} optimizer slots"
           + (f", {', '.join(counters)}" if counters else "")
           + (f"; FLAME arrays ({', '.join(plan.flame.values())}) used only to verify" if plan.flame else ""))
    meta = read_meta(files.meta)
    info = analyse_graph(files.meta, meta, plan, image_size)
    eps = sorted(set(info.bn_epsilon.values()))
    report(f"graph: input {info.input_tensor} {list(info.input_shape)}; {len(info.stage_tensors)} stages "
           f"(theta = {', '.join(info.stage_tensors)}); regressor width {plan.hidden}; batch-norm epsilon "
           f"{', '.join(f'{e:.4g}' for e in eps)} (Keras {KERAS_BN_EPSILON:g}"
           + ("" if all(abs(e - KERAS_BN_EPSILON) < 1e-9 for e in eps) else "; the difference is folded "
              "into moving_variance") + ")")
    values = read_values(files, [t.variable for t in plan.targets] + list(plan.flame.values()))

    head = load_flame(flame_model)
    ref_flame = graph_flame_model(plan, values, f"{files.prefix} (FLAME arrays)") if plan.flame else None
    same_head = ref_flame is None or flame_difference(ref_flame, head) < 1e-6
    config = model_config(info, plan, values)
    net = build_ringnet(head, config)
    assign_weights(net, plan, info, values)
    images = verification_images(info.image_size)
    num_vertices = ref_flame.num_vertices if ref_flame is not None else head.num_vertices
    run = run_original(files, info, images, num_vertices)
    if run.not_importable:
        warn(f"TF {tf.__version__} cannot import {files.meta} ({run.not_importable}): the conversion is NOT "
             f"verified against the original graph")
    elif run.vertices is None:
        warn(f"the graph has no FLAME vertex output ({run.no_vertices_reason}): parameters checked only; "
             f"the output convention is RingNet's documented one (upside-down FLAME about its root joint, "
             f"y-down pixels (x + 1) S / 2), not checked against vertices")
    if ref_flame is not None and not same_head:
        warn(f"your head model {head.source} is not the FLAME inside the checkpoint: the regression (and the "
             f"convention) are RingNet's, the meshes come from your head model; pass --flame_model with "
             f"FLAME 2019's generic_model.pkl for RingNet's meshes")

    conversion = {"tool": "ringnet_tf.convert_original", "checkpoint": str(files.prefix),
                  "input": info.input_tensor, "stages": info.stage_tensors,
                  "bn_epsilon": eps, "flame_model": str(flame_model) if flame_model else None,
                  "head_model_is_checkpoint_flame": bool(ref_flame is not None and same_head)}
    try:
        with staged_dir(out, force) as staging:
            conversion["verification"] = "not verified: " + run.not_importable if run.not_importable else "pending"
            save_compact(net, dataclasses.asdict(config), head.fingerprint(), staging, dtype="float32",
                         extra={"converted_from": str(files.prefix), "conversion": conversion})
            checked = None
            if not run.not_importable:
                # Check what was written: the network as load_predictor builds it from the files.
                predictor = load_predictor(staging, flame_model)
                checked = verify(predictor, run, images, ref_flame, same_head)
                conversion["verification"] = checked.to_json()
                # Only config.json is rewritten with the figures: weights.npz stays the file verified.
                _record_conversion(staging, conversion)
    except OSError as e:
        raise ConversionError(f"cannot write {out}: {e.strerror or e}") from None
    if checked is not None:
        line = (f"verified on {checked.images} images: parameters max |diff| {checked.params:.3g} "
                f"({checked.params_stages} stages, tolerance {PARAMS_TOLERANCE:g})")
        if checked.vertices is not None:
            line += (f"; vertices {checked.vertices:.3g} m via {checked.vertex_path} "
                     f"(tolerance {VERTEX_TOLERANCE:g} m, "
                     f"graph output {checked.vertex_tensor}); projection {checked.pixels:.3g} px; "
                     f"rotation F R_ring {checked.rotation:.3g}")
        report(line)
    seconds = time.perf_counter() - started
    report(f"wrote {out} (config.json, weights.npz float32; pool1 slim, output convention ringnet -> ours) "
           f"in {seconds:.1f} s")
    return Result(Path(out), seconds, checked, lines)


def _record_conversion(folder: Path, conversion: dict[str, Any]) -> None:
    """Replaces the "conversion" entry of the config.json `save_compact` wrote in `folder` (its
    other entries and its format unchanged)."""
    from flame.fileutil import atomic_write
    from ringnet_tf.inference import CONFIG_NAME

    path = folder / CONFIG_NAME
    config = {**json.loads(path.read_text(encoding="utf-8")), "conversion": conversion}
    atomic_write(path, lambda f: f.write(json.dumps(config, indent=2, sort_keys=True).encode()))


def main(argv: list[str] | None = None, stream: TextIO | None = None, err: TextIO | None = None) -> int:
    """The command line; exit codes as `ringnet_tf.cli` (2: nothing converted, one error line)."""
    from ringnet_tf.cli import EXIT_OK, add_flame_model_argument, fail

    stream, err = stream or sys.stdout, err or sys.stderr
    p = argparse.ArgumentParser(prog="python -m ringnet_tf.convert_original",
                                description="Convert RingNet's released TF 1 checkpoint (ring_6_68641) into a "
                                            "compact checkpoint of this project, verified against its graph.")
    p.add_argument("--ckpt", required=True, help="checkpoint prefix, e.g. DIR/ring_6_68641 (the name before "
                                                 ".index / .meta / .data-*), or its folder")
    p.add_argument("--out", required=True, help="new folder for the compact checkpoint")
    add_flame_model_argument(p, help="FLAME 2019 generic_model.pkl (or its folder) for RingNet's meshes; "
                                     "default: the open head model (the regression is RingNet's, the "
                                     "meshes the open head's)")
    p.add_argument("--image_size", type=int, default=None,
                   help="input side, only for a graph whose input placeholder leaves it open")
    p.add_argument("--force", action="store_true", help="replace an existing --out (once the new one is complete)")
    args = p.parse_args(argv)
    from flame.io import FlameFileError
    from ringnet_tf.inference import CheckpointError

    try:
        convert(args.ckpt, args.out, args.flame_model, args.force, args.image_size,
                say=lambda m: print(m, file=stream, flush=True),
                warn=lambda m: print(f"warning: {m}", file=err, flush=True))
    except (ConversionError, FlameFileError, CheckpointError) as e:
        return fail(str(e), file=err)
    return EXIT_OK
