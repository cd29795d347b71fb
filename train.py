"""Train RingNet on ring batches: `python train.py --flagfile=configs/cpu_small.flags`.

Every flag has a default; `--flagfile` reads flags from a file (one `--name=value` per line).
Writes checkpoints, TensorBoard logs, the resolved config, the final Keras model and a SavedModel
to --out; rerunning with the same --out resumes from the latest checkpoint.

Prints only its own lines (progress, resume, done; errors as one `error: ...` line on stderr) unless
--verbose, which keeps TensorFlow's and absl's log lines. Exit codes: 0 done, 2 a bad configuration
or path, 3 training diverged (a non-finite loss or weight; the checkpoints kept are finite), 4 a
multi-worker run lost a worker (rerun every worker to resume).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
from collections.abc import Iterator

from ringnet_tf.cli import quiet_tensorflow  # noqa: E402  (imports no TensorFlow)

quiet_tensorflow()


@contextlib.contextmanager
def _held_stderr(held: list[str]) -> Iterator[None]:
    """Holds what is written to file descriptor 2 meanwhile, appending it to `held`.

    TensorFlow's native libraries log at import and at device setup (oneDNN, CUDA, CPU feature
    lines) straight to the descriptor, before TF_CPP_MIN_LOG_LEVEL applies. If the block raises,
    the held text is written out at once, so nothing that explains the failure is lost.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a detached process): nothing to hold
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            if failed:
                sys.stderr.write(text)
            elif text:
                held.append(text)


_NATIVE_STARTUP_LOG: list[str] = []  # shown with --verbose only
with _held_stderr(_NATIVE_STARTUP_LOG):
    import tensorflow as tf
    from absl import app, flags

    from ringnet_tf.cli import BACKBONE_WEIGHTS_HELP
    from ringnet_tf.model import BACKBONES
    from ringnet_tf.data.rings import RingConfig
    from ringnet_tf.model import OUTPUT_CONVENTIONS, POOL1_KINDS, POSE_HEADS, ModelConfig
    from ringnet_tf.train_lib import LR_SCHEDULES, MIXED_PRECISIONS, STRATEGIES, TrainConfig
    from ringnet_tf.trainer import LossConfig

    # The GPU probe (CUDA's "failed call to cuInit" on a CPU machine) now, not in the absl init
    # callback TensorFlow registers to run before main; it does not set devices up (multiworker).
    tf.config.list_physical_devices("GPU")

F = flags.FLAGS

# Every flag sets fields of the run's configuration (ringnet_tf.train_lib.TrainConfig and the
# model, ring and loss configs inside it); its default and type come from that dataclass, so each
# is stated once. name -> (field paths, help, choices or None). The paths cover every field (a
# test checks it).
FLAG_FIELDS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...] | None]] = {
    "data": (("data",), "dataset directory (manifest or TFRecord form) for training", None),
    "val_data": (("val_data",), "dataset directory of held-out identities for validation", None),
    "out": (("out",), "run directory: checkpoints, logs, final model", None),
    "flame_model": (("flame_model",), "FLAME model file or folder (default: the open head model)", None),
    # Model.
    "image_size": (("model.image_size", "rings.image_size"), "network input size in pixels", None),
    "backbone": (("model.backbone",), "encoder", BACKBONES),
    "backbone_weights": (("model.backbone_weights",), BACKBONE_WEIGHTS_HELP, None),
    "num_shape": (("model.num_shape",), "identity coefficients regressed", None),
    "num_expression": (("model.num_expression",), "expression coefficients regressed", None),
    "num_stages": (("model.num_stages",), "iterative error feedback stages", None),
    "hidden": (("model.hidden",), "regressor hidden units", None),
    "dropout": (("model.dropout",), "regressor dropout", None),
    "init_cam_scale": (("model.init_cam_scale",), "initial camera scale (normalised units per metre)", None),
    "pool1": (("model.pool1",), "ResNet-50's first max pool: keras, or slim (RingNet's released "
              "weights; ringnet_tf/model.py)", POOL1_KINDS),
    "output_convention": (("model.output_convention",), "the regressor's convention: ours, or ringnet "
                          "(RingNet's released weights)", OUTPUT_CONVENTIONS),
    "pose_head": (("model.pose_head",), "regress: RingNet's regressed global rotation and camera; "
                  "landmarks: the pose guidance network's 68 predicted 3D landmarks with the pose "
                  "solved from them (Umeyama)", POSE_HEADS),
    # Rings and augmentation.
    "ring_size": (("rings.ring_size",), "R: images per ring (R - 1 of one identity, 1 of another)", None),
    "rings_per_batch": (("rings.rings_per_batch",), "rings per training batch (the global batch)", None),
    "min_images": (("rings.min_images",), "identities with fewer images never anchor a ring", None),
    "data_seed": (("rings.seed",), "seed of ring sampling and augmentation", None),
    "augment": (("rings.augment",), "scale/shift/rotate/flip/colour augmentation", None),
    "max_scale": (("rings.max_scale",), "augmentation: relative zoom within +-this", None),
    "max_shift": (("rings.max_shift",), "augmentation: translation, fraction of the image side", None),
    "max_rotation_deg": (("rings.max_rotation_deg",), "augmentation: in-plane rotation, degrees", None),
    "flip_probability": (("rings.flip_probability",), "augmentation: probability of a mirror image", None),
    "max_brightness": (("rings.max_brightness",), "colour jitter: brightness, in [0, 1] image units", None),
    "max_contrast": (("rings.max_contrast",), "colour jitter: relative contrast", None),
    "max_saturation": (("rings.max_saturation",), "colour jitter: relative saturation", None),
    # Losses (paper values).
    "w_shape_consistency": (("loss.shape_consistency",), "lambda_sc", None),
    "w_landmarks": (("loss.landmarks",), "lambda_proj", None),
    "w_shape_prior": (("loss.shape_prior",), "lambda_beta", None),
    "w_expression_prior": (("loss.expression_prior",), "lambda_psi", None),
    "eta": (("loss.eta",), "shape-consistency margin", None),
    "w_landmarks3d": (("loss.landmarks3d",), "3D-landmark loss, on images whose dataset has 3D landmarks "
                      "(ground_truth.npz 'landmarks3d'); 0 = off (RingNet)", None),
    "w_shape_supervised": (("loss.shape_supervised",), "supervised shape loss (mean neutral-mesh distance "
                           "in mm to the true coefficients' mesh, position and size removed; synthetic "
                           "data only: a pre-training stage); 0 = off", None),
    "w_shape_coefficients": (("loss.shape_coefficients",), "supervised shape loss on the coefficients "
                             "themselves (mean squared error against the true ones; synthetic data "
                             "only: a pre-training stage); 0 = off", None),
    # Optimisation and running.
    "learning_rate": (("learning_rate",), "Adam learning rate (the start of the schedule)", None),
    "lr_schedule": (("lr_schedule",), "learning-rate schedule: constant, or cosine decay to 5% over "
                    "--num_steps", LR_SCHEDULES),
    "seed": (("seed",), "weight initialisation and dropout seed", None),
    "num_steps": (("num_steps",), "training steps (rounded up to whole checkpoint intervals)", None),
    "checkpoint_every": (("checkpoint_every",), "steps between checkpoints (and validation)", None),
    "log_every": (("log_every",), "steps between progress lines and TensorBoard scalars", None),
    "val_steps": (("val_steps",), "validation batches per checkpoint", None),
    "jit_compile": (("jit_compile",), "XLA for the train step (auto: on with a GPU)", ("auto", "true", "false")),
    "mixed_precision": (("mixed_precision",), "backbone precision", MIXED_PRECISIONS),
    "distribute": (("distribute",), "tf.distribute strategy (multiworker reads TF_CONFIG; README)", STRATEGIES),
    "num_image_summaries": (("num_image_summaries",), "validation images drawn into TensorBoard", None),
    "export_saved_model": (("export_saved_model",), "write a SavedModel at the end", None),
    "init_from": (("init_from",), "warm start: a run directory or compact checkpoint of the same "
                  "network whose weights start this run (fine-tuning; the optimizer starts fresh)", None),
    "freeze_batchnorm": (("freeze_batchnorm",), "BatchNorm layers keep their statistics and scales "
                         "(inference mode) while the rest trains: fine-tuning with small batches", None),
    "train_backbone_from": (("train_backbone_from",), "fine-tune part of the backbone: its layers "
                            "before the first one named so (a prefix, e.g. conv5_block1 for "
                            "ResNet-50's last stage) stay fixed; default: all of it trains", None),
}
_SECTIONS = {"model": ModelConfig, "rings": RingConfig, "loss": LossConfig}
_AUTO = {"auto": None, "true": True, "false": False}  # a bool | None field: auto means None


def _field(path: str) -> dataclasses.Field:
    section, _, name = path.rpartition(".")
    cls = _SECTIONS[section] if section else TrainConfig
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def _define(name: str, paths: tuple[str, ...], help_text: str, choices: tuple[str, ...] | None) -> None:
    """One absl flag for the dataclass field at paths[0], of that field's type and default."""
    field = _field(paths[0])
    default = None if field.default is dataclasses.MISSING else field.default
    kind = str(field.type)  # the annotation's text (postponed evaluation)
    if choices == tuple(_AUTO):
        flags.DEFINE_enum(name, next(k for k, v in _AUTO.items() if v is default), list(choices), help_text)
    elif choices is not None:
        flags.DEFINE_enum(name, default, list(choices), help_text)
    elif kind == "bool":
        flags.DEFINE_boolean(name, default, help_text)
    elif kind == "int":
        flags.DEFINE_integer(name, default, help_text)
    elif kind == "float":
        flags.DEFINE_float(name, default, help_text)
    elif kind in ("str", "str | None"):
        flags.DEFINE_string(name, default, help_text)
    else:
        raise TypeError(f"--{name}: no flag type for a field of type {kind}")


for _name, (_paths, _help, _choices) in FLAG_FIELDS.items():
    _define(_name, _paths, _help, _choices)
flags.DEFINE_boolean("verbose", False, "keep TensorFlow's and absl's log lines (INFO and up; set "
                     "TF_CPP_MIN_LOG_LEVEL=0 for the native libraries' INFO lines too)")
flags.mark_flags_as_required(["data", "out"])


def config_from_flags() -> TrainConfig:
    """The TrainConfig the parsed flags describe (FLAG_FIELDS says which flag sets which field)."""
    values: dict[str, dict] = {"": {}, **{k: {} for k in _SECTIONS}}
    for name, (paths, _, choices) in FLAG_FIELDS.items():
        value = getattr(F, name)
        if choices == tuple(_AUTO):
            value = _AUTO[value]
        for path in paths:
            section, _, field = path.rpartition(".")
            values[section][field] = value
    return TrainConfig(**values[""], **{k: cls(**values[k]) for k, cls in _SECTIONS.items()})


def _quiet_logging(verbose: bool) -> None:
    """Our lines only: TensorFlow's Python logger to errors, absl's to warnings (SavedModel export
    and checkpoint saving log INFO lines through both), and the native startup lines dropped;
    with `verbose`, all of them (the startup lines written now)."""
    import absl.logging

    if verbose:
        absl.logging.set_verbosity(absl.logging.INFO)
        tf.get_logger().setLevel("INFO")
        sys.stderr.write("".join(_NATIVE_STARTUP_LOG))
        return
    absl.logging.set_verbosity(absl.logging.WARNING)
    tf.get_logger().setLevel("ERROR")


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    _quiet_logging(F.verbose)
    from flame.io import FlameFileError
    from ringnet_tf.train_lib import WorkerLostError, run

    try:
        run(config_from_flags())
    except (ValueError, FlameFileError) as e:  # ConfigError, DatasetError, bad sizes
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the disk filled up while writing a checkpoint
        print(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except WorkerLostError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    app.run(main)
