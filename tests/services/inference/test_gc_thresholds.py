"""The server spaces its full collections out once started (app.GC_THRESHOLDS): under drill 5's
overload Python's default ran one every ~7 s, each a 24-137 ms stall of the event loop."""

from __future__ import annotations

import subprocess
import sys

from deploy.topology import ROOT


def test_the_startup_freeze_sets_the_servers_collector_thresholds():
    code = (
        "import gc\n"
        "from services.inference.app import GC_THRESHOLDS, freeze_startup_objects\n"
        "assert GC_THRESHOLDS[2] > gc.get_threshold()[2], (GC_THRESHOLDS, gc.get_threshold())\n"
        "assert freeze_startup_objects() > 0\n"
        "assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold()\n"
    )
    # its own interpreter: freezing and new thresholds must not leak into the test process
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
