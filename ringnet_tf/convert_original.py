"""`python -m ringnet_tf.convert_original --ckpt DIR/ring_6_68641 --out DIR [--flame_model FLAME]`:
RingNet's released TF 1 checkpoint -> a compact checkpoint of this project, verified against its
graph. The converter lives in `ringnet_tf.convert.original` (see its docstring)."""
from __future__ import annotations

import sys

from ringnet_tf.cli import quiet_tensorflow

quiet_tensorflow()

from ringnet_tf.convert.original import ConversionError, convert, main  # noqa: E402

__all__ = ["ConversionError", "convert", "main"]

if __name__ == "__main__":
    sys.exit(main())
