"""Prometheus metrics of the inference service (names prefixed inference_).

Labels are bounded: tenants come from configuration, classes are two, reasons a fixed set.

The engine's own series (steps, KV cache, sequences, tokens, preemptions, per-request timings
measured by the engine) live in `ENGINE_REGISTRY`; the default registry, which /metrics
exports, reaches them through one `EngineMetrics` collector. With the engine in its own
process (engine_process.py) the child updates its copy of these objects and sends snapshots of
its ENGINE_REGISTRY; the server's collector then yields the latest snapshot instead, so every
series appears once, with the child's values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

ENGINE_REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SMALL = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

TTFT = Histogram(
    "inference_time_to_first_token_seconds",
    "Arrival to first generated token.",
    ["tenant", "class"],
    buckets=_LATENCY,
    registry=ENGINE_REGISTRY,
)
TPOT = Histogram(
    "inference_time_per_output_token_seconds",
    "Mean time between output tokens of a request.",
    ["tenant", "class"],
    buckets=_SMALL,
    registry=ENGINE_REGISTRY,
)
E2E = Histogram(
    "inference_request_latency_seconds",
    "Arrival to last token (end to end in the engine).",
    ["tenant", "class"],
    buckets=_LATENCY,
    registry=ENGINE_REGISTRY,
)
QUEUE_WAIT = Histogram(
    "inference_queue_wait_seconds",
    "Arrival to first scheduled step.",
    ["tenant", "class"],
    buckets=_LATENCY,
    registry=ENGINE_REGISTRY,
)
BATCH_SIZE = Histogram(
    "inference_batch_size",
    "Sequences per engine step.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=ENGINE_REGISTRY,
)
STEP_TOKENS = Histogram(
    "inference_step_tokens",
    "Tokens (prefill + decode) computed per step.",
    buckets=(1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048),
    registry=ENGINE_REGISTRY,
)
STEP_SECONDS = Histogram(
    "inference_step_duration_seconds",
    "Wall time of one engine step.",
    buckets=_SMALL,
    registry=ENGINE_REGISTRY,
)
KV_USED = Gauge(
    "inference_kv_cache_used_tokens", "KV-cache token slots held by sequences.", registry=ENGINE_REGISTRY
)
KV_CAPACITY = Gauge(
    "inference_kv_cache_capacity_tokens", "KV-cache budget in tokens.", registry=ENGINE_REGISTRY
)
PREFIX_QUERIED_TOKENS = Counter(
    "inference_prefix_cache_queried_tokens_total",
    "Prompt tokens looked up in the prefix cache at admission (hit rate = hit / queried).",
    ["tenant"],
    registry=ENGINE_REGISTRY,
)
PREFIX_HIT_TOKENS = Counter(
    "inference_prefix_cache_hit_tokens_total",
    "Prompt tokens found in the prefix cache at admission: prefill computation saved.",
    ["tenant"],
    registry=ENGINE_REGISTRY,
)
PREFIX_CACHED = Gauge(
    "inference_prefix_cache_tokens",
    "KV-cache token slots holding named (shareable) full blocks.",
    registry=ENGINE_REGISTRY,
)
PREFIX_EVICTED_BLOCKS = Counter(
    "inference_prefix_cache_evicted_blocks_total",
    "Cached KV blocks evicted (LRU) to make room.",
    registry=ENGINE_REGISTRY,
)
RUNNING = Gauge("inference_running_sequences", "Sequences in the running batch.", registry=ENGINE_REGISTRY)
WAITING = Gauge(
    "inference_waiting_sequences", "Sequences waiting for admission to the batch.", registry=ENGINE_REGISTRY
)
ADMISSIONS = Counter(
    "inference_admissions_total", "Requests accepted by admission control.", ["tenant", "class"]
)
REJECTIONS = Counter(
    "inference_rejections_total", "Requests rejected by admission control.", ["tenant", "reason"]
)
PREEMPTIONS = Counter(
    "inference_preemptions_total",
    "Running sequences preempted (each is recomputed later from its prompt: the engine's retry).",
    ["reason"],
    registry=ENGINE_REGISTRY,
)
STEP_FAILURES = Counter(
    "inference_step_failures_total",
    "Engine steps that raised; their sequences end with reason 'error'.",
    ["kind"],  # oom | error,
    registry=ENGINE_REGISTRY,
)
OOM = Counter(
    "inference_oom_total", "Engine steps that ran out of memory (device or host).", registry=ENGINE_REGISTRY
)
PROMPT_TOKENS = Counter("inference_prompt_tokens_total", "Prompt tokens accepted.", ["tenant"])
GENERATED_TOKENS = Counter(
    "inference_generated_tokens_total", "Tokens generated.", ["tenant", "class"], registry=ENGINE_REGISTRY
)
FINISHED = Counter(
    "inference_requests_finished_total",
    "Generation requests finished.",
    ["tenant", "reason"],
    registry=ENGINE_REGISTRY,
)
QUEUE_TIMEOUTS = Counter(
    "inference_queue_timeouts_total",
    "Admitted requests dropped (503 queue_timeout) still waiting for their first step at their "
    "class's cap: the requests admission's wait estimate let in too late (its error, as a rate).",
    ["tenant", "class"],
    registry=ENGINE_REGISTRY,
)
ENGINE_RESTARTS = Counter(
    "inference_engine_restarts_total",
    "Engine processes the server started again after one died (--engine-process).",
)
THROUGHPUT = Gauge(
    "inference_tokens_per_second", "Measured engine throughput (recent busy steps).", registry=ENGINE_REGISTRY
)
EMBED_BATCH = Histogram(
    "inference_embedding_batch_size", "Texts per embedding batch.", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
EMBED_TOKENS = Counter("inference_embedding_tokens_total", "Tokens embedded.", ["tenant"])
JOBS = Counter("inference_jobs_total", "Async jobs by final state.", ["state"])
# Admission's wait estimate against the wait each admitted request then had (admission.py).
WAIT_ESTIMATE_ERROR = Histogram(
    "inference_wait_estimate_error_seconds",
    "Real wait for the first token (arrival to first token) minus admission's estimate; > 0: longer.",
    ["class"],
    buckets=(-10, -2, -1, -0.5, -0.25, -0.1, -0.05, -0.025, 0, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 10),
)
WAIT_ESTIMATE_FACTOR = Gauge(
    "inference_wait_estimate_factor",
    "Admission's learnt ratio of real queue wait to its raw estimate (work ahead x step time).",
    ["tenant", "class"],
)


def is_oom(exc: BaseException) -> bool:
    """Out of memory on the accelerator (torch.OutOfMemoryError) or the host (MemoryError)."""
    import torch

    return isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError))


def count_step_failure(exc: BaseException) -> None:
    kind = "oom" if is_oom(exc) else "error"
    STEP_FAILURES.labels(kind).inc()
    if kind == "oom":
        OOM.inc()


for _kind in ("oom", "error"):
    STEP_FAILURES.labels(_kind)  # both series exist from the start (0), so increase() sees the first


class EngineMetrics:
    """The engine's series on the default registry: from ENGINE_REGISTRY (engine thread in this
    process), or from `source` (the engine process's latest snapshot) once one is set."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[Metric]] | None = None

    def describe(self) -> Iterable[Metric]:
        return ENGINE_REGISTRY.collect()

    def collect(self) -> Iterator[Metric]:
        source = self.source
        if source is None:
            yield from ENGINE_REGISTRY.collect()
        else:
            yield from source()


ENGINE_METRICS = EngineMetrics()
REGISTRY.register(ENGINE_METRICS)
