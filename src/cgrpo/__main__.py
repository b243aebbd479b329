"""``python -m cgrpo`` is ``cgrpo``."""

import sys

from cgrpo.cli.main import main

sys.exit(main())
