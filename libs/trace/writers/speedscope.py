"""speedscope JSON (https://www.speedscope.app/file-format-schema.json): one *evented* profile
per track, open/close events at the trace's own timestamps, frames shared by name.

Each profile's events must be complete before the file can be written (``endValue`` and the
frame table precede or follow them), so this writer holds the events, O(events).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TextIO

from libs.trace.events import BEGIN, Event

SCHEMA = "https://www.speedscope.app/file-format-schema.json"
UNITS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds", "samples": "none"}


def document(events: Iterable[Event], *, unit: str, name: str = "libs.trace") -> dict:
    frames: dict[str, int] = {}
    profiles: dict[str, dict] = {}
    for ev in events:
        profile = profiles.get(ev.track)
        if profile is None:
            profile = profiles[ev.track] = {
                "type": "evented",
                "name": ev.track,
                "unit": UNITS[unit],
                "startValue": ev.ts,
                "endValue": ev.ts,
                "events": [],
            }
        index = frames.get(ev.name)
        if index is None:
            index = frames[ev.name] = len(frames)
        profile["events"].append({"type": "O" if ev.kind == BEGIN else "C", "frame": index, "at": ev.ts})
        profile["endValue"] = ev.ts
    return {
        "$schema": SCHEMA,
        "name": name,
        "exporter": "proving-ground libs.trace",
        "activeProfileIndex": 0,
        "shared": {"frames": [{"name": frame} for frame in frames]},
        "profiles": list(profiles.values()),
    }


def write(events: Iterable[Event], out: TextIO, *, unit: str, name: str = "libs.trace") -> None:
    json.dump(document(events, unit=unit, name=name), out)
    out.write("\n")
