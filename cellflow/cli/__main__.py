"""``python -m cellflow.cli``."""

import sys

from . import main

sys.exit(main())
