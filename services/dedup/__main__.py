"""python -m services.dedup: scan, undo, chunks (cli.py) and the page worker (worker.py)."""

import sys

from services.dedup.cli import main

sys.exit(main())
