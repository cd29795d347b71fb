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
import os
import sys
import tempfile
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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

    from ringnet_tf.model import BACKBONE_WEIGHTS_HELP, BACKBONES

    # The GPU probe (CUDA's "failed call to cuInit" on a CPU machine) now, not in the absl init
    # callback TensorFlow registers to run before main; it does not set devices up (multiworker).
    tf.config.list_physical_devices("GPU")

F = flags.FLAGS
flags.DEFINE_string("data", None, "dataset directory (manifest form) for training")
flags.DEFINE_string("val_data", None, "dataset directory of held-out identities for validation")
flags.DEFINE_string("out", None, "run directory: checkpoints, logs, final model")
flags.DEFINE_string("flame_model", None, "FLAME model file or folder (default: the open head model)")
# Model.
flags.DEFINE_integer("image_size", 224, "network input size in pixels")
flags.DEFINE_enum("backbone", "resnet50", BACKBONES, "encoder")
flags.DEFINE_string("backbone_weights", "none", BACKBONE_WEIGHTS_HELP)
flags.DEFINE_integer("num_shape", 100, "identity coefficients regressed")
flags.DEFINE_integer("num_expression", 50, "expression coefficients regressed")
flags.DEFINE_integer("num_stages", 3, "iterative error feedback stages")
flags.DEFINE_float("dropout", 0.5, "regressor dropout")
flags.DEFINE_float("init_cam_scale", 7.0, "initial camera scale (normalised units per metre)")
flags.DEFINE_enum("pose_head", "regress", ["regress", "landmarks"],
                  "regress: RingNet's regressed global rotation and camera; landmarks: the pose guidance "
                  "network's 68 predicted 3D landmarks with the pose solved from them (Umeyama)")
# Rings and augmentation.
flags.DEFINE_integer("ring_size", 6, "R: images per ring (R - 1 of one identity, 1 of another)")
flags.DEFINE_integer("rings_per_batch", 2, "rings per training batch")
flags.DEFINE_integer("min_images", 2, "identities with fewer images never anchor a ring")
flags.DEFINE_integer("data_seed", 0, "seed of ring sampling and augmentation")
flags.DEFINE_boolean("augment", True, "scale/shift/rotate/flip/colour augmentation")
# Losses (paper values).
flags.DEFINE_float("w_shape_consistency", 1.0, "lambda_sc")
flags.DEFINE_float("w_landmarks", 60.0, "lambda_proj")
flags.DEFINE_float("w_shape_prior", 1e-4, "lambda_beta")
flags.DEFINE_float("w_expression_prior", 1e-4, "lambda_psi")
flags.DEFINE_float("eta", 0.5, "shape-consistency margin")
flags.DEFINE_float("w_landmarks3d", 0.0, "3D-landmark loss, on images whose dataset has 3D landmarks "
                   "(ground_truth.npz 'landmarks3d'); 0 = off (RingNet)")
flags.DEFINE_float("w_shape_supervised", 0.0, "supervised shape loss (mean neutral-mesh distance in mm "
                   "to the true coefficients' mesh, position and size removed; synthetic data only: a "
                   "pre-training stage); 0 = off")
# Optimisation and running.
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate (the start of the schedule)")
flags.DEFINE_enum("lr_schedule", "constant", ["constant", "cosine"],
                  "learning-rate schedule: constant, or cosine decay to 5% over --num_steps")
flags.DEFINE_integer("seed", 0, "weight initialisation and dropout seed")
flags.DEFINE_integer("num_steps", 1000, "training steps (rounded up to whole checkpoint intervals)")
flags.DEFINE_integer("checkpoint_every", 500, "steps between checkpoints (and validation)")
flags.DEFINE_integer("log_every", 50, "steps between progress lines and TensorBoard scalars")
flags.DEFINE_integer("val_steps", 10, "validation batches per checkpoint")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA for the train step (auto: on with a GPU)")
flags.DEFINE_enum("mixed_precision", "none", ["none", "float16", "bfloat16"], "backbone precision")
flags.DEFINE_enum("distribute", "auto", ["auto", "none", "mirrored", "multiworker"],
                  "tf.distribute strategy (multiworker reads TF_CONFIG)")
flags.DEFINE_boolean("export_saved_model", True, "write a SavedModel at the end")
flags.DEFINE_string("init_from", None, "warm start: a run directory or compact checkpoint of the same "
                    "network whose weights start this run (fine-tuning; the optimizer starts fresh)")
flags.DEFINE_boolean("verbose", False, "keep TensorFlow's and absl's log lines (INFO and up; set "
                     "TF_CPP_MIN_LOG_LEVEL=0 for the native libraries' INFO lines too)")
flags.mark_flags_as_required(["data", "out"])


def config_from_flags():
    from ringnet_tf.data.rings import RingConfig
    from ringnet_tf.model import ModelConfig
    from ringnet_tf.train_lib import TrainConfig
    from ringnet_tf.trainer import LossConfig

    model = ModelConfig(image_size=F.image_size, backbone=F.backbone, num_shape=F.num_shape,
                        num_expression=F.num_expression, num_stages=F.num_stages, dropout=F.dropout,
                        backbone_weights=F.backbone_weights, init_cam_scale=F.init_cam_scale,
                        pose_head=F.pose_head)
    rings = RingConfig(ring_size=F.ring_size, rings_per_batch=F.rings_per_batch, image_size=F.image_size,
                       min_images=F.min_images, seed=F.data_seed, augment=F.augment)
    loss = LossConfig(shape_consistency=F.w_shape_consistency, landmarks=F.w_landmarks,
                      shape_prior=F.w_shape_prior, expression_prior=F.w_expression_prior, eta=F.eta,
                      landmarks3d=F.w_landmarks3d, shape_supervised=F.w_shape_supervised)
    jit = {"auto": None, "true": True, "false": False}[F.jit_compile]
    return TrainConfig(data=F.data, out=F.out, val_data=F.val_data, flame_model=F.flame_model,
                       model=model, rings=rings, loss=loss, learning_rate=F.learning_rate, lr_schedule=F.lr_schedule, seed=F.seed,
                       num_steps=F.num_steps, checkpoint_every=F.checkpoint_every, log_every=F.log_every,
                       val_steps=F.val_steps, jit_compile=jit, mixed_precision=F.mixed_precision,
                       distribute=F.distribute, export_saved_model=F.export_saved_model,
                       init_from=F.init_from)


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
