"""RingNet-TF: `export.py` (not built yet)."""
import sys

if __name__ == "__main__":
    print("export.py is not built yet: see the project's open issues (FLAME layer and open head model "
          "are ready; try 'python -m flame.sample --out head.obj').", file=sys.stderr)
    sys.exit(2)
