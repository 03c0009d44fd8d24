"""PersistentLRU against an OrderedDict model across reopens and compactions (hypothesis)."""

from __future__ import annotations

import shutil
import tempfile
from collections import OrderedDict

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from libs.lru import PersistentLRU

keys = st.sampled_from(["a", "b", "c", "d", "e", "f", 1, 2, (3, "x")])
values = st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3))


class PersistentModel(RuleBasedStateMachine):
    @initialize(capacity=st.integers(min_value=1, max_value=5), snapshot_every=st.integers(1, 8))
    def setup(self, capacity: int, snapshot_every: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="lru-model-")
        self.capacity = capacity
        self.snapshot_every = snapshot_every
        self.model: OrderedDict[object, object] = OrderedDict()
        self.cache = self._open(capacity)

    def _open(self, capacity: int) -> PersistentLRU[object, object]:
        return PersistentLRU(self.dir, capacity, snapshot_every=self.snapshot_every, sync="never")

    @rule(key=keys, value=values)
    def put(self, key: object, value: object) -> None:
        self.cache.put(key, value)
        self.model[key] = value
        self.model.move_to_end(key)
        while len(self.model) > self.capacity:
            self.model.popitem(last=False)

    @rule(key=keys)
    def get(self, key: object) -> None:
        assert self.cache.get(key, "miss") == self.model.get(key, "miss")
        if key in self.model:
            self.model.move_to_end(key)

    @rule(key=keys)
    def delete(self, key: object) -> None:
        assert self.cache.delete(key) == (self.model.pop(key, "miss") != "miss")

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()

    @rule()
    def snapshot(self) -> None:
        self.cache.snapshot()

    @rule()
    def reopen(self) -> None:
        self.cache.close()
        self.cache = self._open(self.capacity)

    @precondition(lambda self: self.capacity > 1)
    @rule()
    def reopen_smaller(self) -> None:
        self.cache.close()
        self.capacity -= 1
        self.cache = self._open(self.capacity)
        while len(self.model) > self.capacity:
            self.model.popitem(last=False)

    @invariant()
    def same_entries_in_the_same_order(self) -> None:
        assert self.cache.items() == list(self.model.items())

    def teardown(self) -> None:
        if hasattr(self, "cache"):
            self.cache.close()
            shutil.rmtree(self.dir, ignore_errors=True)


TestPersistentModel = PersistentModel.TestCase
TestPersistentModel.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
