"""``python -m batchscribe``."""

import sys

from batchscribe.cli import main

sys.exit(main())
