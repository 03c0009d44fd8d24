"""python -m services.inference: HTTP (FastAPI) on --port, gRPC on --grpc-port.

python -m services.inference --help
python -m services.inference hash-key KEY     # print the SHA-256 to put in --tenants
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedding model ships in a package


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hash-key"]:
        if len(argv) != 2:
            print("error: usage: python -m services.inference hash-key KEY", file=sys.stderr)
            return 2
        from services.inference.admission import hash_key

        print(hash_key(argv[1]))
        return 0

    from libs.service.logging import configure_logging
    from libs.service.server import serve
    from libs.service.settings import load_settings
    from services.inference.settings import InferenceSettings

    settings = load_settings(
        InferenceSettings, argv=argv, env_prefix="PG_INFERENCE_", prog="python -m services.inference"
    )
    configure_logging(service="inference", level=settings.log_level)
    try:
        settings.tenant_configs()
    except (ValueError, TypeError) as exc:
        print(f"error: --tenants: {exc}", file=sys.stderr)
        return 2

    from services.inference.app import build_app
    from services.inference.engine_process import EngineStartError, ProcessEngine
    from services.inference.model.hf import CheckpointError
    from services.inference.model.tokenizer import TokenizerError
    from services.inference.model.weights import WeightsError

    try:
        app, runtime = build_app(settings)
        if isinstance(runtime.engine, ProcessEngine):
            # Load the model in the engine process now, not in the app's start-up, so a
            # checkpoint only the child finds broken is one line and exit 2, not a traceback.
            runtime.engine.start()  # idempotent: the app's lifespan start is then a no-op
    except (CheckpointError, TokenizerError, WeightsError, EngineStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from services.inference.app import freeze_startup_objects, raise_sched_group_priority

    freeze_startup_objects()  # full collections stop walking start-up's objects (app.py)
    raise_sched_group_priority(settings.sched_group_nice)  # the CPU first on a shared machine
    return serve(
        app, settings.host, settings.port, drain_timeout=settings.drain_timeout, loop=settings.event_loop
    )


if __name__ == "__main__":
    sys.exit(main())
