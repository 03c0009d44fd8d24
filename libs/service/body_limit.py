"""A bound on request bodies, applied before a handler reads (and parses) one.

Every other size limit (texts per request, bytes per prompt, seeds per crawl) is checked after
the body was read and parsed as JSON, on the event loop: a 500 MB body would hold the loop,
and the memory, of every client before any of those limits could say no. This middleware says
413 first: at once when Content-Length is over the bound, or as soon as a chunked body passes
it (read here up to the bound, never past it).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.service.errors import error_response

DEFAULT_MAX_BODY_BYTES = 32 * 2**20


class BodyLimitMiddleware:
    """Pure ASGI; outermost but for request ids and metrics, so a 413 is logged and counted."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:  # the server (h11, httptools) holds the body to its length
            if declared.strip().isdigit() and int(declared) > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # Chunked (no length given): read it here, up to the bound, then hand it over whole;
        # later receive() calls (a stream watching for the client leaving) go to the server.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "payload_too_large",
            f"the request body is larger than {self.max_body_bytes} bytes",
            field="body",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
