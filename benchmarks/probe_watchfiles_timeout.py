"""Does RustNotify.watch drop changes when it times out? A probe, not a benchmark.

    .venv/bin/python benchmarks/probe_watchfiles_timeout.py --files 150000 --mode timeout
    .venv/bin/python benchmarks/probe_watchfiles_timeout.py --files 150000 --mode deadline

A writer thread creates --files empty files, pausing 0-2 ms after half of them; the reader
takes changes from watchfiles with 1 ms looks and a ~1-5 ms limit: watchfiles' own timeout
(`timeout`) or the dedup watcher's deadline, raised through the stop event (`deadline`,
services/dedup/files/watch.py Batcher._watch). It prints how many created files were never
reported. Exit 1 if any were lost. Bounded: --files files, then a 0.3 s tail.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time


class _Deadline:
    def __init__(self, until: float) -> None:
        self.until = until

    def is_set(self) -> bool:
        if time.monotonic() > self.until:
            raise TimeoutError
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--mode", choices=["timeout", "deadline"], default="timeout")
    args = ap.parse_args()
    from watchfiles._rust_notify import RustNotify

    d = tempfile.mkdtemp(prefix="watchfiles-probe-")
    notify = RustNotify([d], False, False, 300, True, True)
    done = threading.Event()

    def writer() -> None:
        for i in range(args.files):
            with open(os.path.join(d, f"f{i}"), "w"):
                pass
            if random.random() < 0.5:
                time.sleep(random.random() * 0.002)
        time.sleep(0.3)
        done.set()

    seen: set[str] = set()
    timeouts = 0
    threading.Thread(target=writer, daemon=True).start()
    try:
        while True:
            got: object
            if args.mode == "timeout":
                got = notify.watch(1, 1, 1, None)
            else:
                try:
                    got = notify.watch(1, 1, 0, _Deadline(time.monotonic() + 0.005))
                except TimeoutError:
                    got = "timeout"
            if isinstance(got, set):
                seen |= {p for c, p in got if c == 1}
                continue
            timeouts += 1
            if done.is_set():
                break
    finally:
        notify.close()
        shutil.rmtree(d, ignore_errors=True)
    lost = args.files - len(seen)
    print(f"{args.mode}: created {args.files}, reported {len(seen)}, lost {lost}, timeouts {timeouts}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
