"""``python -m insider``: the command line (insider.cli), the only place that owns signals and the exit code."""

import sys

from insider.cli import main

if __name__ == "__main__":
    sys.exit(main())
