"""``python -m qscale.cli ...`` (and ``torchrun ... -m qscale.cli train ...``)."""

import sys

from qscale.cli.app import main

sys.exit(main())
