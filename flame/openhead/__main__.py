"""`python -m flame.openhead --out DIR [--force]`: see `flame.openhead.cli`."""
import sys

from flame.openhead.cli import main

sys.exit(main())
