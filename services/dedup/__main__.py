"""python -m services.dedup: scan, undo, chunks (cli.py) and the page worker (worker.py)."""

import os
import sys

from services.dedup import cli

code = cli.main()
if cli.FAST_EXIT:
    # A one-shot scan has written its report: the interpreter's teardown would only free the
    # scan's objects one by one (~0.1 s at 200k files). Streams flushed, then out at once.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        pass  # the normal exit below reports a stream that cannot be flushed
    else:
        os._exit(code)
sys.exit(code)
