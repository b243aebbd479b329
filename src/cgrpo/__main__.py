"""``python -m cgrpo`` is ``cgrpo``."""

import sys

from cgrpo.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
