"""Export a trained RingNet as a SavedModel: `python export.py --checkpoint DIR --out DIR`.

The SavedModel serves batches of face crops (uint8 or float, any size and batch) and returns
parameters, vertices and landmarks (see ringnet_tf/export.py); load it with tf.saved_model.load,
TF Serving, or `demo.py --saved_model DIR`. Exported from a real FLAME, it contains FLAME's
arrays: do not redistribute it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "ringnet_default"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python export.py", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="run directory or compact checkpoint (default: the bundled one)")
    p.add_argument("--out", required=True, type=Path, help="new SavedModel directory")
    p.add_argument("--compact", action="store_true",
                   help="write a compact checkpoint (config.json + float16 weights.npz, no FLAME arrays) "
                        "instead of a SavedModel, e.g. for checkpoints/ringnet_default")
    p.add_argument("--flame_model", default=None, help="FLAME the checkpoint was trained with "
                   "(default: the open head model)")
    args = p.parse_args(argv)
    from flame.io import FlameFileError
    from ringnet_tf.export import export_saved_model
    from ringnet_tf.inference import CheckpointError, KerasPredictor, load_predictor, save_compact

    try:
        predictor = load_predictor(args.checkpoint, args.flame_model)
        if not isinstance(predictor, KerasPredictor):
            raise CheckpointError(f"{args.checkpoint}: already a SavedModel")
        if args.compact:
            if args.out.exists() and any(args.out.iterdir()):
                raise FileExistsError(f"{args.out}: exists and is not empty")
            source = json.loads((Path(args.checkpoint) / "config.json").read_text())
            out = save_compact(predictor.net, source["model"], source["flame_fingerprint"], args.out,
                               extra={"trained_from": str(args.checkpoint),
                                      "training": {k: v for k, v in source.items() if k not in ("model",)}})
            print(f"wrote compact checkpoint {out}")
            return 0
        out = export_saved_model(predictor.net, args.out)
    except (CheckpointError, FlameFileError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote SavedModel {out} (signatures: serving_default, serve, serve_float, neutral, faces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
