"""Training runs: one typed config, validation before any work, checkpoints with resume, logging.

`train.py` parses flags into a `TrainConfig` and calls `run`. A run directory holds:
  config.json        the resolved configuration (compared on resume; a different run is refused)
  checkpoints/       tf.train checkpoints of the network and the optimizer (every `checkpoint_every`;
                     the newest 3 kept; a damaged one is skipped on resume for the next older)
  tensorboard/       scalars every `log_every` steps, landmark images at every checkpoint
  ringnet.keras      the final network (Keras format)
  saved_model/       the final network as a SavedModel (serving signature: images -> outputs)

A Keras "epoch" here is one checkpoint interval: the step count, the optimizer state and the data
position (ring index = step * rings_per_batch) are all restored from the latest checkpoint.

A run's identity is its config up to RESUMABLE_CHANGES and its own location: paths are compared
resolved (relative or absolute, trailing slash, all the same), and a run directory may be moved.
A non-finite loss or weight stops training (FloatingPointError) before the step's weights reach a
checkpoint.

Several workers (`distribute="multiworker"`, one process per host, each with its own TF_CONFIG):
every worker reads the same ring stream and trains its block of each global batch (the sharding
rule in `ringnet_tf.data.rings`), with BatchNorm statistics over the global batch, so N workers
take the step one worker with the same global batch would. Only the chief (worker 0) writes: the
run directory, config.json, checkpoints, TensorBoard and the final model. The others save their
part of each checkpoint into a private temporary folder that is removed at once, and read the
chief's checkpoints when they resume: `out` must be one location that every worker reads (a shared
filesystem). A worker lost mid-run stops the others with WorkerLostError; rerunning every worker
with the same command resumes from the chief's newest checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np
import tensorflow as tf

from flame.fileutil import atomic_write, check_can_create
from flame.io import load_flame
from ringnet_tf import camera, preprocess
from ringnet_tf.data import dataset as D
from ringnet_tf.export import export_saved_model
from ringnet_tf.data.rings import RingConfig, RingSampler, Shard, dataset_form, open_rings
from ringnet_tf.model import ModelConfig, build_ringnet
from ringnet_tf.progress import Progress
from ringnet_tf.trainer import NONFINITE, LossConfig, RingNetTrainer

# Fields that may change between a run and its resumption (jit_compile: XLA or not, the same maths;
# its default `auto` is saved resolved, so comparing it refused resuming the same command).
RESUMABLE_CHANGES = ("num_steps", "export_saved_model", "log_every", "jit_compile")
# Fields that are paths: compared resolved to absolute, and saved so.
PATH_FIELDS = ("data", "val_data", "flame_model", "init_from")
# Fields that are not the run's identity: the resumable ones, and where the run lives (`out`).
NOT_IDENTITY = RESUMABLE_CHANGES + ("out",)
_CHECKPOINT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line."""


class WorkerLostError(RuntimeError):
    """Another worker of a multi-worker run stopped or became unreachable; the message is one line."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    val_data: str | None = None  # a dataset of held-out identities; None: no validation
    flame_model: str | None = None  # None: the project's open head model
    model: ModelConfig = ModelConfig()
    rings: RingConfig = RingConfig()
    loss: LossConfig = LossConfig()
    learning_rate: float = 1e-4
    # constant, or cosine: decays from learning_rate to 5% of it over num_steps (long runs)
    lr_schedule: str = "constant"
    seed: int = 0  # weight initialisation and dropout (the data's seed is rings.seed)
    num_steps: int = 1000
    checkpoint_every: int = 500
    log_every: int = 50
    val_steps: int = 10
    jit_compile: bool | None = None  # None: on where a GPU is present
    mixed_precision: str = "none"  # none | float16 | bfloat16
    distribute: str = "auto"  # auto | none | mirrored | multiworker
    num_image_summaries: int = 4
    export_saved_model: bool = True  # a SavedModel next to ringnet.keras at the end
    # Warm start: a run directory or compact checkpoint of the same network whose weights start
    # this run (the optimizer starts fresh). Ignored when the run resumes from its own checkpoint.
    init_from: str | None = None
    # Fine-tuning a trained network with small batches: every BatchNorm layer keeps its moving
    # statistics (inference mode) and its scale and offset, so the features a warm-started
    # regressor learnt to read do not shift with each batch's statistics (Keras's advice for
    # fine-tuning). The convolutions still train.
    freeze_batchnorm: bool = False
    # Fine-tuning part of the backbone: its layers before the first one whose name starts with
    # this stay fixed (e.g. "conv5_block1": ResNet-50's last stage and the regressor train; the
    # backward pass then stops at 4 x 4 features: at 128 px on 2 cores 11.8 img/s, against about
    # 5 for the whole backbone).
    # None: the whole backbone trains.
    train_backbone_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_json(self) -> dict[str, Any]:
        """to_json with PATH_FIELDS (and `out`) absolute: what config.json stores and resume compares."""
        d = self.to_json()
        return {**d, **{k: _absolute(d[k]) for k in (*PATH_FIELDS, "out") if d.get(k)}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["model"] = ModelConfig(**d["model"])
        d["rings"] = RingConfig(**d["rings"])
        d["loss"] = LossConfig(**d["loss"])
        return cls(**d)


def _absolute(path: str) -> str:
    """`path` absolute, normalised (no trailing slash, `..` and symlinks resolved)."""
    return str(Path(path).expanduser().resolve())


def _identity(d: dict[str, Any]) -> dict[str, Any]:
    """The fields of a config dict that make a run's identity, paths resolved.

    A relative path in an older config.json is resolved against the current directory (runs
    written now store absolute paths).
    """
    return {k: (_absolute(v) if k in PATH_FIELDS and v else v) for k, v in d.items()
            if k not in NOT_IDENTITY}


def _check_out(out: str) -> None:
    """--out must be a directory, or creatable as one; raises ConfigError (one line)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory (--out)")
    if not path.exists():
        try:
            check_can_create(path)
        except OSError as e:
            raise ConfigError(f"{e} (--out)") from None


LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISIONS = ("none", "float16", "bfloat16")
STRATEGIES = ("auto", "none", "mirrored", "multiworker")


def learning_rate_schedule(config: TrainConfig) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate: a constant, or a cosine decay to 5% over the run's steps
    (the step count of the optimizer, so a resumed run continues on the same curve)."""
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, max(config.num_steps, 1), alpha=0.05)
    return config.learning_rate


def validate(config: TrainConfig) -> None:
    """Checks everything that can be checked before any work starts; raises ConfigError."""
    if config.rings.image_size != config.model.image_size:
        raise ConfigError(f"ring image_size {config.rings.image_size} != model image_size {config.model.image_size}")
    for name in ("num_steps", "checkpoint_every", "log_every", "val_steps"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1; got {getattr(config, name)}")
    if config.mixed_precision not in MIXED_PRECISIONS:
        raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}; got {config.mixed_precision!r}")
    if config.distribute not in STRATEGIES:
        raise ConfigError(f"distribute must be one of {', '.join(STRATEGIES)}; got {config.distribute!r}")
    if not config.learning_rate > 0:
        raise ConfigError(f"learning_rate must be positive; got {config.learning_rate}")
    if config.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {config.lr_schedule!r}")
    for flag, path in [("data", config.data)] + ([("val_data", config.val_data)] if config.val_data else []):
        if not Path(path).exists():
            raise ConfigError(f"{path}: does not exist (--{flag})")
        try:
            if dataset_form(path) == "manifest":
                records = D.read_manifest(path)
                RingSampler([r.identity for r in records], config.rings, str(Path(path) / D.MANIFEST_NAME))
            else:  # the TFRecord form
                D.tfrecord_files(path)
                count = D.read_meta(path)["tfrecords"]["num_identities"]
                if count < 2:
                    raise ConfigError(f"{path}: {count} identity; rings need at least 2")
        except ValueError as e:  # DatasetError is a ValueError too
            raise ConfigError(str(e)) from None
    if config.init_from is not None and not Path(config.init_from).exists():
        raise ConfigError(f"{config.init_from}: does not exist (--init_from)")
    _check_out(config.out)
    saved = Path(config.out) / "config.json"
    if saved.exists():
        try:
            previous = _identity(json.loads(saved.read_text()))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{saved}: unreadable ({e}); choose another --out") from None
        current = _identity(config.to_json())
        diff = sorted(k for k in current if previous.get(k) != current[k])
        if diff:
            raise ConfigError(f"{config.out} holds another run's checkpoints (its config differs in "
                              f"{', '.join(diff)}); choose another --out or resume with the same settings")


def _strategy(name: str) -> tf.distribute.Strategy:
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: the only one, or the chief of a cluster."""
    return bool(strategy.extended.should_checkpoint)


def _worker_name(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    return f"{resolver.task_type} {resolver.task_id}" if resolver is not None and resolver.task_type else "worker 0"


def _rings_for(strategy: tf.distribute.Strategy, path: str, config: RingConfig, start_ring: int = 0):
    """The ring batches a strategy trains on: the dataset itself on one device; on several, each
    input pipeline (one per worker) builds its shard of the same stream (rings.Shard)."""
    if strategy.num_replicas_in_sync == 1:
        return open_rings(path, config, start_ring)

    def pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
        shard = Shard(context.input_pipeline_id, context.num_input_pipelines,
                      context.get_per_replica_batch_size(config.rings_per_batch))
        return open_rings(path, config, start_ring, shard=shard)

    return strategy.distribute_datasets_from_function(pipeline)


def _batchnorm_layers(net: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of `net`, nested models included."""
    return [layer for layer in net._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def freeze_batchnorm(net: keras.Model) -> None:
    """Puts every BatchNormalization layer of `net` in inference mode for training: a
    non-trainable Keras 3 BatchNormalization normalises with its moving statistics and updates
    nothing."""
    for layer in _batchnorm_layers(net):
        layer.trainable = False


def freeze_backbone_before(net: keras.Model, prefix: str) -> None:
    """Makes the backbone's layers before the first one named `prefix...` non-trainable (their
    BatchNorm layers then normalise with their moving statistics); raises ConfigError when no
    backbone layer has that prefix."""
    layers = net.get_layer("backbone").layers
    first = next((i for i, layer in enumerate(layers) if layer.name.startswith(prefix)), None)
    if first is None:
        raise ConfigError(f"--train_backbone_from {prefix!r}: no backbone layer's name starts with "
                          f"it (e.g. {layers[-1].name!r})")
    for layer in layers[:first]:
        layer.trainable = False


def _synchronise_batchnorm(net: keras.Model, on: bool) -> None:
    """BatchNorm statistics over the global batch (all replicas) or each replica's own; the saved
    model keeps the default (off: one device has nothing to synchronise)."""
    for layer in _batchnorm_layers(net):
        layer.synchronized = on


def _agreed_step(strategy: tf.distribute.Strategy, step: int) -> int:
    """The restored step, checked equal on every worker: a worker that sees other checkpoints
    (`out` not shared) would train other weights in the same collective."""
    if strategy.num_replicas_in_sync == 1:
        return step
    value = tf.constant(float(step))
    per_replica = strategy.run(lambda: tf.identity(value))
    total = int(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy())
    if total != step * strategy.num_replicas_in_sync:
        raise ConfigError(f"the workers restored different checkpoints (this one: step {step}); --out "
                          f"must be one location every worker reads, e.g. a shared filesystem")
    return step


_LOST_WORKER = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                tf.errors.CancelledError, tf.errors.InternalError)


def _losses(logs: dict[str, Any] | None) -> dict[str, Any]:
    """The logs without the train step's NONFINITE flag (not a loss: never printed or plotted)."""
    return {k: v for k, v in (logs or {}).items() if k != NONFINITE}


class _Progress(keras.callbacks.Callback):
    """Training's log through the one reporter (`progress.Progress`): a line every `every` steps
    (`step n/N  losses  rate img/s`), its figures also to TensorBoard.

    Stops on a non-finite loss or weight, checked every step (before the interval's checkpoint,
    which is written at the epoch's end, so no checkpoint holds the diverged weights).
    """

    def __init__(self, every: int, images_per_step: int, total: int, writer, stream=sys.stdout,
                 manager: tf.train.CheckpointManager | None = None):
        super().__init__()
        self.every, self.images_per_step, self.total, self.stream = every, images_per_step, total, stream
        self.writer, self.manager = writer, manager
        self.progress: Progress | None = None

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        loss = float(logs["loss"])
        if not math.isfinite(loss) or float(logs.get(NONFINITE, 0.0)) > 0:
            self.model.stop_training = True
            what = f"loss became {loss}" if not math.isfinite(loss) else \
                f"weights became non-finite (loss {loss:.4g})"
            latest = self.manager.latest_checkpoint if self.manager is not None else None
            kept = f"the last checkpoint {latest} is intact" if latest else "no checkpoint was written"
            raise FloatingPointError(f"{what} at step {step}; training stopped, {kept}: lower "
                                     f"--learning_rate or check the data")
        logs = _losses(logs)
        if self.progress is None:
            # Rates count from the first step's end: that step holds tracing and compilation.
            self.progress = Progress(self.total, "step", stream=self.stream, every=self.every, done=step,
                                     rate_per_unit=self.images_per_step, unit="step", rate_unit="img")
            return
        rate = self.progress.update(step - self.progress.done,
                                    "  ".join(f"{k} {float(v):.4g}" for k, v in logs.items()))
        if rate is not None:
            with self.writer.as_default(step=step):
                for k, v in logs.items():
                    tf.summary.scalar(f"train/{k}", float(v))
                tf.summary.scalar("train/images_per_second", rate)


class _CheckpointAndSummaries(keras.callbacks.Callback):
    """At each interval's end: a checkpoint, and landmark images (predicted red, target green).

    `discard`: a non-chief worker's manager, whose folder is removed right after each save (every
    worker takes part in saving a distributed checkpoint; only the chief's is kept).
    """

    def __init__(self, manager: tf.train.CheckpointManager, writer, sample: dict[str, np.ndarray] | None,
                 image_size: int, discard: bool = False):
        super().__init__()
        self.manager, self.writer, self.sample, self.image_size = manager, writer, sample, image_size
        self.discard = discard

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.manager.save(checkpoint_number=step)
        if self.discard:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        with self.writer.as_default(step=step):
            for k, v in _losses(logs).items():
                tf.summary.scalar(f"interval/{k}", float(v))
            if self.sample is not None:
                tf.summary.image("landmarks", self._draw(), max_outputs=len(self.sample["images"]))
        self.writer.flush()

    def _draw(self) -> np.ndarray:
        images = self.sample["images"]
        out = self.model.net(images, training=False)
        pred = camera.normalised_to_pixels(out["landmarks2d"].numpy(), self.image_size)
        drawn = []
        for img, p, t in zip(images, pred, self.sample["landmarks"]):
            canvas = np.ascontiguousarray(preprocess.denormalise(img))
            for (x, y, c) in t:
                if c > 0:
                    cv2.circle(canvas, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1)
            drawable = np.isfinite(p).all(axis=1) & (np.abs(p) < 1e6).all(axis=1)  # int(nan) raises
            for (x, y) in p[drawable]:
                cv2.circle(canvas, (int(round(x)), int(round(y))), 1, (255, 0, 0), -1)
            drawn.append(canvas)
        return np.stack(drawn)


def _first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (TensorFlow's span many, with node names and stacks)."""
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    line = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _listed_checkpoints(directory: Path, stream, repair: bool = True) -> list[str]:
    """Checkpoint prefixes in `directory`, newest first.

    From the `checkpoint` state file; when that is unreadable (garbage, or missing while
    checkpoints exist), from the ckpt-N.index files, and (if `repair`: the process that owns the
    folder) the state file is rewritten to list them (relative paths, as CheckpointManager
    writes) so the manager that follows keeps rotating them.
    """
    on_disk = sorted(((int(m.group(1)), f"ckpt-{m.group(1)}") for f in directory.glob("ckpt-*.index")
                      if (m := _CHECKPOINT_INDEX.match(f.name))), reverse=True)
    state_file = directory / "checkpoint"
    problem = None
    if state_file.exists():
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")  # get_checkpoint_state logs a parse error as a warning; we say it once
        try:
            state = tf.train.get_checkpoint_state(str(directory))
        except ValueError:  # parses, but names no checkpoint
            state = None
        finally:
            logger.setLevel(level)
        if state is not None:
            listed = [p for p in reversed(state.all_model_checkpoint_paths) if p != state.model_checkpoint_path]
            return [state.model_checkpoint_path, *listed]
        problem = "not a checkpoint state file"
    elif on_disk:
        problem = "missing"
    if problem is None:
        return []  # a new run
    print(f"skipped {state_file}: {problem}; using the {len(on_disk)} ckpt-N.index files there",
          file=stream, flush=True)
    if on_disk and repair:
        names = [name for _, name in reversed(on_disk)]  # oldest first, the newest last
        text = f'model_checkpoint_path: "{names[-1]}"\n' + "".join(
            f'all_model_checkpoint_paths: "{n}"\n' for n in names)
        atomic_write(state_file, lambda f: f.write(text.encode()))
    return [str(directory / name) for _, name in on_disk]


def restore_newest_readable(net: keras.Model, optimizer: keras.optimizers.Optimizer, directory: Path,
                            stream=sys.stdout, repair: bool = True) -> str | None:
    """Restores the newest checkpoint in `directory` that reads whole; returns its prefix.

    A damaged one (truncated or missing data shard, garbage index) is skipped with one line naming
    it and the reason, for the next older (CheckpointManager keeps 3). None: no checkpoint there
    (a new run). Raises ConfigError when there are checkpoints but none reads.
    """
    candidates = _listed_checkpoints(directory, stream, repair)
    for path in candidates:
        # A fresh Checkpoint per attempt: nothing of a failed restore is left queued. A failed one
        # may have assigned some variables; the next restore assigns all (assert_existing_objects_matched).
        attempt = tf.train.Checkpoint(net=net, optimizer=optimizer)
        try:
            attempt.restore(path).assert_existing_objects_matched()
            return path
        except Exception as e:  # noqa: BLE001: damage shows as OpError, IndexError, DecodeError, ...
            print(f"skipped checkpoint {path}: {type(e).__name__}: {_first_line(e)}", file=stream,
                  flush=True)
    if candidates:
        raise ConfigError(f"{directory}: no readable checkpoint ({len(candidates)} damaged); remove the "
                          f"folder to start over, or choose another --out")
    return None


def _without_pose_head(net: keras.Model) -> list:
    """The network's stored weights in order, less those of the pose guidance head (if any)."""
    from ringnet_tf.inference import stored_weights

    try:
        head = {id(w) for w in net.get_layer("pose_head").weights}
    except ValueError:
        head = set()
    return [w for w in stored_weights(net) if id(w) not in head]


def warm_start(net: keras.Model, source: str, model: ModelConfig, flame_model: str | None) -> None:
    """Copies the weights of a trained network of the same architecture into `net`.

    source: a run directory (its ringnet.keras) or a compact checkpoint; its head model must be this
    run's (the fingerprint check of `load_predictor`) and its model config equal `model` up to
    `backbone_weights` (which only matters for a fresh initialisation) and `pose_head` (a pose
    guidance head is new: it keeps its initialisation, the rest is copied). Raises ConfigError.
    """
    from ringnet_tf.inference import CheckpointError, load_predictor

    try:
        predictor = load_predictor(source, flame_model)
    except CheckpointError as e:
        raise ConfigError(f"--init_from: {e}") from None
    theirs = getattr(predictor, "net", None)
    if theirs is None:
        raise ConfigError(f"{source}: a SavedModel cannot start training; give a run directory or "
                          f"a compact checkpoint (--init_from)")
    saved = json.loads((Path(source) / "config.json").read_text())["model"]
    try:  # fields a checkpoint predates take their defaults (what it was built with)
        saved = dataclasses.asdict(ModelConfig(**{**saved, "backbone_weights": model.backbone_weights}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: bad model config ({e})") from None
    mine = dataclasses.asdict(model)
    # pose_head may differ: a new pose guidance head starts from its own initialisation on top of
    # a trained encoder and regressor (which both heads share).
    diff = sorted(k for k in mine if k not in ("backbone_weights", "pose_head") and saved.get(k) != mine[k])
    if diff:
        raise ConfigError(f"{source}: another network (its model config differs in {', '.join(diff)}); "
                          f"--init_from needs the same architecture")
    src, dst = _without_pose_head(theirs), _without_pose_head(net)
    for a, b in zip(src, dst, strict=True):
        if tuple(a.shape) != tuple(b.shape):
            raise ConfigError(f"{source}: weight {b.path} has shape {tuple(a.shape)}, this network "
                              f"{tuple(b.shape)}")
        b.assign(keras.ops.convert_to_numpy(a).astype(b.dtype))


def run(config: TrainConfig, stream=sys.stdout) -> dict[str, Any]:
    """Trains (or resumes) a run; returns the final metrics and the paths written.

    Raises ConfigError (a run that cannot start), FloatingPointError (diverged), WorkerLostError
    (a multi-worker run lost a worker).
    """
    validate(config)
    out = Path(config.out)
    strategy = _strategy(config.distribute)  # first: collectives are set up before any TF op runs
    flame = load_flame(config.flame_model)
    replicas = strategy.num_replicas_in_sync
    if config.rings.rings_per_batch % replicas:
        raise ConfigError(f"rings_per_batch {config.rings.rings_per_batch} is not divisible by the "
                          f"{replicas} devices")
    chief = _is_chief(strategy)
    # A non-chief worker writes its part of each checkpoint here (removed at once) and prints
    # nothing but errors: the chief reports the run.
    private = None if chief else Path(tempfile.mkdtemp(prefix="ringnet_tf_worker_"))
    policy = keras.mixed_precision.global_policy()
    if config.mixed_precision != "none":  # for the network built here; the caller's is restored
        keras.mixed_precision.set_global_policy(f"mixed_{config.mixed_precision}")
    try:
        with contextlib.nullcontext(stream) if chief else open(os.devnull, "w") as quiet:
            return _run(config, out, flame, strategy, chief, private, quiet, stream)
    except _LOST_WORKER as e:
        if getattr(strategy, "cluster_resolver", None) is None or not strategy.cluster_resolver.task_type:
            raise  # one process: not a lost peer, TensorFlow's own error
        latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
        kept = f"the newest checkpoint is {latest}" if latest else "no checkpoint was written"
        # TensorFlow has logged the cause (the peer's address, the gRPC status) just before.
        raise WorkerLostError(f"{_worker_name(strategy)}: lost contact with another worker "
                              f"({type(e).__name__}); training stopped, {kept}; rerun every worker "
                              f"with the same command to resume") from None
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


def _run(config: TrainConfig, out: Path, flame, strategy: tf.distribute.Strategy, chief: bool,
         private: Path | None, stream, loud) -> dict[str, Any]:
    """`run` after its checks: `stream` gets the progress (nowhere on a non-chief worker), `loud`
    the last line."""
    jit = config.jit_compile if config.jit_compile is not None else bool(tf.config.list_logical_devices("GPU"))
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        net = build_ringnet(flame, config.model)
        if config.freeze_batchnorm:
            freeze_batchnorm(net)
        if config.train_backbone_from:
            freeze_backbone_before(net, config.train_backbone_from)
        trainer = RingNetTrainer(net, config.loss)
        optimizer = keras.optimizers.Adam(learning_rate_schedule(config))
        trainer.compile(optimizer=optimizer, jit_compile=jit)
        optimizer.build(trainer.trainable_variables)
    resolved = {**config.resolved_json(), "flame_fingerprint": flame.fingerprint(), "jit_compile": jit}
    saved = out / "config.json"
    if saved.exists() and json.loads(saved.read_text()).get("flame_fingerprint") != flame.fingerprint():
        raise ConfigError(f"{out} was trained with another head model (fingerprint differs)")
    if chief:
        try:  # created only now: a run that cannot start (bad head model, devices) leaves nothing behind
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{out}: cannot create the run directory ({e.strerror or e}) (--out)") from None
        try:
            atomic_write(saved, lambda f: f.write(json.dumps(resolved, indent=2, sort_keys=True).encode()))
        except OSError as e:
            raise ConfigError(f"{saved}: cannot write ({e.strerror or e}) (--out)") from None

    ckpt_dir = out / "checkpoints"
    restored = restore_newest_readable(net, optimizer, ckpt_dir, stream, repair=chief) if ckpt_dir.is_dir() else None
    ckpt = tf.train.Checkpoint(net=net, optimizer=optimizer)
    manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir if chief else private / "checkpoints"),
                                         max_to_keep=3 if chief else 1)
    if restored is None and config.init_from is not None:  # a warm start only for a new run
        warm_start(net, config.init_from, config.model, config.flame_model)
        print(f"weights initialised from {config.init_from}", file=stream, flush=True)
    step0 = _agreed_step(strategy, int(optimizer.iterations.numpy()))
    if step0:
        print(f"resuming {out} at step {step0} ({Path(restored or '?').name})", file=stream, flush=True)
    final: dict[str, float] = {}
    if step0 >= config.num_steps:
        # Already trained that far (e.g. stopped by hand, then finished with a smaller
        # --num_steps): just write the final model from the latest checkpoint.
        print(f"{out} already trained {step0} steps (num_steps {config.num_steps}); writing the "
              f"final model", file=stream, flush=True)
    else:
        rings_cfg = config.rings
        train_ds = _rings_for(strategy, config.data, rings_cfg, start_ring=step0 * rings_cfg.rings_per_batch)
        val_ds, sample = None, None
        if config.val_data:
            val_cfg = dataclasses.replace(rings_cfg, augment=False, seed=rings_cfg.seed + 1)
            val_ds = _rings_for(strategy, config.val_data, val_cfg)
            if chief:
                # On one device val_ds is that dataset: no second pipeline to build.
                single = strategy.num_replicas_in_sync == 1
                first = next(iter((val_ds if single else open_rings(config.val_data, val_cfg)).take(1)))
                n = config.num_image_summaries
                sample = {k: v.numpy().reshape(-1, *v.shape[2:])[:n] for k, v in first.items()}
        writer = (tf.summary.create_file_writer(str(out / "tensorboard")) if chief
                  else tf.summary.create_noop_writer())
        interval = config.checkpoint_every
        callbacks = [
            _Progress(config.log_every, rings_cfg.rings_per_batch * rings_cfg.ring_size, config.num_steps,
                      writer, stream, manager),
            _CheckpointAndSummaries(manager, writer, sample, config.model.image_size, discard=not chief),
        ]
        _synchronise_batchnorm(net, strategy.num_replicas_in_sync > 1)
        try:
            history = trainer.fit(
                train_ds, steps_per_epoch=interval, epochs=math.ceil(config.num_steps / interval),
                initial_epoch=step0 // interval, validation_data=val_ds,
                validation_steps=config.val_steps if val_ds is not None else None,
                callbacks=callbacks, shuffle=False, verbose=0)
        finally:
            _synchronise_batchnorm(net, False)
        final = {k: float(v[-1]) for k, v in _losses(history.history).items()}
    step = int(optimizer.iterations.numpy())
    written = []
    if chief:
        net.save(out / "ringnet.keras")
        written.append(out / "ringnet.keras")
        if config.export_saved_model:
            if (out / "saved_model").exists():
                shutil.rmtree(out / "saved_model")  # this run's own previous export
            export_saved_model(net, out / "saved_model")
            written.append(out / "saved_model")
    if chief:
        print(f"done: {step} steps; wrote {', '.join(map(str, written))}", file=stream, flush=True)
    else:
        print(f"done: {step} steps ({_worker_name(strategy)}; the chief writes the run)", file=loud, flush=True)
    return {"step": step, "metrics": final, "out": str(out), "chief": chief}
