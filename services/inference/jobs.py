"""Async jobs: submit a completion, poll it, cancel it.

States: queued -> running -> succeeded | failed | cancelled. A job is `running` once the
engine has scheduled its sequence. Submission is idempotent per (tenant, Idempotency-Key):
the same key with the same body returns the same job (HTTP 200 instead of 202); the same key
with a different body is a 409. Finished jobs are kept (most recent `max_jobs`) for polling.

In-memory: jobs do not survive a restart (a client re-submitting with its Idempotency-Key
after a restart gets a new job, which is the safe outcome for side-effect-free generation).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from services.inference import metrics as m
from services.inference.admission import TenantConfig
from services.inference.errors import Conflict, InferenceError, NotFound
from services.inference.gateway import CompletionParams, Finish, Gateway, Piece
from services.inference.sequence import Sequence

FINAL = ("succeeded", "failed", "cancelled")


@dataclass(eq=False)
class Job:
    id: str
    tenant: str
    request: dict[str, Any]
    created: float = field(default_factory=time.time)
    finished: float | None = None
    final_state: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None
    seq: Sequence | None = field(default=None, repr=False)
    task: asyncio.Task | None = field(default=None, repr=False)

    @property
    def state(self) -> str:
        if self.final_state is not None:
            return self.final_state
        if self.seq is not None and self.seq.first_scheduled is not None:
            return "running"
        return "queued"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "job",
            "state": self.state,
            "created": self.created,
            "finished": self.finished,
            "request": self.request,
            "result": self.result,
            "error": self.error,
            "idempotency_key": self.idempotency_key,
        }


def _body_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class JobStore:
    def __init__(self, gateway: Gateway, max_jobs: int = 10_000) -> None:
        self.gateway = gateway
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._keys: dict[tuple[str, str], tuple[str, str]] = {}  # (tenant, key) -> (body hash, job id)

    def submit(
        self, tenant: TenantConfig, params: CompletionParams, body: dict[str, Any], key: str | None
    ) -> tuple[Job, bool]:
        """-> (job, created). Admission errors raise before any job exists."""
        digest = _body_hash(body)
        if key is not None:
            known = self._keys.get((tenant.name, key))
            if known is not None:
                if known[0] != digest:
                    raise Conflict(
                        "Idempotency-Key was already used with a different body", "header.idempotency-key"
                    )
                job = self._jobs.get(known[1])
                if job is not None:
                    return job, False
        # Admission happens now, synchronously: a rejected job is a 429/503, not a failed job.
        seq, ticket = self.gateway.prepare(tenant, params)
        seq.emit_tokens = False  # a job is read when done; no per-token traffic
        job = Job(
            id=f"job-{uuid.uuid4().hex[:24]}", tenant=tenant.name, request=body, idempotency_key=key, seq=seq
        )
        job.task = asyncio.get_running_loop().create_task(self._run(job, self.gateway.stream(seq, ticket)))
        self._jobs[job.id] = job
        if key is not None:
            self._keys[(tenant.name, key)] = (digest, job.id)
        self._evict()
        return job, True

    async def _run(self, job: Job, stream: AsyncIterator[Piece | Finish]) -> None:
        text: list[str] = []
        try:
            finish = None
            async for item in stream:
                if isinstance(item, Piece):
                    text.append(item.text)
                else:
                    finish = item
            assert finish is not None and job.seq is not None
            job.result = {
                "text": "".join(text),
                "token_ids": list(job.seq.output),
                "finish_reason": finish.reason,
                "usage": {
                    "prompt_tokens": finish.prompt_tokens,
                    "completion_tokens": finish.completion_tokens,
                },
                "timing": finish.timing,
            }
            self._finish(job, "succeeded")
        except asyncio.CancelledError:
            self._finish(job, "cancelled")
        except InferenceError as exc:
            job.error = {"type": exc.type, "message": exc.message, "field": exc.field}
            self._finish(job, "failed")
        except Exception as exc:  # a bug must show up as a failed job, not vanish
            job.error = {"type": "internal", "message": type(exc).__name__, "field": None}
            self._finish(job, "failed")

    def _finish(self, job: Job, state: str) -> None:
        job.final_state = state
        job.finished = time.time()
        m.JOBS.labels(state).inc()

    def get(self, tenant: TenantConfig, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.tenant != tenant.name:  # other tenants' jobs do not exist for you
            raise NotFound(f"no job {job_id!r}", "path.job_id")
        return job

    async def cancel(self, tenant: TenantConfig, job_id: str) -> Job:
        job = self.get(tenant, job_id)
        if job.final_state is None and job.task is not None:
            job.task.cancel()
            try:
                await job.task
            except asyncio.CancelledError:
                pass
        return job

    def _evict(self) -> None:
        while len(self._jobs) > self.max_jobs:
            for jid, job in self._jobs.items():
                if job.final_state is not None:
                    del self._jobs[jid]
                    if job.idempotency_key is not None:
                        self._keys.pop((job.tenant, job.idempotency_key), None)
                    break
            else:
                return

    async def close(self) -> None:
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
