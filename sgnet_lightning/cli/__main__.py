"""``python -m sgnet_lightning.cli``: the ``sgnet`` command, where the console script is not on PATH
(subprocess tests, batch jobs)."""

import sys

from sgnet_lightning.cli import main

sys.exit(main())
