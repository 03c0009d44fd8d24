"""No unused imports at start-up: a scan imports neither asyncio (libs.queues loads it only
for its asyncio queue) nor anything a plain scan does not use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.services.dedup.conftest import REPO, write

PROBE = """
import json, sys
from services.dedup.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _modules_of_a_scan(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, timeout=120, check=False
    )
    report = json.loads(proc.stderr.decode().strip().splitlines()[-1])
    assert report["rc"] == 0, proc.stderr
    return set(report["modules"])


def test_a_scan_with_reader_threads_does_not_import_asyncio(tmp_path: Path) -> None:
    for i in range(4):
        write(tmp_path / f"f{i}", b"same bytes" * (1 + i % 2))
    modules = _modules_of_a_scan("scan", "--no-cache", "--no-progress", "--workers", "2", str(tmp_path))
    assert "libs.queues.pool" in modules  # the readers ran on threads
    assert "asyncio" not in modules
    assert "libs.queues.async_bounded" not in modules
    # Nor what only other commands or options use: actions, the hash cache, the worker.
    for unused in ("services.dedup.files.actions", "sqlite3", "services.dedup.worker", "fastapi"):
        assert unused not in modules, unused


def test_the_asyncio_parts_of_libs_queues_still_import_on_use() -> None:
    code = (
        "import asyncio, sys\n"
        "from libs.queues import AsyncBoundedQueue, QueueEmpty, QueueFull\n"
        "from libs.queues.errors import QueueEmpty as E\n"
        "assert QueueEmpty is asyncio.QueueEmpty is E and QueueFull is asyncio.QueueFull\n"
        "assert AsyncBoundedQueue(1).maxsize == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_the_lazy_module_hooks_name_what_they_lack() -> None:
    import asyncio

    import pytest

    from libs import queues
    from libs.queues import errors

    assert queues.__getattr__("QueueFull") is asyncio.QueueFull
    assert errors.__getattr__("QueueEmpty") is asyncio.QueueEmpty
    for module in (queues, errors):
        with pytest.raises(AttributeError, match="no attribute 'Nope'"):
            module.__getattr__("Nope")
