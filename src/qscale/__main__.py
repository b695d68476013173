"""``python -m qscale ...``: the command line."""

import sys

from qscale.cli import main

sys.exit(main())
