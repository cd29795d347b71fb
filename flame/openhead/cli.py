"""Command line: `python -m flame.openhead --out DIR [--force]` writes the three files."""
from __future__ import annotations

import argparse
import pathlib
import time

from flame.cli import EXIT_OK, fail
from flame.model import save_flame_files
from flame.openhead.build import OPEN_HEAD_VERSION, build_open_head
from flame.openhead.cache import _MODEL_FILES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flame.openhead",
        description="Generate the open head: a FLAME-format head model made from code (free to "
                    "ship), deterministically. Writes generic_model.pkl, "
                    "flame_static_embedding.pkl and flame_dynamic_embedding.npy, readable by any "
                    "FLAME consumer (smplx too: name the model file FLAME_NEUTRAL.pkl).")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (created if missing)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite model files already in DIR")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    existing = [name for name in _MODEL_FILES if (out / name).exists()]
    if existing and not args.force:
        return fail(f"{out} already holds {', '.join(existing)}; use --force to overwrite")
    start = time.perf_counter()
    model = build_open_head()
    paths = save_flame_files(model, out)
    for role in ("model", "static", "dynamic"):
        print(paths[role])
    print(f"open head {OPEN_HEAD_VERSION}: {model.num_vertices} vertices, {model.num_faces} faces, "
          f"built in {time.perf_counter() - start:.1f} s")
    print(f"fingerprint {model.fingerprint()}")
    return EXIT_OK
