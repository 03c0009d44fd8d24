"""The route TEMPLATE of a request, the one label that keeps metric cardinality bounded.

`/v1/crawls/{crawl_id}`, never `/v1/crawls/8f3a...`; a path no route matched is `<unmatched>`,
so a scanner walking random URLs cannot create a time series per URL.
"""

from __future__ import annotations

from aiohttp import web
from starlette.types import Scope

__all__ = ["UNMATCHED", "aiohttp_route", "asgi_route"]

UNMATCHED = "<unmatched>"


def asgi_route(scope: Scope, root_path: str = "") -> str:
    """Read after the app ran: Starlette's router leaves the matched route in scope["route"].

    A 405 (path matched, method did not) keeps the route's template. Under a Mount the router
    rewrites root_path, so the mount prefix is what root_path grew by.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    prefix = scope.get("root_path", "")[len(root_path) :]
    return prefix + path if prefix and not path.startswith(prefix) else path


def aiohttp_route(request: web.Request) -> str:
    """The matched resource's canonical template (`/pages/{page_id}`), else `<unmatched>`."""
    # A miss (404, and aiohttp's 405) is a MatchInfoError whose SystemRoute has no resource.
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED
    return resource.canonical
