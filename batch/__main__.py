"""``python -m batch`` is the ``batch`` command."""

import sys

from batch.cli import main

sys.exit(main())
