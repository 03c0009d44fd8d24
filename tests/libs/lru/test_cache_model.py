"""LRUCache against an OrderedDict reference model (hypothesis stateful testing).

The model is written from the contract, not from the implementation: an OrderedDict
whose order is least- to most-recently used, with each value's deadline beside it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from libs.lru import LRUCache

keys = st.integers(min_value=0, max_value=9)
values = st.integers()
ttls = st.one_of(st.none(), st.sampled_from([1.0, 2.5, 10.0]))


class LRUModel(RuleBasedStateMachine):
    @initialize(capacity=st.integers(min_value=1, max_value=6), default_ttl=ttls)
    def setup(self, capacity: int, default_ttl: float | None) -> None:
        self.now = 0.0
        self.capacity = capacity
        self.default_ttl = default_ttl
        self.model: OrderedDict[int, tuple[int, float]] = OrderedDict()
        self.evicted: list[tuple[int, int]] = []
        self.expected_evicted: list[tuple[int, int]] = []
        self.cache: LRUCache[int, int] = LRUCache(
            capacity,
            ttl=default_ttl,
            clock=lambda: self.now,
            on_evict=lambda k, v: self.evicted.append((k, v)),
        )

    def _live(self, key: int) -> bool:
        """Model lookup; an expired entry is dropped (and reported) as the contract says."""
        if key not in self.model:
            return False
        value, expires = self.model[key]
        if expires <= self.now:
            del self.model[key]
            self.expected_evicted.append((key, value))
            return False
        return True

    @rule(key=keys, value=values, ttl=ttls)
    def put(self, key: int, value: int, ttl: float | None) -> None:
        self.cache.put(key, value, ttl=ttl)
        ttl = ttl if ttl is not None else self.default_ttl
        expires = self.now + ttl if ttl is not None else math.inf
        self.model[key] = (value, expires)
        self.model.move_to_end(key)
        if len(self.model) > self.capacity:
            self.expected_evicted.append((lambda kv: (kv[0], kv[1][0]))(self.model.popitem(last=False)))

    @rule(key=keys)
    def get(self, key: int) -> None:
        got = self.cache.get(key, "miss")
        if self._live(key):
            self.model.move_to_end(key)
            assert got == self.model[key][0]
        else:
            assert got == "miss"

    @rule(key=keys)
    def peek(self, key: int) -> None:
        got: Any = self.cache.peek(key, "miss")
        assert got == (self.model[key][0] if self._live(key) else "miss")

    @rule(key=keys)
    def contains(self, key: int) -> None:
        assert (key in self.cache) == self._live(key)

    @rule(key=keys)
    def delete(self, key: int) -> None:
        removed = self.cache.delete(key)
        expected = self._live(key)
        if expected:
            del self.model[key]
        assert removed == expected

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0]))
    def advance_clock(self, dt: float) -> None:
        self.now += dt

    @rule()
    def items(self) -> None:
        got = self.cache.items()
        for key in list(self.model):
            self._live(key)
        assert got == [(k, v) for k, (v, _) in self.model.items()]

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()

    @invariant()
    def consistent(self) -> None:
        self.cache._check_invariants()
        # len() counts entries that expired but were not touched yet, exactly like the model.
        assert len(self.cache) == len(self.model)
        assert sorted(self.evicted) == sorted(self.expected_evicted)


TestLRUModel = LRUModel.TestCase
TestLRUModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
