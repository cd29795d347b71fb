"""`python -m ringnet_tf.data.prepare`: see the package docstring and --help."""
import sys

from ringnet_tf.data.prepare.cli import main

sys.exit(main())
