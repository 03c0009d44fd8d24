"""The real server with the engine in its own process (--engine-process), through real clients.

Uvicorn serves the app on loopback ports in this process; the engine (scheduler, KV cache,
model steps) runs in a spawned child. The official `openai` client, httpx and gRPC drive it:
completions and chat agree with the in-process engine token for token, streams, cancels,
scoring, embeddings, /metrics (the child's series, each once), gauges back to zero however
work ended, and a kill -9 of the engine process (clean errors, 503 while it restarts, then
served again).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.inference.admission import hash_key
from services.inference.engine_process import ProcessEngine
from services.inference.proto import inference_pb2 as pb
from services.inference.proto import inference_pb2_grpc as pb_grpc
from services.inference.sequence import CLASSES, Sequence

from .conftest import LiveServer

ROOT = Path(__file__).resolve().parents[3]
TENANTS = {
    "alice": {"key_sha256": hash_key("dev-alice-key")},
    "g1": {"key_sha256": hash_key("k-g1")},
    "g2": {"key_sha256": hash_key("k-g2")},
}
ALICE = {"Authorization": "Bearer dev-alice-key"}
ADMIN = {"Authorization": "Bearer dev-admin-key"}
HOLD = {"prompt": "hold on", "max_tokens": 200, "ignore_eos": True}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    s = LiveServer(engine_process=True, embeddings=True, tenants=TENANTS, max_seqs=8)
    assert isinstance(s.runtime.engine, ProcessEngine)
    _wait_ready(s)
    yield s
    s.stop()
    assert not s.runtime.engine.alive


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="dev-alice-key", max_retries=0, timeout=60) as c:
        yield c


def _eng(server: LiveServer) -> ProcessEngine:
    eng = server.runtime.engine
    assert isinstance(eng, ProcessEngine)
    return eng


def _until(cond: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `cond` (bounded in time) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _wait_ready(server: LiveServer) -> None:
    _until(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, 60, "/readyz 200")


def _metrics(server: LiveServer) -> dict[str, Any]:
    text = httpx.get(f"{server.url}/metrics").text
    fams = list(text_string_to_metric_families(text))
    names = [f.name for f in fams]
    assert len(names) == len(set(names)), "a metric family appears twice"
    samples = [(s.name, tuple(sorted(s.labels.items()))) for f in fams for s in f.samples]
    assert len(samples) == len(set(samples)), "a series appears twice"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams for s in f.samples}


def _gauges(server: LiveServer) -> dict[str, Any]:
    eng = _eng(server)
    st = eng.stats()
    adm = server.runtime.admission
    return {
        "running": st.running,
        "waiting": st.waiting,
        "kv_used": st.kv_used_tokens,
        "backlog": {c: eng.backlog_tokens(c) for c in CLASSES},
        "in_flight": {t: adm.in_flight(t) for t in TENANTS},
    }


_ZERO = {
    "running": 0,
    "waiting": 0,
    "kv_used": 0,
    "backlog": dict.fromkeys(CLASSES, 0),
    "in_flight": dict.fromkeys(TENANTS, 0),
}


def _wait_idle(server: LiveServer) -> None:
    """Every gauge zero, in the server's view and on /metrics (the child's own gauges)."""
    _until(lambda: _gauges(server) == _ZERO, what=f"idle gauges (last {_gauges(server)})")

    def scraped_zero() -> bool:
        got = _metrics(server)
        return all(
            got.get((name, ())) == 0.0
            for name in (
                "inference_running_sequences",
                "inference_waiting_sequences",
                "inference_kv_cache_used_tokens",
            )
        )

    _until(scraped_zero, what="/metrics gauges at zero")


def _in_process_tokens(server: LiveServer, prompt: list[int], max_tokens: int) -> list[int]:
    """The same settings' engine as a thread here: the process must not change a token."""
    from services.inference.app import build_runtime

    rt = build_runtime(server.settings.model_copy(update={"engine_process": False, "grpc_port": -1}))
    rt.engine.start()
    try:
        seq = Sequence("ref", "alice", list(prompt), max_tokens)
        rt.engine.run_to_completion([seq], timeout=60)  # type: ignore[attr-defined]
        return list(seq.output)
    finally:
        rt.engine.stop()


def test_completion_stream_and_chat(server: LiveServer, client: openai.OpenAI) -> None:
    r = httpx.post(
        f"{server.url}/v1/completions",
        json={"prompt": "The engine", "max_tokens": 12, "ignore_eos": True},
        headers=ALICE,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    ids = body["choices"][0]["token_ids"]
    assert len(ids) == 12 and body["usage"]["completion_tokens"] == 12
    prompt_ids = server.runtime.gateway.tokenizer.encode("The engine")
    assert ids == _in_process_tokens(server, prompt_ids, 12)
    # the official client: the same greedy text, whole and streamed
    whole = client.completions.create(model="pg-byte-tiny", prompt="The engine", max_tokens=12, temperature=0)
    streamed = client.completions.create(
        model="pg-byte-tiny", prompt="The engine", max_tokens=12, temperature=0, stream=True
    )
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == whole.choices[0].text
    chat = client.chat.completions.create(
        model="pg-byte-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
    )
    chunks = list(chat)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    # log-probs travel from the child with their tokens; echo's prompt log-probs are a score call
    lp = client.completions.create(
        model="pg-byte-tiny", prompt="ab", max_tokens=4, logprobs=2, echo=True, temperature=0
    )
    got = lp.choices[0].logprobs
    assert got is not None and got.token_logprobs is not None
    assert len(got.token_logprobs) > 4 and all(x is not None for x in got.token_logprobs[-5:])
    assert got.top_logprobs is not None and all(len(t) == 2 for t in got.top_logprobs[-4:])


def test_score_and_embeddings(server: LiveServer, client: openai.OpenAI) -> None:
    r = httpx.post(
        f"{server.url}/v1/score",
        json={"prompt": "The cat", "candidates": [" sat", " flew away"]},
        headers=ALICE,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    scores = r.json()["results"]
    assert len(scores) == 2 and abs(sum(s["prob"] for s in scores) - 1) < 1e-6
    emb = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a man eats", "a dog runs"])
    assert [len(d.embedding) for d in emb.data] == [384, 384]


def test_metrics_come_from_the_engine_process_once(server: LiveServer, client: openai.OpenAI) -> None:
    client.completions.create(model="pg-byte-tiny", prompt="count me", max_tokens=5)

    def stepped() -> dict[str, Any] | None:
        got = _metrics(server)
        steps = got.get(("inference_step_duration_seconds_count", ()), 0)
        return got if steps > 0 and got.get(("inference_running_sequences", ())) == 0 else None

    got = _until(stepped, what="step histogram on /metrics")
    assert got[("inference_kv_cache_capacity_tokens", ())] == server.settings.kv_cache_tokens
    assert got[("inference_kv_cache_used_tokens", ())] == 0
    gen = sum(v for (name, _), v in got.items() if name == "inference_generated_tokens_total")
    assert gen >= 5
    # the server's own series are still there, beside the engine's
    assert any(name == "inference_admissions_total" for name, _ in got)
    assert ("worker_heartbeat_timestamp_seconds", (("service", "inference"), ("worker", "engine"))) in got
    # every inference_ series the alert and recording rules read exists (as a family)
    families = {f.name for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)}
    rules = "".join(p.read_text() for p in sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml")))
    used = set(re.findall(r"(?<![:\w])inference_[a-z_]+", rules))
    assert used
    missing = {n for n in used if re.sub(r"_(total|bucket|count|sum)$", "", n) not in families}
    assert not missing, missing


def _open_streams(stack: contextlib.ExitStack, c: httpx.Client, n: int, key: str) -> list[Iterator[str]]:
    out = []
    for _ in range(n):
        resp = stack.enter_context(
            c.stream("POST", "/v1/completions", json={**HOLD, "stream": True}, headers=auth(key))
        )
        assert resp.status_code == 200
        out.append(resp.iter_lines())
    return out


def test_cancels_disconnects_and_kill_switch_leave_no_backlog(
    server: LiveServer, client: openai.OpenAI
) -> None:
    # the official client closes a stream after two chunks
    stream = client.completions.create(
        model="pg-byte-tiny", prompt="hold on", max_tokens=200, stream=True, extra_body={"ignore_eos": True}
    )
    for _, _chunk in zip(range(2), stream, strict=False):
        pass
    assert _eng(server).stats().running + _eng(server).stats().waiting > 0
    stream.close()
    _wait_idle(server)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        # a job cancelled while it runs
        job = c.post("/v1/jobs", json=HOLD, headers=auth("k-g1")).json()["id"]
        _until(lambda: _eng(server).stats().running > 0, what="job running")
        assert c.post(f"/v1/jobs/{job}/cancel", headers=auth("k-g1")).status_code == 200
        _wait_idle(server)
        # clients that go away mid-stream
        with contextlib.ExitStack() as stack:
            streams = _open_streams(stack, c, 2, "k-g1") + _open_streams(stack, c, 1, "k-g2")
            for lines in streams:
                while not next(lines).startswith("data: "):
                    pass
            assert _eng(server).stats().running > 0 or _eng(server).backlog_tokens("batch") > 0
        _wait_idle(server)
        # jobs ended by the kill switch, then the switch off again
        batch = {**HOLD, "priority": "batch"}
        jobs = [c.post("/v1/jobs", json=batch, headers=auth("k-g2")).json()["id"] for _ in range(2)]
        _until(lambda: _eng(server).stats().running > 0, what="jobs running")
        assert c.post("/v1/admin/kill-switch", json={"enabled": True}, headers=ADMIN).status_code == 200
        for j in jobs:
            _until(
                lambda j=j: (
                    c.get(f"/v1/jobs/{j}", headers=auth("k-g2")).json()["state"]
                    in ("succeeded", "failed", "cancelled")
                ),
                what="job ended",
            )
        assert c.post("/v1/admin/kill-switch", json={"enabled": False}, headers=ADMIN).status_code == 200
        _wait_idle(server)
        # gRPC calls cancelled by their clients
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            calls = [
                stub.Generate(
                    pb.GenerateRequest(prompt="long", max_tokens=200, ignore_eos=True),
                    metadata=(("authorization", f"Bearer {key}"),),
                    timeout=60,
                )
                for key in ("k-g1", "k-g2")
            ]
            for call in calls:
                next(call)
            for call in calls:
                call.cancel()
        _wait_idle(server)
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers=auth("k-g1"))
        assert r.status_code == 200, r.text


def test_kill_9_of_the_engine_process(server: LiveServer) -> None:
    eng = _eng(server)
    eng.restart_base_s = 2.0  # a window to see the 503s in, before the new engine starts
    old_pid, gen = eng.pid, eng.generation
    assert old_pid is not None and old_pid != os.getpid()
    restarts_before = _metrics(server).get(("inference_engine_restarts_total", ()), 0)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json={**HOLD, "stream": True}, headers=ALICE) as resp:
            lines = resp.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            os.kill(old_pid, signal.SIGKILL)
            rest = [ln for ln in lines if ln]  # the stream ends (no hang): its last choice says "error"
        finishes = [ln for ln in rest if '"finish_reason":"error"' in ln]
        assert finishes and rest[-1] == "data: [DONE]", rest[-3:]
        assert not eng.alive
        assert c.get("/readyz").status_code == 503
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers=ALICE)
        assert r.status_code == 503 and "retry-after" in r.headers, r.text
        assert r.json()["error"]["code"] == "engine_restart"
        _until(lambda: eng.generation > gen and eng.alive, 60, "the engine process restarted")
        assert eng.pid != old_pid
        _wait_ready(server)
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 3}, headers=ALICE)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1, r.text
    _until(
        lambda: _metrics(server).get(("inference_engine_restarts_total", ()), 0) == restarts_before + 1,
        what="restart counted",
    )
    _wait_idle(server)


def test_engine_process_niceness_and_clean_stop() -> None:
    """--engine-nice lowers the engine's CPU priority only; stop() ends the process."""
    from services.inference.app import model_config
    from services.inference.settings import InferenceSettings

    s = InferenceSettings(
        d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=256, kv_cache_tokens=1024, embeddings=False,
        grpc_port=-1, torch_threads=1, engine_nice=3,
    )  # fmt: skip
    eng = ProcessEngine(s, model_config(s), eos_ids=frozenset({257}))
    eng.start()
    try:
        assert eng.pid is not None
        assert os.getpriority(os.PRIO_PROCESS, eng.pid) == os.getpriority(os.PRIO_PROCESS, 0) + 3
        seq = Sequence("n1", "alice", [1, 2, 3], 4)
        eng.run_to_completion([seq], timeout=60)
        assert len(seq.output) == 4 and seq.finish_reason == "length"
    finally:
        eng.stop()
    assert not eng.alive
    with pytest.raises(ProcessLookupError):
        os.kill(eng.pid, 0)


def test_a_turn_reaches_the_streams_of_a_loop_in_one_call() -> None:
    """The reader hands one turn's updates for a loop's streams over in one call; each stream
    still sees its tokens in order, then one finish, and the Sequence holds the child's state."""
    import asyncio
    import threading

    from services.inference.app import model_config
    from services.inference.settings import InferenceSettings

    s = InferenceSettings(
        d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=256, kv_cache_tokens=1024, embeddings=False,
        grpc_port=-1, torch_threads=1,
    )  # fmt: skip
    eng = ProcessEngine(s, model_config(s), eos_ids=frozenset({257}))  # never started: no child
    eng._ready = True  # submissions go to the outbox, which nobody sends

    def upd(sid: str, toks: list[int], reason: str | None) -> tuple[Any, ...]:
        status = "running" if reason is None else "finished"
        return (sid, toks, [], status, 3 + len(toks), 0, 0, 1.0, 2.0, 3.0 if reason else None, 7, reason)

    async def main() -> tuple[dict[str, list[Any]], int]:
        loop = asyncio.get_running_loop()
        calls = 0
        real = loop.call_soon_threadsafe

        def counting(*args: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            return real(*args, **kw)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
        seqs = [Sequence(f"t{i}", "alice", [1, 2, 3], 4) for i in range(2)]
        got: dict[str, list[Any]] = {}

        async def consume(seq: Sequence) -> None:
            async for ev in eng.stream(seq):
                got.setdefault(seq.seq_id, []).append(ev.token if ev.kind == "token" else ev.finish_reason)

        tasks = [asyncio.create_task(consume(seq)) for seq in seqs]
        await asyncio.sleep(0)  # both registered and submitted
        turns = [
            [upd("t0", [10], None), upd("t1", [20], None), upd("gone", [1], None)],
            [upd("t0", [11, 12], "length"), upd("t1", [21], None)],
            [upd("t1", [], "stop")],
        ]

        def read() -> None:
            for t in turns:
                eng._turn(t)

        reader = threading.Thread(target=read)
        reader.start()
        await asyncio.gather(*tasks)
        reader.join()
        assert seqs[0].output == [10, 11, 12] and seqs[0].num_computed == 5 and seqs[0].finish_step == 7
        assert seqs[1].output == [20, 21] and seqs[1].finish_reason == "stop"
        return got, calls

    got, calls = asyncio.run(main())
    assert got == {"t0": [10, 11, 12, "length"], "t1": [20, 21, "stop"]}
    assert calls == 3  # one per turn, not one per token or per sequence
    assert not eng._seqs and not eng._streams
