"""An in-repo fault proxy that speaks Toxiproxy's HTTP API, for `make run` (no Docker).

docker compose runs the official Toxiproxy image; `make run` runs this package with the same
flags and the same proxies file (deploy/toxiproxy/proxies.json), so a drill or a Toxiproxy client
(`toxiproxy-python`, chaostoolkit-toxiproxy, curl) drives either one the same way:

    python -m deploy.faultproxy [-host 127.0.0.1] [-port 8474] [-config proxies.json] [-seed N]

HTTP API (JSON bodies; errors are {"error": "...", "status": N}):

    GET    /proxies                          {name: proxy} for every proxy
    POST   /proxies                          create {name, upstream, listen?, enabled?}: 201 (409 exists)
    POST   /populate                         create/replace a list of proxies: 201 {"proxies": [...]}
    GET    /proxies/{proxy}                  the proxy with its toxics
    POST   /proxies/{proxy}   (or PATCH)     update listen / upstream / enabled; enabled=false stops
                                             listening and drops every connection
    DELETE /proxies/{proxy}                  204
    GET    /proxies/{proxy}/toxics           its toxics, in the order they apply
    POST   /proxies/{proxy}/toxics           add {type, name?, stream?, toxicity?, attributes}: 200
    GET    /proxies/{proxy}/toxics/{toxic}   one toxic
    POST   /proxies/{proxy}/toxics/{toxic}   update its toxicity / attributes (or PATCH)
    DELETE /proxies/{proxy}/toxics/{toxic}   204
    POST   /reset                            enable every proxy, remove every toxic: 204
    GET    /version                          {"version": "..."}

A proxy is {"name", "listen": "host:port", "upstream": "host:port", "enabled", "toxics"};
listen "127.0.0.1:0" picks a free port, reported back in "listen". Toxic types and their
attributes are in deploy/faultproxy/toxics.py (latency, bandwidth, slow_close, timeout,
reset_peer, limit_data). The proxies of the stack, one per hop, are named after the hop:
crawler_websim, crawler_redis, crawler_dedup, dedup_redis, inference (clients -> inference).
"""

from deploy.faultproxy.api import ProxyCollection, make_app
from deploy.faultproxy.proxy import Proxy, ProxyError
from deploy.faultproxy.toxics import Toxic, ToxicError

__all__ = ["Proxy", "ProxyCollection", "ProxyError", "Toxic", "ToxicError", "make_app"]
