"""Writes a random head from a FLAME model as a mesh: `python -m flame.sample --out head.obj`.

Uses the project's open head model unless `--flame_model` names a real FLAME download. Useful to
look at a model, and a smoke test of the whole decoder (files -> TF layer -> mesh file).
Exit codes: `flame.cli`'s (0 done, 2 bad input: a taken --out, an unreadable model, an unwritable mesh).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from flame.cli import EXIT_OK, add_flame_model_argument, fail, quiet_tensorflow


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flame.sample", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output mesh, .obj or .ply")
    add_flame_model_argument(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--num_shape", type=int, default=100, help="identity components used (default 100)")
    p.add_argument("--num_expression", type=int, default=50, help="expression components (default 50)")
    p.add_argument("--shape_std", type=float, default=1.0, help="std of identity coefficients (default 1)")
    p.add_argument("--expression_std", type=float, default=0.0,
                   help="std of expression coefficients (default 0: neutral)")
    p.add_argument("--jaw_deg", type=float, default=0.0, help="jaw opening in degrees (default 0)")
    p.add_argument("--yaw_deg", type=float, default=0.0, help="head yaw in degrees (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.out.exists() and not args.force:
        return fail(f"{args.out} exists; pass --force to overwrite it")
    # Imported here so that --help answers without loading TensorFlow.
    quiet_tensorflow()
    import tensorflow as tf

    from flame.io import FlameFileError, load_flame
    from flame.layer import FlameLayer
    from flame.mesh_io import write_mesh

    try:
        model = load_flame(args.flame_model)
        layer = FlameLayer(model, args.num_shape, args.num_expression)
    except (FlameFileError, ValueError) as e:
        return fail(str(e))
    rng = np.random.default_rng(args.seed)
    shape = args.shape_std * rng.standard_normal((1, args.num_shape))
    expression = args.expression_std * rng.standard_normal((1, args.num_expression))
    pose = np.zeros((1, 6))
    pose[0, 1] = np.radians(args.yaw_deg)
    pose[0, 3] = np.radians(args.jaw_deg)
    out = layer(*(tf.constant(a, tf.float32) for a in (shape, expression, pose)))
    try:
        write_mesh(args.out, out["vertices"][0].numpy(), model.faces)
    except (OSError, ValueError) as e:
        return fail(str(e))
    print(f"wrote {args.out} ({model.num_vertices} vertices, {model.num_faces} faces) "
          f"from {model.source}, fingerprint {model.fingerprint()}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
