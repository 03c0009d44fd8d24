"""WARC 1.1 output through warcio: a request and a response record per fetch, gzip per record.

Every file starts with a warcinfo record (software, format, crawl, user agent, robots policy), and
its records say WARC/1.1 (warcio writes 1.0 unless asked). robots.txt exchanges are archived too.

The stored payload is the body as received after content decoding, so Content-Encoding and
Transfer-Encoding are dropped from the stored headers and Content-Length is set to what is stored;
a body cut at max_body_bytes carries `WARC-Truncated: length`. Files rotate at `max_bytes`; every
process start opens a new file, so a restarted crawl never appends into a half-written record.
A write that fails (a full disk) cuts the file back to where the exchange began and the next write
opens a new file: nothing half-written stays behind, and the caller may try the same write again.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from importlib import metadata
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from services.crawler.fetcher import FetchResult

_DROP = {"content-encoding", "transfer-encoding", "content-length"}
WARC_VERSION = "1.1"


def _software() -> str:
    try:
        return f"ProvingGround crawler (warcio {metadata.version('warcio')})"
    except metadata.PackageNotFoundError:  # pragma: no cover - warcio is imported above
        return "ProvingGround crawler"


class WarcOutput:
    def __init__(
        self,
        directory: str | Path,
        prefix: str,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        info: dict[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_bytes = max_bytes
        # warcinfo fields (e.g. http-header-user-agent, robots) written at the start of each file
        self.info = dict(info or {})
        self._fh: io.BufferedWriter | None = None
        self._writer: WARCWriter | None = None
        self.path: Path | None = None

    def _open(self) -> None:
        self.close()
        self.path = self.directory / f"{self.prefix}-{uuid.uuid4().hex[:12]}.warc.gz"
        self._fh = self.path.open("ab")
        self._writer = WARCWriter(self._fh, gzip=True, warc_version=WARC_VERSION)
        fields = {
            "software": _software(),
            "format": f"WARC File Format {WARC_VERSION}",
            "conformsTo": "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/",
            "isPartOf": self.prefix,
            "robots": "obey",
            **self.info,
        }
        self._writer.write_record(self._writer.create_warcinfo_record(self.path.name, fields))

    def write(self, result: FetchResult, reason: str = "") -> str:
        """Append the exchange; return the file name it went to.

        On an OSError (ENOSPC) the file is cut back to where this exchange began, closed, and the
        error raised: the next write opens a new file.
        """
        start = 0
        try:
            if self._writer is None or (self._fh is not None and self._fh.tell() >= self.max_bytes):
                self._open()
            assert self._fh is not None
            start = self._fh.tell()
            return self._write(result, reason)
        except OSError:
            self._cut_back(start)
            raise

    def _cut_back(self, size: int) -> None:
        path, fh = self.path, self._fh
        self._fh = None
        self._writer = None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()  # (the flush may fail again; the descriptor is closed all the same)
        if path is None:
            return
        with contextlib.suppress(OSError):
            if size == 0:
                path.unlink()  # nothing complete in it, not even its warcinfo record
            else:
                os.truncate(path, size)

    def _write(self, result: FetchResult, reason: str) -> str:
        assert self._writer is not None and self._fh is not None and self.path is not None
        headers = [(k, v) for k, v in result.headers if k.lower() not in _DROP]
        headers.append(("Content-Length", str(len(result.body))))
        http = StatusAndHeaders(
            f"{result.status} {reason}".strip(), headers, protocol=f"HTTP/{result.http_version}"
        )
        warc_headers = {"WARC-Truncated": "length"} if result.truncated else None
        response = self._writer.create_warc_record(
            result.url,
            "response",
            payload=io.BytesIO(result.body),
            http_headers=http,
            warc_headers_dict=warc_headers,
        )
        target = result.url.split("/", 3)[3] if result.url.count("/") >= 3 else ""
        req_http = StatusAndHeaders(f"GET /{target} HTTP/1.1", result.request_headers, is_http_request=True)
        request = self._writer.create_warc_record(
            result.url, "request", payload=io.BytesIO(b""), http_headers=req_http
        )
        self._writer.write_request_response_pair(request, response)
        self._fh.flush()
        return self.path.name

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = None
        self._writer = None
