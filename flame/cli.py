"""Plumbing every command line shares, the `flame` ones (`python -m flame.sample`) and RingNet's
(through `ringnet_tf.cli`, which adds the checkpoint's): the exit codes, the one-line error, the
`--flame_model` option and TensorFlow's log level. Here, not in ringnet_tf: `flame` imports
nothing from ringnet_tf.

Imports nothing heavy (no TensorFlow): an entry point imports it first, calls
`quiet_tensorflow()`, and only then imports what loads TensorFlow.

Exit codes, the same in every command: 0 done; 1 (where a command processes many items, e.g.
demo.py's images) some items failed and the others were written; 2 bad input: bad usage, a bad
argument, an unreadable or inconsistent file, a refused output path (one `error: ...` line names
it); 130 interrupted. Commands with more outcomes add their own codes above these (train.py: 3
diverged, 4 lost a worker).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

FLAME_MODEL_HELP = "FLAME model file or folder (default: the open head model)"


def quiet_tensorflow(level: str = "2") -> None:
    """Hides TensorFlow's native INFO and WARNING lines (TF_CPP_MIN_LOG_LEVEL) unless the user
    set the variable. Call it before TensorFlow is first imported: the native libraries read
    the variable once, at import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", level)


def add_flame_model_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                             help: str = FLAME_MODEL_HELP) -> None:
    """Adds `--flame_model PATH` (default None: the project's open head model)."""
    parser.add_argument("--flame_model", default=None, help=help)


def fail(message: str, file: TextIO | None = None) -> int:
    """Prints `error: <message>` (one line) to stderr (or `file`); returns EXIT_BAD_INPUT."""
    print(f"error: {message}", file=file or sys.stderr)
    return EXIT_BAD_INPUT
