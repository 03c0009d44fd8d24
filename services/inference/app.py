"""Wiring: settings -> model, KV cache, engine, admission, gateway, jobs -> FastAPI app.

The lifespan starts what needs the event loop (embedding batcher, gRPC server) and stops
everything in reverse order on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from prometheus_client import Histogram

from libs.service.app import create_app
from libs.service.health import Health
from libs.service.logging import get_logger
from services.inference.admission import Admission
from services.inference.api import add_routes
from services.inference.embeddings import EmbeddingBatcher, EmbeddingModel
from services.inference.engine import Engine, EngineAPI
from services.inference.gateway import Gateway
from services.inference.jobs import JobStore
from services.inference.model.hf import HFConfig, PagedLM, load_hf_model, read_config
from services.inference.model.kv_cache import KVCache
from services.inference.model.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer
from services.inference.model.transformer import ModelConfig, Transformer
from services.inference.model.weights import WeightsError, build_model
from services.inference.scheduler import SchedulerConfig
from services.inference.settings import DEFAULT_MODEL_NAME, InferenceSettings

log = get_logger("services.inference")

LOOP_LAG_PERIOD_S = 0.05
LOOP_LAG = Histogram(
    "inference_event_loop_lag_seconds",
    "How late the server's event loop ran a timer due every 50 ms: what every request, stream "
    "and admission decision waits before its next line of code runs (CPU starvation, GIL "
    "hand-offs, long callbacks).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


async def watch_loop_lag(period_s: float = LOOP_LAG_PERIOD_S) -> None:
    """Observe, every `period_s`, how much later than asked the loop woke this task."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + period_s
        await asyncio.sleep(period_s)
        LOOP_LAG.observe(max(0.0, loop.time() - asked))


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(s: InferenceSettings) -> tuple[str, torch.dtype]:
    device = s.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if s.dtype != "auto":
        return device, _DTYPES[s.dtype]
    if device == "cuda":
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


@dataclass
class Runtime:
    settings: InferenceSettings
    engine: EngineAPI  # Engine (a thread here) or ProcessEngine (--engine-process)
    admission: Admission
    gateway: Gateway
    jobs: JobStore
    device: str
    embedder: EmbeddingBatcher | None = None
    grpc_port: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)


# The shipped default model (scripts/train_default_model.py): a Hugging Face checkpoint, flat in
# weights/ (package-data "weights/*").
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_NAME = "pg-small"


def model_source(s: InferenceSettings) -> tuple[Path | None, str]:
    """The checkpoint directory to serve (None: the built-in byte model) and the served name.

    --model: that checkpoint. Without --model and --weights, at the default shape flags and with
    --pretrained: the shipped trained checkpoint (pg-small). Otherwise the byte model."""
    path, name = s.model, s.model_name
    default_shape = _byte_config(s) == ModelConfig() and (SHIPPED_DIR / "config.json").is_file()
    if path is None and s.weights is None and s.pretrained and default_shape:
        path = SHIPPED_DIR
        name = SHIPPED_NAME if name == DEFAULT_MODEL_NAME else name
    if path is not None and name == DEFAULT_MODEL_NAME:
        name = path.resolve().name
    return path, name


def _byte_config(s: InferenceSettings) -> ModelConfig:
    return ModelConfig(
        d_model=s.d_model, n_layers=s.n_layers, n_heads=s.n_heads, d_ff=s.d_ff, max_seq_len=s.max_seq_len
    )


def load_tokenizer(s: InferenceSettings) -> tuple[Tokenizer, str]:
    """The served model's tokenizer and name (the server keeps it: tokenising stays here)."""
    path, name = model_source(s)
    return (HFTokenizer(path) if path is not None else ByteTokenizer()), name


def model_config(s: InferenceSettings) -> ModelConfig | HFConfig:
    """The served model's config without loading its weights (config.json, or the shape flags)."""
    path, _ = model_source(s)
    return read_config(path) if path is not None else _byte_config(s)


def load_model(s: InferenceSettings, device: str, dtype: torch.dtype) -> Transformer | PagedLM:
    """The served model's weights on `device` (the engine's side)."""
    path, _ = model_source(s)
    if path is not None:
        model = load_hf_model(path, device=device, dtype=dtype)
        log.info("checkpoint %s loaded (%s, %s)", path, model.cfg.model_type, dtype)
        return model
    return build_model(_byte_config(s), seed=s.seed, weights=s.weights, device=device, dtype=dtype)


def load_served_model(
    s: InferenceSettings, device: str, dtype: torch.dtype
) -> tuple[Transformer | PagedLM, Tokenizer, str]:
    """The model, its tokenizer and the served name (see model_source)."""
    tokenizer, name = load_tokenizer(s)
    return load_model(s, device, dtype), tokenizer, name


def make_kv_cache(cfg: Any, s: InferenceSettings, device: str, dtype: torch.dtype) -> KVCache:
    """The paged KV cache the settings ask for, shaped for the model config `cfg`."""
    return KVCache(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        num_tokens=s.kv_cache_tokens,
        block_size=s.kv_block_size,
        device=device,
        dtype=dtype,
        prefix_caching=s.prefix_caching,
    )


def build_engine(
    s: InferenceSettings,
    model: Transformer | PagedLM,
    eos_ids: frozenset[int],
    device: str,
    dtype: torch.dtype,
) -> Engine:
    """The engine the settings ask for, around `model` (in this process or the engine's)."""
    return Engine(
        model,
        make_kv_cache(model.cfg, s, device, dtype),
        SchedulerConfig(
            max_step_tokens=s.max_step_tokens,
            max_seqs=s.max_seqs,
            prefill_chunk=s.prefill_chunk,
            fair_queueing=s.fair_queueing,
        ),
        weights={t.name: t.weight for t in s.tenant_configs()},
        eos_ids=eos_ids,
        prefix_cache_scope=s.prefix_cache_scope,
    )


def build_runtime(s: InferenceSettings) -> Runtime:
    """Everything but the servers. With --engine-process the engine is a child process started
    with the app (or by `engine.start()`): nothing here loads model weights then."""
    if s.torch_threads > 0:
        torch.set_num_threads(s.torch_threads)
    device, dtype = pick_device(s)
    tokenizer, model_name = load_tokenizer(s)
    engine: EngineAPI
    if s.engine_process:
        from services.inference.engine_process import ProcessEngine

        if s.weights is not None and not s.weights.is_file():  # said here (exit 2), not in the child
            raise WeightsError(f"weights file not found: {s.weights}")
        cfg: Any = model_config(s)
        engine = ProcessEngine(s, cfg, eos_ids=tokenizer.eos_ids)
    else:
        model = load_model(s, device, dtype)
        cfg = model.cfg
        engine = build_engine(s, model, tokenizer.eos_ids, device, dtype)
    limits = s.limits()
    if cfg.max_seq_len < limits.max_total_tokens:  # a checkpoint's context is shorter
        limits = dataclasses.replace(limits, max_total_tokens=cfg.max_seq_len)
    admission = Admission(
        s.tenant_configs(),
        limits,
        engine_view=engine.view,
        waiting_count=engine.waiting_count,
        admin_key_sha256=s.admin_key_sha256,
    )
    rt: Runtime
    gateway = Gateway(
        engine,
        admission,
        model_name=model_name,
        tokenizer=tokenizer,
        embedder=lambda: rt.embedder,
        embedder_loading=lambda: rt.extras.get("embed_task"),
        input_limits=s.input_limits(),
    )
    rt = Runtime(s, engine, admission, gateway, JobStore(gateway, s.max_jobs), device)
    return rt


def build_app(s: InferenceSettings, rt: Runtime | None = None) -> tuple[FastAPI, Runtime]:
    rt = rt or build_runtime(s)
    health = Health()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(rt.engine.start)  # the engine process: until its model is loaded
        health.add_check("engine", lambda: rt.engine.alive)
        embed_task = None
        if s.embeddings:
            embed_task = rt.extras["embed_task"] = asyncio.create_task(_load_embeddings(rt))
            # Ready once the embedding model has loaded (or failed to: then /v1/embeddings
            # answers 503 and generation still serves); /healthz is up from the start.
            health.add_check("embeddings", lambda: embed_task.done())
        grpc_server = None
        if s.grpc_port >= 0:
            from services.inference.grpc_server import start_grpc

            grpc_server, rt.grpc_port = await start_grpc(rt.gateway, rt.jobs, s.host, s.grpc_port)
        lag_task = asyncio.create_task(watch_loop_lag())
        health.set_ready(True)
        log.info("ready", extra={"device": rt.device, "grpc_port": rt.grpc_port})
        try:
            yield
        finally:
            health.set_ready(False)
            lag_task.cancel()
            if grpc_server is not None:
                await grpc_server.stop(grace=2)
            if embed_task is not None:
                embed_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await embed_task
            if rt.embedder is not None:
                await rt.embedder.stop()
            await rt.jobs.close()
            await asyncio.to_thread(rt.engine.stop)

    app = create_app(
        "inference",
        title="Inference",
        version="0.1.0",
        health=health,
        lifespan=lifespan,
        description="Token-budget continuous batching, admission control, per-tenant fairness.",
    )
    app.state.runtime = rt
    add_routes(app, rt.gateway, rt.jobs)
    return app, rt


# The collector's thresholds once the server runs (gc.set_threshold): Python's (700, 10, 10)
# but a full collection only after 100 collections of the middle generation, not 10. Measured
# under drill 5's overload (thread CPU time in gc.callbacks, one run each): with 10, 8 full
# collections in the minute, 24 ms of CPU each at the median and up to 103 ms, every one of
# them a stall of the event loop that the probe's slowest rejections wait behind; with 100,
# none in the minute (the young generations alike: ~1,000 and ~100 collections, 0.14 and
# 1.4 ms at the median) and RSS as flat (450 MiB). Cyclic garbage that reaches the old
# generation waits longer for its collection; it is still collected.
GC_THRESHOLDS = (700, 10, 100)


def freeze_startup_objects() -> int:
    """Collect once, then move every object alive now (modules, the tokenizer, FastAPI's and
    pydantic's models, torch's state) to the collector's permanent generation, which it never
    scans again, and space full collections out (GC_THRESHOLDS). python -m services.inference
    calls it once the app is built and the engine started (tests do not). Without it each full
    collection walked them all: 0.25-0.35 s of CPU holding the GIL, 0.3-1.8 s of wall time on
    a loaded box, during which no request was answered (the overload drill's slowest
    rejections, one by one). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return gc.get_freeze_count()


AUTOGROUP = "/proc/self/autogroup"


def raise_sched_group_priority(nice: int, path: str = AUTOGROUP, *, leader: bool | None = None) -> int | None:
    """Give this server's scheduling group (Linux autogroup: its session, the engine process
    included) the niceness `nice`, so that on a machine shared with other work its event loop
    gets a CPU when it wakes. python -m services.inference calls it at start-up with
    --sched-group-nice (tests do not).

    Why (drill 5, 3x overload on a 2-core box at load 7-13 from other jobs): the kernel shares
    the CPU between sessions first and between the processes of a session second, so the
    engine's nice 10 ranked it below the server only inside the server's session, and that
    session competed as one equal with every other on the machine. The slowest refusals were
    the server's main thread runnable but not running: 771 of 815 ms, 620 of 770 ms (its
    schedstat over each answer; the server's own time for them 8-15 ms); over the minute it ran
    16.1 s and waited 16.8 s for a CPU. A deployment gives a latency-bound server the same
    precedence (a reserved core, CPU shares); this is that precedence for a local process.
    The engine process shares the group and keeps its own nice 10 inside it: it gets what the
    server leaves of the group's share, so on a loaded machine it computes more than before
    too (drill 5 measures the capacity it then has and offers three times that).

    Applied only where the server leads its own session (`make run` starts each service so;
    otherwise the group is the caller's shell's too) and where the kernel allows it (a negative
    value needs CAP_SYS_NICE: without it nothing changes). Returns the group's niceness now,
    or None where it was left alone. `leader` (tests): whether this process leads its session."""
    if nice == 0:
        return None
    if leader is None:
        leader = os.getsid(0) == os.getpid()
    if not leader:
        log.info("scheduling group left alone: the server does not lead its session", extra={"nice": nice})
        return None
    try:
        with open(path, "w") as fh:
            fh.write(str(nice))
        with open(path) as fh:
            now = int(fh.read().split("nice")[-1])
    except (OSError, ValueError) as exc:
        log.info("scheduling group left alone", extra={"nice": nice, "error": repr(exc)})
        return None
    log.info("scheduling group niceness set", extra={"nice": now})
    return now


async def _load_embeddings(rt: Runtime) -> None:
    s = rt.settings
    try:
        model = await asyncio.to_thread(EmbeddingModel, None, rt.device)
    except Exception as exc:  # the generator keeps serving; /v1/embeddings answers 503
        log.error("embedding model failed to load", extra={"error": repr(exc)})
        return
    batcher = EmbeddingBatcher(
        model,
        max_batch_tokens=s.embed_max_batch_tokens,
        max_batch_texts=s.embed_max_batch_texts,
        max_delay=s.embed_max_delay_ms / 1000,
    )
    batcher.start()
    rt.embedder = batcher
    if gc.get_freeze_count():  # the server froze its start-up objects (__main__): these join
        gc.freeze()  # (no collect first: it would pause serving)
    log.info("embeddings ready", extra={"frozen_objects": gc.get_freeze_count()})
