"""Automatic prefix caching (kv_cache.py): shared full blocks by hash, reference counts, LRU
eviction, and outputs identical with the cache on and off.

Equality is checked on three models: the built-in byte model, the shipped pg-small checkpoint
and a tiny random Llama (GQA) built locally with transformers. Greedy generations must be the
same token for token, and the log-prob of every generated token within float32 noise, over
workloads that hit the cache in every way it can be hit: a prompt that extends a cached one, a
prompt that is a prefix of a cached one, identical prompts at once, eviction under memory
pressure, and cancellation while blocks are shared. After each workload the cache's invariant
holds against the (empty) set of live tables: every reference came back.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from services.inference.engine import Engine
from services.inference.fairness import FairQueue
from services.inference.model.kv_cache import KVCache, KVCacheFull
from services.inference.model.sampling import SamplingParams
from services.inference.runner import ModelRunner
from services.inference.scheduler import Scheduler, SchedulerConfig, StepPlan
from services.inference.sequence import SeqEvent, SeqStatus, Sequence


def _kv(model, tokens: int = 1024, block: int = 4, caching: bool = True) -> KVCache:
    c = model.cfg
    return KVCache(
        n_layers=c.n_layers,
        n_heads=c.n_kv_heads,
        head_dim=c.head_dim,
        num_tokens=tokens,
        block_size=block,
        prefix_caching=caching,
    )


def _bare(tokens: int = 64, block: int = 4) -> KVCache:
    return KVCache(
        n_layers=1, n_heads=1, head_dim=1, num_tokens=tokens, block_size=block, prefix_caching=True
    )


def _s(name: str, prompt: list[int], tenant: str = "t") -> Sequence:
    return Sequence(name, tenant, list(prompt), max_tokens=8, stop_at_eos=False)


def _compute(cache: KVCache, seq: Sequence, upto: int | None = None) -> None:
    """Pretend a step computed the sequence's tokens (up to `upto`) and register them."""
    seq.num_computed = seq.num_tokens if upto is None else upto
    cache.register(seq)


# -- the allocator on its own ----------------------------------------------------------------------
def test_hits_are_whole_leading_blocks_and_leave_one_token_to_compute() -> None:
    cache = _bare()
    a = _s("a", list(range(10)))  # blocks [0-3] [4-7] and 2 tokens
    assert cache.allocate(a) == 0
    _compute(cache, a)
    assert cache.cached_blocks == 2
    b = _s("b", [*list(range(10)), 99])
    assert cache.allocate(b) == 8
    assert b.num_computed == 8 and b.block_table[:2] == a.block_table[:2]
    assert [cache.ref_count(x) for x in a.block_table[:2]] == [2, 2]
    assert b.block_table[2] != a.block_table[2]  # a partial block is never shared
    # A prompt that is exactly two cached blocks: the last one is computed again (its logits).
    c = _s("c", list(range(8)))
    assert cache.allocate(c) == 4 and c.num_computed == 4
    # A different first token changes every block's hash after it.
    d = _s("d", [5, *range(1, 10)])
    assert cache.allocate(d) == 0
    cache.check([a.block_table, b.block_table, c.block_table, d.block_table])
    for seq in (a, b, c, d):
        cache.release(seq)
    cache.check([])
    assert cache.used_tokens == 0 and cache.free_blocks == cache.num_blocks
    assert cache.stats.queried_tokens == 10 + 11 + 8 + 10 and cache.stats.hit_tokens == 12


def test_salt_separates_tenants() -> None:
    cache = _bare()
    a = _s("a", list(range(9)))
    a.cache_salt = "alice"
    cache.allocate(a)
    _compute(cache, a)
    b = _s("b", list(range(9)))
    b.cache_salt = "bob"
    assert cache.allocate(b) == 0
    c = _s("c", list(range(9)))
    c.cache_salt = "alice"
    assert cache.allocate(c) == 8


def test_released_blocks_stay_cached_and_are_evicted_lru_tail_first() -> None:
    cache = _bare(tokens=40, block=4)  # 10 blocks
    a = _s("a", list(range(13)))  # 3 full blocks + 1 token: 4 blocks
    cache.allocate(a)
    _compute(cache, a)
    cache.release(a)
    assert cache.used_tokens == 0 and cache.free_blocks == 10 and cache.cached_blocks == 3
    b = _s("b", [100 + i for i in range(28)])  # 7 blocks: all the never-named ones go first
    cache.allocate(b)
    assert cache.cached_blocks == 3 and cache.stats.evicted_blocks == 0
    # One more block than the plain free list has: the LRU victim is a's LAST named block.
    e = _s("e", [200, 201])
    cache.allocate(e)
    assert cache.stats.evicted_blocks == 1 and cache.cached_blocks == 2
    cache.release(b)
    # a's first two blocks are still there for a prompt that shares them.
    f = _s("f", [*range(12), 7])
    assert cache.allocate(f) == 8
    assert cache.free_blocks == 5
    with pytest.raises(KVCacheFull):
        cache.allocate(_s("g", list(range(300, 324))))  # 6 blocks
    cache.check([e.block_table, f.block_table])


def test_a_block_computed_twice_at_once_is_named_once() -> None:
    cache = _bare()
    a, b = _s("a", list(range(9))), _s("b", list(range(9)))
    cache.allocate(a)
    cache.allocate(b)  # nothing registered yet: both compute the same blocks
    _compute(cache, a)
    _compute(cache, b)
    assert cache.cached_blocks == 2
    cache.release(b)
    cache.release(a)
    cache.check([])
    assert cache.free_blocks == cache.num_blocks


def test_off_by_default_and_on_off_identical_accounting() -> None:
    cache = KVCache(n_layers=1, n_heads=1, head_dim=1, num_tokens=64, block_size=4)
    assert not cache.prefix_caching
    a = _s("a", list(range(9)))
    cache.allocate(a)
    _compute(cache, a)
    b = _s("b", list(range(9)))
    assert cache.allocate(b) == 0 and cache.cached_blocks == 0
    cache.release(a)
    cache.release(b)
    assert cache.stats.queried_tokens == 0 and cache.free_blocks == cache.num_blocks


# -- logits with a cached prefix equal a full forward pass ------------------------------------------
def _models() -> list[str]:
    return ["byte", "pg-small", "llama"]


@pytest.fixture(scope="module", params=_models())
def model_and_prompts(request, tmp_path_factory, tiny_model):
    """(model, shared system prompt ids, user suffixes ids)."""
    if request.param == "byte":
        rng = random.Random(3)
        system = [rng.randrange(3, 256) for _ in range(37)]
        users = [[rng.randrange(3, 256) for _ in range(n)] for n in (5, 11, 3, 8)]
        return tiny_model, system, users
    from services.inference.model.hf import load_hf_model
    from services.inference.model.tokenizer import HFTokenizer

    if request.param == "pg-small":
        from services.inference.app import SHIPPED_DIR

        path = SHIPPED_DIR
    else:
        pytest.importorskip("transformers")
        from tests.services.inference.hf_fixtures import build_checkpoint

        path = build_checkpoint(tmp_path_factory.mktemp("llama"), "llama")
    tok = HFTokenizer(path)
    system = tok.encode(
        "You are a careful assistant. Answer in one sentence, cite the module, and never "
        "guess: say so when the documentation does not tell."
    )
    users = [
        tok.encode(u, add_bos=False)
        for u in (" What does sorted() return?", " os.path.join?", " Explain", " Is a list mutable, and why?")
    ]
    return load_hf_model(path), system, users


def test_cached_prefix_logits_equal_full_forward(model_and_prompts) -> None:
    model, system, users = model_and_prompts
    cache = _kv(model, block=4)
    runner = ModelRunner(model, cache)
    first = _s("first", system + users[0])
    cache.allocate(first)
    with torch.inference_mode():
        model.forward_step(runner.build([(first, first.num_tokens)]), cache)
    _compute(cache, first)
    for i, user in enumerate(users[1:]):
        seq = _s(f"u{i}", system + user)
        hit = cache.allocate(seq)
        assert hit >= (len(system) // 4) * 4 > 0
        with torch.inference_mode():
            got = model.forward_step(runner.build([(seq, seq.pending)]), cache)[0]
            want = model(torch.tensor([seq.tokens]))[0, -1]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        _compute(cache, seq)


# -- the engine: on and off give the same generations ------------------------------------------------
Wave = list[tuple[str, list[int], int]]  # (name, prompt, max_tokens)


class _Run:
    def __init__(self, model, *, caching: bool, kv_tokens: int = 1024, max_seqs: int = 8) -> None:
        self.cache = _kv(model, tokens=kv_tokens, block=4, caching=caching)
        self.engine = Engine(
            model, self.cache, SchedulerConfig(max_step_tokens=32, max_seqs=max_seqs, prefill_chunk=16)
        )
        self.seqs: dict[str, Sequence] = {}
        self.max_ref = 0
        self.engine.step_observer = self._observe

    def _observe(self, plan: StepPlan) -> None:
        tables = [s.block_table for s in self.engine.scheduler.running]
        self.cache.check(tables)  # the invariant, every step
        refs = [self.cache.ref_count(b) for t in tables for b in t]
        self.max_ref = max([self.max_ref, *refs])

    def wave(self, wave: Wave, cancel_after: dict[str, int] | None = None) -> None:
        cancel_after = cancel_after or {}
        done = threading.Semaphore(0)
        seqs = []
        for name, prompt, n in wave:
            seq = Sequence(
                name,
                "alice",
                list(prompt),
                max_tokens=n,
                sampling=SamplingParams(logprobs=0),
                stop_at_eos=False,
            )
            seq.on_event = self._handler(seq, done, cancel_after.get(name))
            self.seqs[name] = seq
            seqs.append(seq)
        for seq in seqs:
            self.engine.submit(seq)
        for _ in seqs:
            assert done.acquire(timeout=120), "wave did not finish"

    def _handler(self, seq: Sequence, done: threading.Semaphore, cancel_at: int | None) -> Callable:
        def on_event(ev: SeqEvent) -> None:
            if ev.kind == "finish":
                done.release()
            elif cancel_at is not None and len(seq.output) == cancel_at:
                self.engine.cancel(seq)

        return on_event

    def outputs(self) -> dict[str, tuple[list[int], list[float]]]:
        return {n: (s.output, [lp for lp, _ in s.sampling.recorded]) for n, s in self.seqs.items()}


def _compare(model, waves: list[Wave], *, cancel: dict[str, int] | None = None, **kw) -> tuple[_Run, _Run]:
    runs = []
    for caching in (False, True):
        run = _Run(model, caching=caching, **kw)
        run.engine.start()
        try:
            for wave in waves:
                run.wave(wave, cancel)
        finally:
            run.engine.stop()
        assert all(s.status is SeqStatus.FINISHED for s in run.seqs.values())
        run.cache.check([])  # every reference returned: nothing held on the idle engine
        assert run.cache.used_tokens == 0
        runs.append(run)
    off, on = runs
    for name, (toks, lps) in off.outputs().items():
        got_toks, got_lps = on.outputs()[name]
        n = min(len(toks), len(got_toks)) if cancel and name in cancel else len(toks)
        assert got_toks[:n] == toks[:n], name
        torch.testing.assert_close(torch.tensor(got_lps[:n]), torch.tensor(lps[:n]), atol=1e-4, rtol=0)
    assert off.cache.stats.hit_tokens == 0
    return off, on


def test_extensions_and_prefixes_of_a_cached_prompt(model_and_prompts) -> None:
    model, system, users = model_and_prompts
    full = system + users[0]
    waves = [
        [("full", full, 6)],
        [("longer", full + users[1], 6), ("other-user", system + users[2], 6)],
        [("prefix", full[: len(full) - 5], 6), ("system-only", system, 6), ("one-block", full[:4], 4)],
    ]
    _, on = _compare(model, waves)
    assert on.cache.stats.hit_tokens >= len(full) - 4 + len(system) - 4


def _counter(kind: str) -> float:
    name = f"inference_prefix_cache_{kind}_tokens_total"
    return REGISTRY.get_sample_value(name, {"tenant": "alice"}) or 0.0


def test_identical_prompts_at_once_then_again(model_and_prompts) -> None:
    model, system, users = model_and_prompts
    p = system + users[3]
    waves = [[(f"a{i}", p, 5) for i in range(4)], [(f"b{i}", p, 5) for i in range(4)]]
    before = {k: _counter(k) for k in ("hit", "queried")}
    _, on = _compare(model, waves)
    # The Prometheus counters saw the ON run's admissions only (the OFF run looks nothing up).
    assert _counter("hit") - before["hit"] == on.cache.stats.hit_tokens
    assert _counter("queried") - before["queried"] == on.cache.stats.queried_tokens == 8 * len(p)
    assert on.cache.stats.hit_tokens >= 4 * ((len(p) - 1) // 4) * 4
    assert on.max_ref >= 4  # the second wave's four sequences hold the same blocks


def test_eviction_under_memory_pressure(model_and_prompts) -> None:
    model, _system, users = model_and_prompts
    rng = random.Random(7)
    vocab = min(model.cfg.vocab_size, 256)
    # 24 blocks of 4 tokens: each request needs ~10-16 blocks, so cached blocks are evicted.
    heads = [[rng.randrange(3, vocab) for _ in range(24)] for _ in range(3)]
    waves = [[(f"w{w}r{r}", heads[(w + r) % 3] + users[r % 4], 8) for r in range(2)] for w in range(6)]
    _, on = _compare(model, waves, kv_tokens=96, max_seqs=2)
    assert on.cache.stats.evicted_blocks > 0
    assert on.cache.stats.hit_tokens > 0


def test_cancellation_while_sharing_blocks(model_and_prompts) -> None:
    model, system, users = model_and_prompts
    waves = [
        [("warm", system + users[0], 3)],
        [(f"s{i}", system + users[i], 12) for i in range(4)],
        [("after", system + users[1], 6)],
    ]
    _, on = _compare(model, waves, cancel={"s1": 1, "s2": 4})
    assert on.max_ref >= 4
    assert len(on.seqs["s1"].output) < 12 and len(on.seqs["s2"].output) < 12
    assert on.seqs["s1"].finish_reason == "cancelled"


# -- the scheduler with prefix caching: invariants on random workloads -----------------------------
@settings(max_examples=120, deadline=None)
@given(
    reqs=st.lists(
        st.tuples(
            st.integers(0, 2),  # which shared head
            st.integers(0, 24),  # head length used
            st.integers(1, 12),  # own tail
            st.integers(1, 12),  # output tokens
            st.booleans(),  # cancelled
            st.integers(0, 30),  # arrival step
        ),
        min_size=1,
        max_size=20,
    ),
    kv_blocks=st.integers(8, 24),
    max_seqs=st.integers(1, 5),
    budget=st.integers(1, 40),
    chunk=st.integers(1, 24),
)
def test_scheduler_with_prefix_caching_never_reads_wrong_kv(reqs, kv_blocks, max_seqs, budget, chunk):
    """A stand-in for the model writes, into each slot it computes, the token prefix that slot's
    K/V stands for; every slot a step reads must hold its own prefix. With shared blocks this
    proves hits are real, shared blocks are never written, and eviction never drops a block in
    use. Reference counts equal the live tables at every step, and all come back."""
    bs = 4
    cache = KVCache(
        n_layers=1, n_heads=1, head_dim=1, num_tokens=kv_blocks * bs, block_size=bs, prefix_caching=True
    )
    sched = Scheduler(
        SchedulerConfig(
            max_step_tokens=budget, max_seqs=max_seqs, prefill_chunk=chunk, preempt_after_steps=1
        ),
        cache,
        FairQueue(),
    )
    heads = [[h * 10 + i % 7 for i in range(24)] for h in range(3)]
    seqs, arrive, cancel_at = [], {}, {}
    for i, (h, hl, tl, out, cancel, at) in enumerate(reqs):
        prompt = heads[h][:hl] + [1000 + i] * tl
        if len(prompt) + out > cache.capacity_tokens:
            continue
        seq = Sequence(
            f"s{i}", "t", prompt, max_tokens=out, klass="batch" if i % 3 else "interactive", stop_at_eos=False
        )
        seqs.append(seq)
        arrive.setdefault(at, []).append(seq)
        if cancel:
            cancel_at[id(seq)] = 2 + i
    shadow: dict[int, tuple[int, ...]] = {}
    for step in range(4000):
        for seq in arrive.pop(step, []):
            sched.add(seq)
        if not sched.running and not len(sched.fair) and not arrive:
            break
        for seq in [s for s in seqs if cancel_at.get(id(s)) == step]:
            sched.drop(seq)
        plan = sched.schedule()
        cache.check([s.block_table for s in sched.running])
        for seq, n in plan.chunks:
            for p in range(seq.num_computed, seq.num_computed + n):
                block = seq.block_table[p // bs]
                assert cache.ref_count(block) == 1, "a shared block is written"
                shadow[block * bs + p % bs] = tuple(seq.tokens[: p + 1])
        for seq, n in plan.chunks:
            for p in range(seq.num_computed + n):
                assert shadow[seq.block_table[p // bs] * bs + p % bs] == tuple(seq.tokens[: p + 1])
        # Output token: a function of the context, as a model's is.
        sampled = [
            hash(tuple(s.tokens)) % 50 if s.num_computed + n == s.num_tokens else None for s, n in plan.chunks
        ]
        sched.commit(plan, sampled, eos_id=-1)
    else:
        raise AssertionError("work did not finish")
    cache.check([])
    assert cache.used_tokens == 0
    for seq in seqs:
        assert seq.status is SeqStatus.FINISHED
        if cancel_at.get(id(seq)) is None:
            assert len(seq.output) == seq.max_tokens


# -- the live server: shared blocks, clients gone mid-stream, gauges back to zero --------------------
def test_live_server_disconnects_while_sharing_leave_nothing_held() -> None:
    import contextlib
    import time

    import httpx

    from services.inference.admission import hash_key

    from .conftest import LiveServer

    # A generous wait cap: this test is about KV blocks, not admission's overload estimate.
    server = LiveServer(
        tenants={"p1": {"key_sha256": hash_key("k-p1")}},
        max_seqs=8,
        kv_block_size=4,
        max_queue_wait_interactive=60.0,
    )
    eng = server.runtime.engine
    headers = {"Authorization": "Bearer k-p1"}
    system = "You are a terse assistant for the standard library; answer in one line. " * 2
    shared, release = threading.Event(), threading.Event()
    try:
        assert eng.cache.prefix_caching and eng.prefix_cache_scope == "tenant"
        hit0 = REGISTRY.get_sample_value("inference_prefix_cache_hit_tokens_total", {"tenant": "p1"}) or 0.0
        with httpx.Client(base_url=server.url, timeout=30) as c:
            warm = {"prompt": system + "Q0", "max_tokens": 2, "ignore_eos": True}
            assert c.post("/v1/completions", json=warm, headers=headers).status_code == 200

            def gate(plan: StepPlan) -> None:
                refs = [eng.cache.ref_count(b) for s in eng.scheduler.running for b in s.block_table]
                if (
                    len(eng.scheduler.running) == 3
                    and max(refs) >= 3
                    and all(s.output for s in eng.scheduler.running)
                ):
                    shared.set()
                    assert release.wait(30), "gate never released"

            eng.step_observer = gate
            with contextlib.ExitStack() as stack:
                for i in range(3):
                    body = {
                        "prompt": system + f"Q{i + 1}",
                        "max_tokens": 200,
                        "ignore_eos": True,
                        "stream": True,
                    }
                    r = stack.enter_context(c.stream("POST", "/v1/completions", json=body, headers=headers))
                    assert r.status_code == 200, (r.status_code, r.read())
                assert shared.wait(30), "three streams never ran on shared blocks"
            release.set()  # every client gone while the engine was held mid-step
            deadline = time.monotonic() + 20
            while (
                eng.stats().running
                or eng.stats().waiting
                or eng.cache.used_tokens
                or any(eng.backlog_tokens(k) for k in ("interactive", "batch"))
            ):
                assert time.monotonic() < deadline, eng.stats()
                time.sleep(0.01)
        eng.step_observer = None
        holder: list[None] = []
        eng.call(lambda _r: holder.append(eng.cache.check([]))).result(10)  # on the engine thread
        assert REGISTRY.get_sample_value("inference_kv_cache_used_tokens") == 0.0
        assert REGISTRY.get_sample_value("inference_running_sequences") == 0.0
        assert eng.cache.cached_blocks > 0  # the shared prompt stays cached for the next request
        hit = REGISTRY.get_sample_value("inference_prefix_cache_hit_tokens_total", {"tenant": "p1"}) or 0.0
        assert hit - hit0 >= 3 * (len(system) // 4) * 4 - 12
    finally:
        release.set()
        eng.step_observer = None
        server.stop()


@pytest.mark.parametrize(("flag", "scope"), [(True, "tenant"), (False, "global")])
def test_settings_turn_it_on_and_off(flag: bool, scope: str) -> None:
    from services.inference.app import build_runtime
    from services.inference.settings import InferenceSettings

    s = InferenceSettings(
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=128,
        embeddings=False,
        grpc_port=-1,
        prefix_caching=flag,
        prefix_cache_scope=scope,
        engine_process=False,  # looks at the engine's KV cache
    )
    rt = build_runtime(s)
    assert rt.engine.cache.prefix_caching is flag
    assert rt.engine.prefix_cache_scope == scope
    seq = Sequence("x", "alice", [1] * 40, max_tokens=2)
    rt.engine.submit(seq)  # not started: submit only stamps and queues it
    assert seq.cache_salt == ("alice" if scope == "tenant" else "")
