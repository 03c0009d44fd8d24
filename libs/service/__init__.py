"""What every Proving Ground service shares, one noun per module:

- settings    ServiceSettings + load_settings: env and flags, validated, one-line errors, exit 2
- logging     configure_logging: JSON lines on stderr; request_id_var
- request_id  X-Request-ID in and out (ASGI and aiohttp middleware), one access line per request
- metrics     Prometheus HTTP metrics (FastAPI and aiohttp middleware), get-or-create helpers
- routes      the route-template label that keeps metric cardinality bounded
- health      Health: /healthz, /readyz with named checks and a draining flag
- errors      ApiError and the uniform JSON error body
- app         create_app: FastAPI with all of the above
- server      serve: uvicorn with a graceful drain on SIGTERM/SIGINT
- aiohttp_app instrument_aiohttp + serve_aiohttp: the same for aiohttp apps
- spans       SpanLog: the span log libs.trace reads (docs/formats/span-log.schema.json)

Import from the submodules (`from libs.service.app import create_app`); this package imports
nothing itself so that `libs.service.settings` stays cheap for CLIs.
"""
