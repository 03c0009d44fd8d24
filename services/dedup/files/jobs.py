"""Scan jobs of the worker (`POST /v1/scans`): a request model whose defaults are the CLI's
(both are `ScanOptions()`), and a one-at-a-time job runner that calls `scanner.run_scan`, the
very function `python -m services.dedup scan` calls."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.service.app import ApiError
from libs.service.logging import get_logger
from services.dedup import metrics
from services.dedup.files.scanner import ScanOptions, parse_workers

log = get_logger("services.dedup.worker")

_SCAN_DEFAULTS = ScanOptions()  # the CLI's defaults too


class ScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(min_length=1, description="files or directories, each under an allowed root")
    algorithm: Literal["blake3", "xxh3-128", "sha256"] = _SCAN_DEFAULTS.algorithm  # type: ignore[assignment]
    min_size: int = Field(_SCAN_DEFAULTS.min_size, ge=0, description="smallest file; 0 includes empty files")
    max_size: int | None = Field(_SCAN_DEFAULTS.max_size, ge=0)
    follow_symlinks: bool = Field(
        _SCAN_DEFAULTS.follow_symlinks, description="follow symlinks that stay inside the scan roots"
    )
    one_file_system: bool = _SCAN_DEFAULTS.one_file_system
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    workers: int | Literal["auto"] = Field(
        _SCAN_DEFAULTS.workers,
        description="parallel readers: 'auto' or 0 = adaptive (the CLI's --workers auto), else 1-32",
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: int | str) -> int:
        return parse_workers(value)

    def options(self, roots: Sequence[str], cache_dir: str | None) -> ScanOptions:
        return ScanOptions(
            algorithm=self.algorithm,
            workers=int(self.workers),
            follow_symlinks=self.follow_symlinks,
            one_file_system=self.one_file_system,
            min_size=self.min_size,
            max_size=self.max_size,
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            confine=tuple(roots),
            cache_dir=cache_dir,
        )


def _json_safe(obj: Any) -> Any:
    """A report whose strings are valid UTF-8: a name that is not keeps its exact bytes in
    `path_b64` and shows U+FFFD in `path` (lone surrogates cannot be sent as JSON text)."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return obj.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


class ScanJobs:
    """Scan jobs, one at a time on a worker thread (disk I/O is the bottleneck)."""

    def __init__(self, roots: Sequence[str], cache_dir: str | None) -> None:
        self.roots = [os.path.realpath(r) for r in roots]
        self.cache_dir = cache_dir
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dedup-scan")
        self._jobs: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def allowed(self, path: str) -> bool:
        real = os.path.realpath(path)  # symlinks and '..' resolved before the containment test
        return any(real == r or real.startswith(r.rstrip("/") + "/") for r in self.roots)

    def submit(self, req: ScanRequest) -> dict[str, Any]:
        if not self.roots:
            raise ApiError(403, "forbidden", "no scan roots configured (--scan-roots)", field="body.paths")
        for i, p in enumerate(req.paths):
            if not self.allowed(p):
                raise ApiError(
                    403, "forbidden", f"{p!r} is not under an allowed scan root", field=f"body.paths.{i}"
                )
            if not os.path.exists(p):
                raise ApiError(422, "invalid_request", f"{p!r} does not exist", field=f"body.paths.{i}")
        job_id = f"s{next(self._ids)}"
        job = {"id": job_id, "status": "queued", "paths": req.paths, "submitted_at": time.time()}
        with self._lock:
            self._jobs[job_id] = job
        self._pool.submit(self._run, job, req)
        return dict(job)

    def _run(self, job: dict[str, Any], req: ScanRequest) -> None:
        from services.dedup.files import report
        from services.dedup.files.scanner import run_scan

        job["status"] = "running"
        job["started_at"] = time.time()
        try:
            result = run_scan(req.paths, req.options(self.roots, self.cache_dir))
            for warning in result.warnings:
                log.warning("scan job warning", extra={"job": job["id"], "warning": warning})
            job["report"] = _json_safe(report.to_dict(result))
            job["status"] = "done"
            metrics.SCAN_BYTES.inc(result.bytes_read)
            metrics.SCAN_WASTED.set(result.wasted_bytes)
        except Exception as exc:  # a job failure is the job's status, never the worker's death
            log.exception("scan job failed", extra={"job": job["id"]})
            job["status"] = "failed"
            job["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            job["finished_at"] = time.time()
            metrics.SCANS.labels(status=job["status"]).inc()

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else dict(job)

    def count(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for j in self._jobs.values():
                out[j["status"]] = out.get(j["status"], 0) + 1
            return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
