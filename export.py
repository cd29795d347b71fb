"""Export a trained RingNet as a SavedModel: `python export.py --checkpoint DIR --out DIR`.

The SavedModel serves batches of face crops (uint8 or float, any size and batch) and returns
parameters, vertices and landmarks (see ringnet_tf/export.py); load it with tf.saved_model.load,
TF Serving, or `demo.py --saved_model DIR`. Exported from a real FLAME, it contains FLAME's
arrays: do not redistribute it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ringnet_tf.cli import DEFAULT_CHECKPOINT, EXIT_OK, add_flame_model_argument, fail, quiet_tensorflow

quiet_tensorflow()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python export.py", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="run directory or compact checkpoint (default: the bundled one)")
    p.add_argument("--out", required=True, type=Path, help="new SavedModel directory")
    p.add_argument("--compact", action="store_true",
                   help="write a compact checkpoint (config.json + float16 weights.npz, no FLAME arrays) "
                        "instead of a SavedModel, e.g. for checkpoints/ringnet_default")
    add_flame_model_argument(p)
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out (only once the new export is complete)")
    args = p.parse_args(argv)
    from flame.fileutil import check_new_dir, staged_dir
    from flame.io import FlameFileError
    from ringnet_tf.export import export_saved_model
    from ringnet_tf.inference import CheckpointError, KerasPredictor, load_predictor, save_compact

    try:
        # Refuse a taken --out before the slow part (loading); staged_dir checks again before writing.
        check_new_dir(args.out, args.force)
        predictor = load_predictor(args.checkpoint, args.flame_model)
        if not isinstance(predictor, KerasPredictor):
            raise CheckpointError(f"{args.checkpoint}: already a SavedModel")
        if args.compact:
            source = predictor.config
            with staged_dir(args.out, args.force) as staging:
                save_compact(predictor.net, source["model"], source["flame_fingerprint"], staging,
                             extra={"trained_from": str(args.checkpoint),
                                    "training": {k: v for k, v in source.items() if k not in ("model",)}})
            print(f"wrote compact checkpoint {args.out}")
            return EXIT_OK
        out = export_saved_model(predictor.net, args.out, force=args.force)
    except (CheckpointError, FlameFileError, FileExistsError) as e:
        return fail(str(e))
    except OSError as e:  # an unwritable place, --out under a file, a full disk
        detail = str(e) if e.filename is None else f"{e.filename}: {e.strerror}"
        return fail(f"cannot write {args.out}: {detail}")
    print(f"wrote SavedModel {out} (signatures: serving_default, serve, serve_float, neutral, faces)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
