"""RingNet demo: a 3D face (FLAME mesh) from each image: `python demo.py --img face.jpg --out mesh.obj`.

--img takes an image, a folder (searched recursively), a glob, or a video clip. --out names the
mesh for a single image, otherwise a folder (mirroring the input folder's layout). By default the
network's estimate is refined against the detected landmarks (--refine 0: the raw network output).
Several photos of one person (--same_person, --group_by_folder) and a video share one shape.
Uses the bundled default checkpoint and the open head model unless told otherwise; nothing is
downloaded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ringnet_tf.cli import (DEFAULT_CHECKPOINT, EXIT_OK, EXIT_SOME_FAILED, add_flame_model_argument, fail,
                            quiet_tensorflow)

quiet_tensorflow()


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python demo.py", description=__doc__.split("\n")[0])
    p.add_argument("--img", required=True, help="image file, folder or glob")
    p.add_argument("--out", default="out", type=Path,
                   help="mesh file (.obj/.ply) for one image, else a folder (default: out)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="run directory, compact checkpoint or SavedModel (default: the bundled one)")
    p.add_argument("--saved_model", default=None, help="run from a SavedModel directory instead")
    add_flame_model_argument(p)
    p.add_argument("--no_detect", action="store_true",
                   help="no face detection: the original RingNet centre crop")
    p.add_argument("--neutral", action="store_true", help="also write <name>_neutral.obj (zero expression and pose)")
    p.add_argument("--params", action="store_true",
                   help="also write <name>.npz: cam, pose, shape, expression, flame_pose, 68 landmarks "
                        "(photo pixels), 3D and NoW landmarks")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    p.add_argument("--texture", action="store_true",
                   help="also write <name>_textured.obj + .mtl + .png: the photo projected onto the mesh")
    p.add_argument("--flame_texture", default=None, metavar="FLAME_texture.npz",
                   help="with --texture: FLAME's texture space file (its vt/ft UVs; default: an "
                        "automatic unwrapping of the head model, cached)")
    p.add_argument("--now_out", type=Path, default=None,
                   help="also write NoW predictions (neutral mesh .obj + 7 landmarks .npy) under this folder")
    p.add_argument("--refine", type=int, default=None, metavar="N",
                   help="at most N steps of landmark refinement against the detected landmarks "
                        "(default: ringnet_tf.refine.DEFAULT_STEPS with detection, 0 with --no_detect; "
                        "0: the network's raw output)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--same_person", action="store_true",
                       help="all images show one person: fit one shared shape (writes person_neutral.obj "
                            "and person.npz in --out); images that disagree are left out of it")
    group.add_argument("--group_by_folder", action="store_true",
                       help="a folder of person/photo folders: one shared shape per folder")
    video = p.add_argument_group("video (--img clip.mp4, any format OpenCV reads)")
    video.add_argument("--every", type=int, default=1, metavar="N", help="keep every N-th frame (default 1)")
    video.add_argument("--max_frames", type=int, default=None, metavar="N", help="at most N kept frames")
    video.add_argument("--meshes", action="store_true", help="also one mesh per kept frame (<stem>_meshes/)")
    video.add_argument("--smooth", type=float, default=10.0,
                       help="temporal smoothness of pose, expression and camera (default 10; 0: none)")
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
    if args.refine is not None and args.refine < 0:
        return f"--refine must be 0 (off) or a positive number of steps; got {args.refine}"
    if args.every < 1:
        return f"--every must be at least 1; got {args.every}"
    if args.max_frames is not None and args.max_frames < 1:
        return f"--max_frames must be at least 1; got {args.max_frames}"
    if not args.smooth >= 0:
        return f"--smooth must be 0 or more; got {args.smooth}"
    if not str(args.out).strip():
        return "--out is empty"
    if args.flame_texture and not args.texture:
        return "--flame_texture is only used with --texture"
    if args.refine and args.no_detect:
        return "--refine needs detected landmarks; drop --no_detect"
    return None


def _texture_uv(args: argparse.Namespace):
    """The head model's UVs for --texture (FLAME's texture file, or the cached unwrapping)."""
    from flame.io import load_flame
    from flame.uv import load_uv

    return load_uv(load_flame(args.flame_model), args.flame_texture)


def main(argv=None) -> int:
    args = parse(argv)
    problem = _check_args(args)
    if problem:
        return fail(problem)
    from flame.io import FlameFileError
    from ringnet_tf.demo_lib import DemoOptions, VideoOptions, collect_images, run_demo, run_video
    from ringnet_tf.inference import CheckpointError, load_predictor
    from ringnet_tf.refine import DEFAULT_STEPS
    from ringnet_tf.video import VideoError, is_video

    if not args.saved_model and Path(args.checkpoint) == DEFAULT_CHECKPOINT and not DEFAULT_CHECKPOINT.exists():
        return fail(f"no default checkpoint at {DEFAULT_CHECKPOINT} yet; train one with train.py and "
                    f"pass --checkpoint RUN_DIR (see README)")
    steps = args.refine if args.refine is not None else (0 if args.no_detect else DEFAULT_STEPS)
    clip = Path(args.img) if is_video(args.img) else None
    if clip is not None and args.out.suffix.lower() in (".obj", ".ply"):
        return fail(f"--out {args.out}: a video writes several files; give a folder")
    try:
        texture_uv = _texture_uv(args) if args.texture else None
        opts = DemoOptions(texture_uv=texture_uv, neutral=args.neutral, params=args.params, overlay=args.overlay,
                           no_detect=args.no_detect, refine_steps=steps, batch_size=args.batch_size,
                           force=args.force, now_root=args.now_out, mesh_suffix=f".{args.format}",
                           group="all" if args.same_person else "folder" if args.group_by_folder else None)
        if clip is not None:
            predictor = load_predictor(args.saved_model or args.checkpoint, args.flame_model)
            frames = run_video(predictor, clip, args.out, opts,
                               VideoOptions(every=args.every, max_frames=args.max_frames,
                                            meshes=args.meshes, smooth=args.smooth))
            print(f"done: {frames} frame(s) reconstructed")
            return EXIT_OK
        images, root = collect_images(args.img)
        if not images:
            raise FileNotFoundError(f"{args.img}: no images found")
        predictor = load_predictor(args.saved_model or args.checkpoint, args.flame_model)
        ok, failed = run_demo(predictor, images, root, args.out, opts)
    except (FileNotFoundError, FileExistsError, CheckpointError, FlameFileError, VideoError, ImportError) as e:
        return fail(str(e))
    except OSError as e:  # an unwritable --out for a video's outputs
        return fail(f"{e.filename or args.out}: {e.strerror or e}")
    print(f"done: {ok} image(s) written, {failed} failed")
    return EXIT_OK if failed == 0 else EXIT_SOME_FAILED


if __name__ == "__main__":
    sys.exit(main())
