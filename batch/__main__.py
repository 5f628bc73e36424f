"""``python -m batch`` is the ``batch`` command."""

import sys

from batch.entrypoints.cli import main

sys.exit(main())
