"""pytest's log capture, entered as every test phase starts, against a thread creating loggers.

Without the guard in tests/conftest.py (logging's table of loggers with a copying values())
`catching_logs.__enter__` failed with "dictionary changed size during iteration" within about
a hundred entries at a 0.5 ms switch interval (pytest 9.2.0).
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from _pytest.logging import LogCaptureHandler, catching_logs


def test_log_capture_survives_a_thread_creating_loggers() -> None:
    stop = threading.Event()

    def create() -> None:
        i = 0
        while not stop.is_set():
            logging.getLogger(f"race-test.{i}")
            i += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    t = threading.Thread(target=create)
    t.start()
    entries = 0
    try:
        end = time.monotonic() + 1.0  # bounded: about 1,000-10,000 entries
        while time.monotonic() < end:
            with catching_logs(LogCaptureHandler(), level=logging.INFO):
                entries += 1
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
        for name in [n for n in logging.Logger.manager.loggerDict if n.startswith("race-test.")]:
            del logging.Logger.manager.loggerDict[name]
    assert entries > 0
