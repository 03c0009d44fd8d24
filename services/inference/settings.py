"""Configuration of `python -m services.inference` (flags --x-y, env PG_INFERENCE_X_Y).

Tenants: a JSON object {"name": {"key_sha256": "...", "weight": 1, "requests_per_s": ...}}.
Without one, the dev tenants below are used; their keys are in docs/bench/inference.md and in
`--help`. Keys are only ever stored as SHA-256 digests
(`python -m services.inference hash-key KEY` prints one).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from libs.service.settings import ServiceSettings
from services.inference.admission import DEFAULT_QUEUE_WAIT_S, Limits, TenantConfig

if TYPE_CHECKING:
    from services.inference.gateway import InputLimits

# Dev keys: alice = "dev-alice-key", bob = "dev-bob-key", admin = "dev-admin-key".
DEV_TENANTS: dict[str, dict[str, Any]] = {
    "alice": {"key_sha256": "724c3a14d3ea8b29272df65af1388d5d2f8db3bb8838f97832ee174011b5bd02"},
    "bob": {"key_sha256": "928d0e301fa5359204a65b60c4bd40dc36db8f25a0246e6d0d452b4d676e420a"},
}
DEFAULT_MODEL_NAME = "pg-byte-tiny"
DEV_ADMIN_SHA256 = "df76ff796f70d2c9cb055ea6280553caa27eda26b70e01082c160de75a05a4a9"


class InferenceSettings(ServiceSettings):
    port: int = Field(8000, description="HTTP port")
    grpc_port: int = Field(
        50051, ge=-1, le=65535, description="gRPC port (-1 = no gRPC server, 0 = any free port)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="cuda when present with auto")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights/KV dtype; auto = bfloat16 on cuda, float32 on cpu"
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="torch intra-op threads (0 = torch's default; with --engine-process, the engine "
        "process takes all cores but one, which stays with the HTTP/gRPC server)",
    )
    engine_process: bool = Field(
        True,
        description="run the engine (scheduler, KV cache, model steps) in its own process, so model "
        "steps never hold the HTTP/gRPC server's GIL; off: a thread of the server's process",
    )
    engine_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="niceness the engine process adds to its own (Linux): under CPU contention the "
        "server's answers (admission, streams, health) get the CPU first",
    )
    sched_group_nice: int = Field(
        -10,
        ge=-20,
        le=19,
        description="niceness of the server's scheduling group (Linux autogroup: its session, the "
        "engine included) when it leads its session, as make run starts it: on a machine shared "
        "with other work its answers get a CPU first; negative needs CAP_SYS_NICE (else left "
        "alone); 0 leaves it alone",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="the server's event loop: uvloop (libuv, in C) cuts its CPU per request, which "
        "decides how soon an answer gets a core on a busy machine; asyncio: the standard library's",
    )
    # Model
    d_model: int = Field(128, ge=1, description="model width")
    n_layers: int = Field(4, ge=1, description="transformer layers")
    n_heads: int = Field(4, ge=1, description="attention heads")
    d_ff: int = Field(512, ge=1, description="MLP hidden width")
    max_seq_len: int = Field(1024, ge=1, description="context length (positions)")
    seed: int = Field(0, description="seed for the deterministic weight init")
    weights: Path | None = Field(None, description="load weights from this safetensors file instead")
    pretrained: bool = Field(
        True,
        description="without --weights or --model, serve the shipped trained model (pg-small: a "
        "4-layer Llama-architecture model, BPE, trained on stdlib docstrings) when the shape flags "
        "are their defaults; off: the built-in byte model with seeded random weights",
    )
    model: Path | None = Field(
        None,
        description="serve a Hugging Face checkpoint directory instead of the built-in model "
        "(config.json, *.safetensors, tokenizer.json, tokenizer_config.json; Llama family, Qwen2, "
        "Mistral, GPT-2)",
    )
    model_name: str = Field(
        DEFAULT_MODEL_NAME, description="model id served at /v1/models (with --model: the directory's name)"
    )
    # Scheduler
    kv_cache_tokens: int = Field(16384, ge=1, description="KV-cache budget in tokens")
    kv_block_size: int = Field(16, ge=1, description="tokens per KV block")
    max_step_tokens: int = Field(512, ge=1, description="prefill + decode tokens per engine step")
    max_seqs: int = Field(64, ge=1, description="sequences in the running batch")
    prefill_chunk: int = Field(256, ge=1, description="max prompt tokens one sequence prefills per step")
    fair_queueing: bool = Field(
        True, description="weighted fair queueing across tenants (off: FIFO, for the fairness experiment)"
    )
    prefix_caching: bool = Field(
        True,
        description="automatic prefix caching: full KV blocks of identical prompt prefixes are shared "
        "(by hash, reference-counted) and kept after use until the memory is needed (LRU)",
    )
    prefix_cache_scope: Literal["tenant", "global"] = Field(
        "tenant",
        description="tenant: a tenant's prompts reuse only its own cached blocks (a hit is faster, "
        "so a shared cache would reveal other tenants' prompts); global: all tenants share",
    )
    # Admission
    max_prompt_tokens: int = Field(768, ge=1, description="largest prompt in tokens")
    max_output_tokens: int = Field(256, ge=1, description="largest max_tokens")
    max_prompt_bytes: int = Field(
        262144,
        ge=1,
        description="largest prompt in UTF-8 bytes, checked before tokenising (completions: each "
        "prompt; chat: the message contents together; score: the prompt and each candidate)",
    )
    tokenize_threads: int = Field(
        2, ge=1, description="threads that tokenise prompts and embedding inputs, off the event loop"
    )
    tokenize_max_pending: int = Field(
        256, ge=1, description="tokenisations queued or running before new requests get 503"
    )
    max_waiting: int = Field(2048, ge=1, description="requests waiting for the batch before 503")
    max_queue_wait_interactive: float = Field(
        DEFAULT_QUEUE_WAIT_S["interactive"],
        description="503 at arrival when the tenant's estimated wait for a first step exceeds it, and "
        "503 queue_timeout for an admitted request still waiting at it (s; --queue-timeout-factor); "
        "the 0.5 s time-to-first-token objective less a margin",
    )
    max_queue_wait_batch: float = Field(
        DEFAULT_QUEUE_WAIT_S["batch"], description="same, for the batch class (s)"
    )
    queue_timeout_factor: float = Field(
        1.0,
        gt=0,
        description="an admitted request still waiting for its first step after max(--queue-timeout-min, "
        "this x its class's max queue wait) is dropped with 503 queue_timeout + Retry-After; 1: the "
        "class cap is enforced, not only estimated (the old bound: 2.5 with --queue-timeout-min 5)",
    )
    queue_timeout_min: float = Field(
        0.0, ge=0, description="floor of that queue timeout (s); see --queue-timeout-factor"
    )
    admission_headroom: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="admission admits a queued request only while its estimated wait is within "
        "(1 - this) x its class's max queue wait: the rest is for the engine's step time drifting "
        "over the wait, so an admitted request is not dropped at the cap (503 queue_timeout)",
    )
    tenants: dict[str, dict[str, Any]] | None = Field(
        None, description="tenants as JSON (default: dev alice/bob)"
    )
    admin_key_sha256: str = Field(
        DEV_ADMIN_SHA256, description="SHA-256 of the admin key (dev: dev-admin-key)"
    )
    # Embeddings
    embeddings: bool = Field(True, description="serve /v1/embeddings (loads all-MiniLM-L6-v2)")
    embed_max_batch_tokens: int = Field(8192, ge=1, description="padded tokens per embedding batch")
    embed_max_batch_texts: int = Field(64, ge=1, description="texts per embedding batch")
    embed_max_delay_ms: float = Field(5.0, description="max wait to fill an embedding batch (ms)")
    embed_max_inputs: int = Field(2048, ge=1, description="texts per /v1/embeddings request")
    embed_max_text_bytes: int = Field(
        65536, ge=1, description="UTF-8 bytes per embeddings text (the model reads its first 256 tokens)"
    )
    # Jobs
    max_jobs: int = Field(10000, ge=1, description="finished jobs kept for polling")
    drain_timeout: float = Field(10.0, description="seconds to finish in-flight requests on SIGTERM")

    @model_validator(mode="after")
    def _consistent(self) -> InferenceSettings:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.kv_cache_tokens < self.kv_block_size:
            raise ValueError(
                f"kv_cache_tokens ({self.kv_cache_tokens}) is less than one block ({self.kv_block_size})"
            )
        return self

    def tenant_configs(self) -> list[TenantConfig]:
        raw = self.tenants if self.tenants is not None else DEV_TENANTS
        out = []
        for name, cfg in raw.items():
            if not isinstance(cfg, dict) or "key_sha256" not in cfg:
                raise ValueError(f"tenants.{name}: expected an object with key_sha256")
            out.append(TenantConfig(name=name, **cfg))
        return out

    def input_limits(self) -> InputLimits:
        from services.inference.gateway import InputLimits  # the gateway imports torch; --help does not

        return InputLimits(
            max_prompt_bytes=self.max_prompt_bytes,
            max_embed_inputs=self.embed_max_inputs,
            max_embed_text_bytes=self.embed_max_text_bytes,
            tokenize_threads=self.tokenize_threads,
            tokenize_max_pending=self.tokenize_max_pending,
        )

    def limits(self) -> Limits:
        return Limits(
            max_prompt_tokens=self.max_prompt_tokens,
            max_output_tokens=self.max_output_tokens,
            max_total_tokens=min(self.max_seq_len, self.kv_cache_tokens),
            max_waiting=self.max_waiting,
            max_queue_wait_s={
                "interactive": self.max_queue_wait_interactive,
                "batch": self.max_queue_wait_batch,
            },
            queue_timeout_factor=self.queue_timeout_factor,
            queue_timeout_min_s=self.queue_timeout_min,
            admission_headroom=self.admission_headroom,
        )
