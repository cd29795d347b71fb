"""RingNet demo: a 3D face (FLAME mesh) from each image: `python demo.py --img face.jpg --out mesh.obj`.

--img takes an image, a folder (searched recursively) or a glob. --out names the mesh for a single
image, otherwise a folder (mirroring the input folder's layout). Uses the bundled default
checkpoint and the open head model unless told otherwise; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "ringnet_default"


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python demo.py", description=__doc__.split("\n")[0])
    p.add_argument("--img", required=True, help="image file, folder or glob")
    p.add_argument("--out", default="out", type=Path,
                   help="mesh file (.obj/.ply) for one image, else a folder (default: out)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="run directory, compact checkpoint or SavedModel (default: the bundled one)")
    p.add_argument("--saved_model", default=None, help="run from a SavedModel directory instead")
    p.add_argument("--flame_model", default=None, help="FLAME model the checkpoint was trained with "
                   "(default: the open head model)")
    p.add_argument("--no_detect", action="store_true",
                   help="no face detection: the original RingNet centre crop")
    p.add_argument("--neutral", action="store_true", help="also write <name>_neutral.obj (zero expression and pose)")
    p.add_argument("--params", action="store_true",
                   help="also write <name>.npz: cam, pose, shape, expression, flame_pose, 68 landmarks "
                        "(photo pixels), 3D and NoW landmarks")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    p.add_argument("--now_out", type=Path, default=None,
                   help="also write NoW predictions (neutral mesh .obj + 7 landmarks .npy) under this folder")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="N steps of landmark refinement against the detected landmarks (needs detection)")
    p.add_argument("--batch_size", type=int, default=8, help="images per network call (default 8)")
    p.add_argument("--format", choices=["obj", "ply"], default="obj", help="mesh format for folders (default obj)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    return p.parse_args(argv)


def _check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments, as one line; None if they are usable."""
    if not args.img.strip():
        return "--img is empty: give an image file, a folder or a glob"
    if args.batch_size < 1:
        return f"--batch_size must be at least 1; got {args.batch_size}"
    if args.refine < 0:
        return f"--refine must be 0 (off) or a positive number of steps; got {args.refine}"
    if not str(args.out).strip():
        return "--out is empty"
    return None


def main(argv=None) -> int:
    args = parse(argv)
    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.refine and args.no_detect:
        print("error: --refine needs detected landmarks; drop --no_detect", file=sys.stderr)
        return 2
    from flame.io import FlameFileError
    from ringnet_tf.demo_lib import DemoOptions, collect_images, run_demo
    from ringnet_tf.inference import CheckpointError, load_predictor

    if not args.saved_model and Path(args.checkpoint) == DEFAULT_CHECKPOINT and not DEFAULT_CHECKPOINT.exists():
        print(f"error: no default checkpoint at {DEFAULT_CHECKPOINT} yet; train one with train.py and "
              f"pass --checkpoint RUN_DIR (see README)", file=sys.stderr)
        return 2
    try:
        images, root = collect_images(args.img)
        if not images:
            raise FileNotFoundError(f"{args.img}: no images found")
        predictor = load_predictor(args.saved_model or args.checkpoint, args.flame_model)
        opts = DemoOptions(neutral=args.neutral, params=args.params, overlay=args.overlay,
                           no_detect=args.no_detect, refine_steps=args.refine, batch_size=args.batch_size,
                           force=args.force, now_root=args.now_out, mesh_suffix=f".{args.format}")
        ok, failed = run_demo(predictor, images, root, args.out, opts)
    except (FileNotFoundError, CheckpointError, FlameFileError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {ok} image(s) written, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
