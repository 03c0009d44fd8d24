"""A light client in its own process that times the server's answers while a drill overloads it.

The overload generator keeps hundreds of streams open in one Python process on the same small
machine; its own event loop falls behind, and a 429 that left the server in 10 ms is timed by it
at tens of seconds. This probe sends a sparse, steady stream of interactive requests from a
separate process (its own interpreter and GIL; the drill starts it in its own session, so its
own scheduling group) and times each answer's head: what a user whose request arrives during
the overload sees. Each request carries X-Request-ID `probe-<start>-<i>`, reported with its head,
so the server's access log gives the server's own time for the same request. Prints one JSON
object on stdout.

Every other request carries `deadline_ms: 1`, which admission's wait estimate always exceeds:
the server takes it through the whole path of any rejection (parse, tokenise, estimate, 503 with
Retry-After), so the rejection p99 rests on hundreds of answers. The requests without it are
rejected only when the overload sheds them (a few dozen in a minute), too few for a p99: their
tail is the largest of them. Each head is reported with whether it was such a doomed request.

    python -m loadtests.drills.latency_probe URL SECONDS [RATE] [KEY]
"""

from __future__ import annotations

import json
import sys
import time

import httpx


def probe(base: str, seconds: float, rate: float, key: str) -> dict:
    # status, seconds to the head, doomed (deadline 1 ms), request id (the server's access log
    # line for it carries the same id and the server's own duration)
    heads: list[tuple[int, float, bool, str]] = []
    errors = 0
    plain = {"prompt": "a probe", "max_tokens": 4, "ignore_eos": True, "stream": True}
    doomed = {**plain, "deadline_ms": 1}
    auth = {"Authorization": f"Bearer {key}"}
    run = f"probe-{int(time.time())}"
    start = time.perf_counter()
    n = int(seconds * rate)
    with httpx.Client(base_url=base, timeout=httpx.Timeout(30.0)) as http:
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            body = doomed if i % 2 else plain
            rid = f"{run}-{i}"
            headers = {**auth, "X-Request-ID": rid}
            t0 = time.perf_counter()
            try:
                # the head is the admission decision; the stream is closed at once after it
                with http.stream("POST", "/v1/completions", json=body, headers=headers) as r:
                    heads.append((r.status_code, time.perf_counter() - t0, body is doomed, rid))
            except httpx.HTTPError:
                errors += 1
    return {"heads": heads, "errors": errors}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        base, seconds = argv[0], float(argv[1])
        rate = float(argv[2]) if len(argv) > 2 else 10.0
    except ValueError as exc:
        print(f"error: SECONDS and RATE are numbers ({exc})", file=sys.stderr)
        return 2
    key = argv[3] if len(argv) > 3 else "dev-bob-key"
    print(json.dumps(probe(base, seconds, rate, key)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
