"""Toxiproxy's HTTP API over a collection of proxies (aiohttp, same event loop as the proxies).

Routes, bodies and status codes follow Toxiproxy 2.x; errors are {"error": ..., "status": ...}.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any

from aiohttp import web

from deploy.faultproxy.proxy import Proxy, ProxyError
from deploy.faultproxy.toxics import Toxic, ToxicError

VERSION = "2.9.0-proving-ground"
log = logging.getLogger("faultproxy")


class ProxyCollection:
    """Every proxy by name; the one place that creates, replaces and removes them."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.proxies: dict[str, Proxy] = {}
        self.rng = rng or random.Random()

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ProxyError("proxy not found", 404)
        return proxy

    async def add(self, body: object) -> Proxy:
        if not isinstance(body, dict):
            raise ProxyError("bad request body: expected a JSON object")
        for key in ("name", "upstream"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ProxyError(f"missing required field: {key}")
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ProxyError(f"enabled: expected true or false, got {enabled!r}")
        if body["name"] in self.proxies:
            raise ProxyError("proxy already exists", 409)
        proxy = Proxy(body["name"], body.get("listen") or "127.0.0.1:0", body["upstream"], False, self.rng)
        if enabled:
            await proxy.start()
        self.proxies[proxy.name] = proxy
        return proxy

    async def remove(self, name: str) -> None:
        proxy = self.get(name)
        await proxy.stop()
        del self.proxies[name]

    async def populate(self, body: object) -> list[Proxy]:
        """Create each proxy of a list, replacing one of the same name whose addresses differ."""
        if not isinstance(body, list):
            raise ProxyError("bad request body: expected a JSON array of proxies")
        result = []
        for item in body:
            existing = self.proxies.get(str(item.get("name"))) if isinstance(item, dict) else None
            if existing is not None and (
                existing.upstream != item.get("upstream") or item.get("listen") not in (None, existing.listen)
            ):
                await self.remove(existing.name)
                existing = None
            result.append(existing or await self.add(item))
        return result

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        for proxy in self.proxies.values():
            await proxy.start()
            for name in list(proxy.toxics):
                proxy.remove_toxic(name)

    async def close(self) -> None:
        for proxy in self.proxies.values():
            await proxy.stop()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def _body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProxyError(f"bad request body: {exc}") from exc


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProxyError as exc:
        return _json({"error": str(exc), "status": exc.status}, exc.status)
    except ToxicError as exc:
        return _json({"error": str(exc), "status": 400}, 400)


def make_app(proxies: ProxyCollection) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/proxies")
    async def proxy_index(_: web.Request) -> web.Response:
        return _json({name: p.to_json() for name, p in proxies.proxies.items()})

    @routes.post("/proxies")
    async def proxy_create(request: web.Request) -> web.Response:
        proxy = await proxies.add(await _body(request))
        log.info("proxy %s created: %s -> %s", proxy.name, proxy.listen, proxy.upstream)
        return _json(proxy.to_json(), 201)

    @routes.post("/populate")
    async def populate(request: web.Request) -> web.Response:
        created = await proxies.populate(await _body(request))
        return _json({"proxies": [p.to_json() for p in created]}, 201)

    @routes.get("/proxies/{proxy}")
    async def proxy_show(request: web.Request) -> web.Response:
        return _json(proxies.get(request.match_info["proxy"]).to_json())

    async def proxy_update(request: web.Request) -> web.Response:
        proxy = proxies.get(request.match_info["proxy"])
        body = await _body(request)
        if not isinstance(body, dict):
            raise ProxyError("bad request body: expected a JSON object")
        await proxy.update(body)
        log.info("proxy %s updated: enabled=%s", proxy.name, proxy.enabled)
        return _json(proxy.to_json())

    @routes.delete("/proxies/{proxy}")
    async def proxy_delete(request: web.Request) -> web.Response:
        await proxies.remove(request.match_info["proxy"])
        return web.Response(status=204)

    @routes.get("/proxies/{proxy}/toxics")
    async def toxic_index(request: web.Request) -> web.Response:
        proxy = proxies.get(request.match_info["proxy"])
        return _json([t.to_json() for t in proxy.toxics.values()])

    @routes.post("/proxies/{proxy}/toxics")
    async def toxic_create(request: web.Request) -> web.Response:
        proxy = proxies.get(request.match_info["proxy"])
        toxic = Toxic.from_json(await _body(request))
        proxy.add_toxic(toxic)
        return _json(toxic.to_json())

    @routes.get("/proxies/{proxy}/toxics/{toxic}")
    async def toxic_show(request: web.Request) -> web.Response:
        return _json(_toxic(request).to_json())

    async def toxic_update(request: web.Request) -> web.Response:
        toxic = _toxic(request)
        toxic.update(await _body(request))
        proxies.get(request.match_info["proxy"]).changed()
        return _json(toxic.to_json())

    @routes.delete("/proxies/{proxy}/toxics/{toxic}")
    async def toxic_delete(request: web.Request) -> web.Response:
        proxies.get(request.match_info["proxy"]).remove_toxic(request.match_info["toxic"])
        return web.Response(status=204)

    @routes.post("/reset")
    async def reset(_: web.Request) -> web.Response:
        await proxies.reset()
        log.info("reset: every proxy enabled, every toxic removed")
        return web.Response(status=204)

    @routes.get("/version")
    async def version(_: web.Request) -> web.Response:
        return _json({"version": VERSION})

    def _toxic(request: web.Request) -> Toxic:
        proxy = proxies.get(request.match_info["proxy"])
        toxic = proxy.toxics.get(request.match_info["toxic"])
        if toxic is None:
            raise ProxyError("toxic not found", 404)
        return toxic

    for method in ("POST", "PATCH"):  # Toxiproxy accepts both; POST is what older clients send
        routes.route(method, "/proxies/{proxy}")(proxy_update)
        routes.route(method, "/proxies/{proxy}/toxics/{toxic}")(toxic_update)
    app = web.Application(middlewares=[errors])
    app.add_routes(routes)
    return app
