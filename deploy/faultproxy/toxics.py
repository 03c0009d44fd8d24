"""Toxics: what a proxy does to the bytes of one direction of a connection.

A toxic is the JSON object of Toxiproxy's API: {"name", "type", "stream", "toxicity",
"attributes"}. `stream` is "upstream" (client -> server bytes) or "downstream" (server -> client,
the default); `toxicity` is the probability (0..1) that the toxic applies to a given connection,
drawn once per connection. Types and attributes (milliseconds, bytes, KB/s; all default 0):

    latency     latency, jitter    each chunk is held latency +- jitter ms after it arrived
    bandwidth   rate               at most `rate` KB/s (1 KB = 1000 bytes); 0 = unlimited
    slow_close  delay              the close (EOF) is held back `delay` ms
    timeout     timeout            no data passes; the connection is closed after `timeout` ms
                                   (0: never closed); removing the toxic closes the connections
                                   it held, as Toxiproxy does
    reset_peer  timeout            on the first data, wait `timeout` ms, then reset the connection
                                   (TCP RST, "connection reset by peer")
    limit_data  bytes              the connection is closed once `bytes` bytes have passed
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STREAMS = ("upstream", "downstream")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "limit_data": ("bytes",),
}


class ToxicError(ValueError):
    """A toxic's JSON is invalid; the message names the field (HTTP 400)."""


@dataclass
class Toxic:
    name: str
    type: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: dict[str, int] = field(default_factory=dict)

    def attr(self, key: str) -> int:
        return self.attributes.get(key, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_json(cls, body: object) -> Toxic:
        if not isinstance(body, dict):
            raise ToxicError("bad request body: expected a JSON object")
        kind = body.get("type")
        if kind not in ATTRIBUTES:
            raise ToxicError(f"type: invalid toxic type {kind!r}, expected one of {', '.join(ATTRIBUTES)}")
        stream = body.get("stream") or "downstream"
        if stream not in STREAMS:
            raise ToxicError(f"stream: {stream!r} was invalid, can be either upstream or downstream")
        name = body.get("name") or f"{kind}_{stream}"
        if not isinstance(name, str):
            raise ToxicError(f"name: expected a string, got {name!r}")
        toxic = cls(name, kind, stream, 1.0, {key: 0 for key in ATTRIBUTES[kind]})
        toxic.update(body)
        return toxic

    def update(self, body: object) -> None:
        """Apply `toxicity` and `attributes` from an update body (other fields are ignored)."""
        if not isinstance(body, dict):
            raise ToxicError("bad request body: expected a JSON object")
        if "toxicity" in body:
            toxicity = body["toxicity"]
            if isinstance(toxicity, bool) or not isinstance(toxicity, int | float) or not 0 <= toxicity <= 1:
                raise ToxicError(f"toxicity: expected a number from 0 to 1, got {toxicity!r}")
            self.toxicity = float(toxicity)
        attributes = body.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise ToxicError(f"attributes: expected an object, got {attributes!r}")
        values = dict(self.attributes)
        for key, value in attributes.items():
            if key not in ATTRIBUTES[self.type]:
                continue  # Toxiproxy ignores unknown attributes too
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ToxicError(f"attributes.{key}: expected a non-negative number, got {value!r}")
            values[key] = int(value)
        self.attributes = values
