"""``python -m gembatch_async``."""

import sys

from .cli import main

sys.exit(main())
