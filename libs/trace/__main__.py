"""``python -m libs.trace``: see cli.py."""

import sys

from libs.trace.cli import main

if __name__ == "__main__":
    sys.exit(main())
