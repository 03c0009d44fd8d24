"""Wiring: settings -> model, KV cache, engine, admission, gateway, jobs -> FastAPI app.

The lifespan starts what needs the event loop (embedding batcher, gRPC server) and stops
everything in reverse order on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI

from libs.service.app import create_app
from libs.service.health import Health
from libs.service.logging import get_logger
from services.inference.admission import Admission, EngineView
from services.inference.api import add_routes
from services.inference.embeddings import EmbeddingBatcher, EmbeddingModel
from services.inference.engine import Engine
from services.inference.gateway import Gateway
from services.inference.jobs import JobStore
from services.inference.model.hf import PagedLM, load_hf_model
from services.inference.model.kv_cache import KVCache
from services.inference.model.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer
from services.inference.model.transformer import ModelConfig, Transformer
from services.inference.model.weights import build_model
from services.inference.scheduler import SchedulerConfig
from services.inference.settings import DEFAULT_MODEL_NAME, InferenceSettings

log = get_logger("services.inference")

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
    engine: Engine
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


def load_served_model(
    s: InferenceSettings, device: str, dtype: torch.dtype
) -> tuple[Transformer | PagedLM, Tokenizer, str]:
    """--model: a Hugging Face checkpoint and its tokenizer. Without --model and --weights, at
    the default shape flags and with --pretrained: the shipped trained checkpoint (pg-small).
    Otherwise the built-in byte model, from --weights or the seeded init."""
    cfg = ModelConfig(
        d_model=s.d_model, n_layers=s.n_layers, n_heads=s.n_heads, d_ff=s.d_ff, max_seq_len=s.max_seq_len
    )
    path, name = s.model, s.model_name
    default_shape = cfg == ModelConfig() and (SHIPPED_DIR / "config.json").is_file()
    if path is None and s.weights is None and s.pretrained and default_shape:
        path = SHIPPED_DIR
        name = SHIPPED_NAME if name == DEFAULT_MODEL_NAME else name
    if path is not None:
        model = load_hf_model(path, device=device, dtype=dtype)
        tokenizer = HFTokenizer(path)
        if name == DEFAULT_MODEL_NAME:
            name = path.resolve().name
        log.info("checkpoint %s loaded (%s, %s)", path, model.cfg.model_type, dtype)
        return model, tokenizer, name
    byte_model = build_model(cfg, seed=s.seed, weights=s.weights, device=device, dtype=dtype)
    return byte_model, ByteTokenizer(), name


def _engine_view(engine: Engine) -> EngineView:
    """What admission's wait estimate reads from the engine (recent steps; may be a step old)."""
    recent = list(engine._recent)
    step_s = sum(dt for _, dt in recent) / len(recent) if recent else 0.0
    cfg, fair = engine.scheduler.cfg, engine.fair
    return EngineView(
        tokens_per_s=engine.tokens_per_s,
        step_s=step_s,
        max_seqs=cfg.max_seqs,
        running=len(engine.scheduler.running),
        vtime=dict(fair.vtime),
        vclock=fair.clock,
        prefill_chunk=cfg.prefill_chunk,
    )


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


def build_runtime(s: InferenceSettings) -> Runtime:
    if s.torch_threads > 0:
        torch.set_num_threads(s.torch_threads)
    device, dtype = pick_device(s)
    model, tokenizer, model_name = load_served_model(s, device, dtype)
    cfg = model.cfg
    cache = make_kv_cache(cfg, s, device, dtype)
    tenants = s.tenant_configs()
    engine = Engine(
        model,
        cache,
        SchedulerConfig(
            max_step_tokens=s.max_step_tokens,
            max_seqs=s.max_seqs,
            prefill_chunk=s.prefill_chunk,
            fair_queueing=s.fair_queueing,
        ),
        weights={t.name: t.weight for t in tenants},
        eos_ids=tokenizer.eos_ids,
        prefix_cache_scope=s.prefix_cache_scope,
    )
    limits = s.limits()
    if cfg.max_seq_len < limits.max_total_tokens:  # a checkpoint's context is shorter
        limits = dataclasses.replace(limits, max_total_tokens=cfg.max_seq_len)
    admission = Admission(
        tenants,
        limits,
        engine_view=lambda: _engine_view(engine),
        waiting_count=lambda: len(engine.fair),
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
        rt.engine.start()
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
        health.set_ready(True)
        log.info("ready", extra={"device": rt.device, "grpc_port": rt.grpc_port})
        try:
            yield
        finally:
            health.set_ready(False)
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
    log.info("embeddings ready")
