"""Durable page index: an append-only JSON-lines log of fingerprints, replayed at start.

Only what the index needs is stored (URLs, digests, SimHash, MinHash signature, the content
method's bigram hashes as base64 uint32, crawl id, fetch time), never page text. Each batch
is appended and fsynced before the HTTP response or the stream acknowledgement, so an
acknowledged page survives a crash. A torn last line
(crash mid-append) is skipped on replay; the transport redelivers that page (it was not
acknowledged), and indexing is idempotent per URL.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterable

import numpy as np

from services.dedup.pages.neardup import PageIndex, Prepared

LOG_NAME = "pages.jsonl"


class PageStore:
    def __init__(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, LOG_NAME)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.skipped = 0

    def replay(self, index: PageIndex) -> int:
        """Add every logged page to `index`; returns how many were read."""
        n = 0
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    rec = json.loads(raw)
                    p = Prepared(
                        url=rec["url"],
                        final_url=rec["final_url"],
                        content_sha256=rec["content_sha256"],
                        text_sha256=rec.get("text_sha256"),
                        simhash=rec.get("simhash"),
                        minhash=tuple(rec["minhash"]) if rec.get("minhash") is not None else None,
                        event={"crawl_id": rec.get("crawl_id", ""), "fetched_at": rec.get("fetched_at", 0.0)},
                        features=(
                            np.frombuffer(base64.b64decode(rec["features"]), dtype="<u4").astype(np.uint32)
                            if rec.get("features") is not None
                            else None
                        ),
                    )
                except (ValueError, KeyError, TypeError):
                    self.skipped += 1  # torn or foreign line: never trusted
                    continue
                index.add(p)
                n += 1
        return n

    def append(self, pages: Iterable[Prepared]) -> None:
        lines = []
        for p in pages:
            rec = {
                "url": p.url,
                "final_url": p.final_url,
                "content_sha256": p.content_sha256,
                "text_sha256": p.text_sha256,
                "simhash": p.simhash,
                "minhash": list(p.minhash) if p.minhash is not None else None,
                "crawl_id": p.event.get("crawl_id", ""),
                "fetched_at": p.event.get("fetched_at", 0.0),
                "features": (
                    base64.b64encode(p.features.astype("<u4").tobytes()).decode("ascii")
                    if p.features is not None
                    else None
                ),
            }
            lines.append(json.dumps(rec, separators=(",", ":")))
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode()
        with self._lock:
            os.write(self._fd, data)
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)
