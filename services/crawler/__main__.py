"""python -m services.crawler            control API (FastAPI, port 8081)
python -m services.crawler crawl ...  one-shot crawl with a progress bar (see `crawl --help`)
python -m services.crawler worker --redis URL   one of several workers on crawls kept in Redis"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["crawl"]:
        from services.crawler.cli import main as crawl_main

        return crawl_main(argv[1:])
    if argv[:1] == ["worker"]:
        from services.crawler.worker import main as worker_main

        return worker_main(argv[1:])
    from services.crawler.api import main as api_main

    return api_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
