"""Plumbing shared by the command lines (demo.py, export.py, train.py, `python -m ringnet_tf.*`,
bench/): `flame.cli`'s exit codes, one-line error, `--flame_model` option and TensorFlow's log
level (re-exported here; see `flame.cli` for the exit codes), plus the bundled checkpoint's place
and RingNet's help texts.

Imports nothing heavy (no TensorFlow): an entry point imports it first, calls
`quiet_tensorflow()`, and only then imports what loads TensorFlow.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from flame import cli as _flame_cli
from flame.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, fail, quiet_tensorflow

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SOME_FAILED", "fail", "quiet_tensorflow",
           "DEFAULT_CHECKPOINT", "FLAME_MODEL_HELP", "BACKBONE_WEIGHTS_HELP", "add_flame_model_argument"]

# The checkpoint the commands use when given none (shipped with the repository).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "ringnet_default"

FLAME_MODEL_HELP = ("FLAME model file or folder the checkpoint was trained with (default: the open "
                    "head model)")
BACKBONE_WEIGHTS_HELP = "none (random init), imagenet (Keras' download; network needed), or a .weights.h5 path"


def add_flame_model_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                             help: str = FLAME_MODEL_HELP) -> None:
    """`flame.cli.add_flame_model_argument`, its help naming the checkpoint's model by default."""
    _flame_cli.add_flame_model_argument(parser, help)
