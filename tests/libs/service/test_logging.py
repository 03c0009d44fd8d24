"""JSON log lines: one object per line, UTC timestamps, request id from the contextvar, extras."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime

import pytest

from libs.service.logging import configure_logging, get_logger, request_id_var


@pytest.fixture
def buffer() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("demo", "DEBUG", stream=stream)
    yield stream
    for handler in list(logging.getLogger().handlers):
        if type(handler).__name__ == "_ServiceHandler":
            logging.getLogger().removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_the_standard_keys(buffer: io.StringIO) -> None:
    log = get_logger("tests.demo")
    log.info("crawl %s started", "c1", extra={"hosts": 3, "seed": "h1"})
    [line] = lines(buffer)
    assert line["level"] == "INFO" and line["service"] == "demo" and line["logger"] == "tests.demo"
    assert line["msg"] == "crawl c1 started" and line["hosts"] == 3 and line["seed"] == "h1"
    assert "request_id" not in line
    ts = datetime.fromisoformat(line["ts"])
    assert line["ts"].endswith("Z") and ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0


def test_request_id_comes_from_the_contextvar(buffer: io.StringIO) -> None:
    log = get_logger("tests.demo")
    token = request_id_var.set("req-42")
    try:
        log.warning("inside")
    finally:
        request_id_var.reset(token)
    log.warning("outside")
    inside, outside = lines(buffer)
    assert inside["request_id"] == "req-42" and "request_id" not in outside


def test_exceptions_stay_on_one_line_and_odd_values_serialise(buffer: io.StringIO) -> None:
    log = get_logger("tests.demo")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("failed", extra={"obj": object(), "path": b"x"})
    text = buffer.getvalue()
    assert text.count("\n") == 1
    [line] = lines(buffer)
    assert line["level"] == "ERROR" and line["exc_type"] == "ValueError"
    assert "Traceback" in line["exc"] and "bad\nthing" in line["exc"]
    assert line["obj"].startswith("<object object")


def test_configure_twice_does_not_duplicate_lines_and_level_filters(buffer: io.StringIO) -> None:
    configure_logging("demo2", "WARNING", stream=buffer)
    log = get_logger("tests.demo")
    log.info("dropped")
    log.error("kept")
    [line] = lines(buffer)
    assert line["msg"] == "kept" and line["service"] == "demo2"


def test_lines_from_many_threads_never_interleave(buffer: io.StringIO) -> None:
    log = get_logger("tests.threads")

    def work(n: int) -> None:
        token = request_id_var.set(f"t{n}")
        for i in range(200):
            log.info("tick", extra={"n": n, "i": i})
        request_id_var.reset(token)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    parsed = lines(buffer)
    assert len(parsed) == 8 * 200
    # each thread's request id stays with that thread's lines
    assert all(line["request_id"] == f"t{line['n']}" for line in parsed)
