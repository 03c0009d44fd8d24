"""memoize: one entry per distinct binding of the parameters, functools-style introspection."""

from __future__ import annotations

import inspect
import json
import math
import threading
from collections import OrderedDict, defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.lru import CacheInfo, memoize
from libs.lru.callkey import CallKey, canonical


def counted(maxsize: int | None = 128, **options: Any) -> tuple[Any, list[tuple[Any, ...]]]:
    """A memoized function that records every real call."""
    calls: list[tuple[Any, ...]] = []

    @memoize(maxsize, **options)
    def f(a: Any, b: Any = 2, *rest: Any, c: Any = 3, **extra: Any) -> tuple[Any, ...]:
        calls.append((a, b, rest, c, extra))
        return (a, b, rest, c, extra)

    return f, calls


def test_spellings_of_the_same_binding_share_one_entry() -> None:
    calls: list[tuple[int, int]] = []

    @memoize()
    def f(a: int, b: int = 2) -> int:
        calls.append((a, b))
        return a + b

    assert f(1, b=2) == f(b=2, a=1) == f(1) == f(1, 2) == 3
    assert calls == [(1, 2)]
    assert f.cache_info() == CacheInfo(hits=3, misses=1, maxsize=128, currsize=1)  # type: ignore[attr-defined]


def test_keyword_order_and_defaults_of_keyword_only_and_var_kwargs_do_not_matter() -> None:
    f, calls = counted()
    f(1, c=3, x=1, y=2)
    f(1, 2, y=2, x=1)
    f(a=1, y=2, c=3, x=1)
    assert len(calls) == 1
    f(1, x=1)  # different **extra
    assert len(calls) == 2


def test_var_positional_args_are_part_of_the_key() -> None:
    f, calls = counted()
    f(1, 2, 3, 4)
    f(1, 2, 3, 4)
    f(1, 2, 3)
    f(1, 2, (3, 4))
    assert len(calls) == 3


def test_unhashable_nested_arguments_are_canonicalised_recursively() -> None:
    f, calls = counted()
    f({"x": [1, {2, 3}], "y": {"z": ()}})
    f({"x": [1, {3, 2}], "y": {"z": ()}})  # same value, different set order
    assert len(calls) == 1
    f({"x": [1, {2, 4}], "y": {"z": ()}})
    assert len(calls) == 2


def test_dicts_that_differ_only_in_order_are_different_keys() -> None:
    dumps = memoize()(json.dumps)
    assert dumps({"x": 1, "y": 2}) == '{"x": 1, "y": 2}'
    assert dumps({"y": 2, "x": 1}) == '{"y": 2, "x": 1}'  # was the text of the first call
    assert dumps({"x": 1, "y": 2}) == '{"x": 1, "y": 2}'
    assert dumps.cache_info().hits == 1


def test_unequal_ordered_dicts_never_share_an_entry() -> None:
    a, b = OrderedDict(x=1, y=2), OrderedDict(y=2, x=1)
    assert a != b
    f, calls = counted()
    assert f(a)[0] is a and f(b)[0] is b
    assert len(calls) == 2
    assert canonical(a) != canonical(b) != canonical(dict(b))


def test_defaultdicts_with_different_factories_are_different_keys() -> None:
    f, calls = counted()
    f(defaultdict(list, x=[1]))
    f(defaultdict(set, x=[1]))
    f(defaultdict(list, x=[1]))
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (Decimal("1.0"), Decimal("1.00")),
        (Decimal("0"), Decimal("-0")),
        (
            datetime(2020, 1, 1, 12, tzinfo=UTC),
            datetime(2020, 1, 1, 13, tzinfo=timezone(timedelta(hours=1))),
        ),
        (datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=timezone(timedelta(0), "Z"))),
        (datetime(2020, 11, 1, 1, 30), datetime(2020, 11, 1, 1, 30, fold=1)),
        (range(0), range(2, 2)),
        (range(0, 3, 2), range(0, 4, 2)),
    ],
)
def test_equal_stdlib_values_that_show_differently_are_different_keys(a: Any, b: Any) -> None:
    assert a == b and (str(a) != str(b) or repr(a) != repr(b))
    shown = memoize()(repr)
    assert (shown(a), shown(b)) == (repr(a), repr(b))


def test_containers_of_different_types_are_different_keys() -> None:
    f, calls = counted()
    for arg in ([1], (1,), {1}, frozenset({1}), {1: None}, bytearray(b"\x01"), b"\x01"):
        f(arg)
    assert len(calls) == 7


def test_one_true_and_one_point_zero_are_different_keys() -> None:
    f, calls = counted()
    assert f(1)[0] is not True
    assert f(True)[0] is True
    assert type(f(1.0)[0]) is float
    assert len(calls) == 3
    f(1)
    assert len(calls) == 3


def test_signed_zero_and_nan_floats() -> None:
    assert canonical(0.0) != canonical(-0.0)
    assert canonical(float("nan")) == canonical(math.nan)


def test_tagged_values_cannot_collide_with_tuples_that_look_like_tags() -> None:
    assert canonical(("bool", True)) != canonical(True)
    assert canonical(("float", (1.0).hex())) != canonical(1.0)
    assert canonical(["obj", "x"]) != canonical(("obj", "x"))


def test_custom_hashable_objects_are_keyed_by_type_and_equality() -> None:
    class Point(tuple):  # a tuple subclass is canonicalised like a tuple, under its own name
        pass

    assert canonical(Point((1, 2))) != canonical((1, 2))
    assert canonical(Point((1, [2]))) == canonical(Point((1, [2])))


def test_unhashable_unknown_type_raises_a_clear_type_error() -> None:
    class Bag:
        __hash__ = None  # type: ignore[assignment]

    f, _ = counted()
    with pytest.raises(TypeError, match=r"unhashable .*Bag"):
        f(Bag())


def test_self_referential_argument_raises_value_error() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    f, _ = counted()
    with pytest.raises(ValueError, match="self-referential"):
        f(loop)


def test_shared_but_not_cyclic_substructure_is_fine() -> None:
    shared = [1, 2]
    assert canonical([shared, shared]) == canonical([[1, 2], [1, 2]])


def test_binding_errors_are_the_functions_own_type_errors() -> None:
    f, calls = counted()
    with pytest.raises(TypeError, match="missing a required argument"):
        f()
    with pytest.raises(TypeError):
        f(1, a=1)
    assert calls == []


def test_key_includes_function_identity() -> None:
    def g(x: int) -> int:
        return x

    def h(x: int) -> int:
        return x

    assert CallKey(g)((1,), {}) != CallKey(h)((1,), {})
    assert CallKey(g)((1,), {})[0].endswith("test_key_includes_function_identity.<locals>.g")


def test_fast_path_and_bind_path_build_identical_keys() -> None:
    def f(a: Any, b: Any) -> None: ...

    key = CallKey(f)
    assert key(([1], {"x": 2.5}), {}) == key((), {"b": {"x": 2.5}, "a": [1]})


def test_functions_without_a_signature_are_keyed_by_raw_args_and_kwargs() -> None:
    with pytest.raises(ValueError):
        inspect.signature(max)
    cached_max = memoize()(max)
    assert cached_max(3, 1, 2) == 3 and cached_max([1, 5]) == 5 and cached_max(3, 1, 2) == 3
    assert cached_max(3, 1, key=lambda x: -x) == 1
    assert cached_max.cache_info().hits == 1


def test_lru_eviction_and_cache_info() -> None:
    f, calls = counted(maxsize=2)
    f(1)
    f(2)
    f(1)
    f(3)  # evicts 2
    f(2)
    assert [c[0] for c in calls] == [1, 2, 3, 2]
    assert f.cache_info() == CacheInfo(hits=1, misses=4, maxsize=2, currsize=2)


def test_cache_clear_resets_entries_and_counters() -> None:
    f, calls = counted()
    f(1)
    f(1)
    f.cache_clear()
    assert f.cache_info() == CacheInfo(0, 0, 128, 0)
    f(1)
    assert len(calls) == 2


def test_maxsize_zero_caches_nothing_and_none_is_unbounded() -> None:
    f, calls = counted(maxsize=0)
    f(1)
    f(1)
    assert len(calls) == 2 and f.cache_info() == CacheInfo(0, 2, 0, 0)
    g, gcalls = counted(maxsize=None)
    for i in range(1000):
        g(i)
    for i in range(1000):
        g(i)
    assert len(gcalls) == 1000 and g.cache_info().currsize == 1000


def test_ttl_expires_results() -> None:
    f, calls = counted(ttl=0.05)
    f(1)
    f(1)
    assert len(calls) == 1
    threading.Event().wait(0.1)
    f(1)
    assert len(calls) == 2


def test_exceptions_are_not_cached() -> None:
    attempts = 0

    @memoize()
    def flaky(x: int) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("first call fails")
        return x

    with pytest.raises(RuntimeError):
        flaky(1)
    assert flaky(1) == 1 and flaky(1) == 1
    assert attempts == 2


def test_wrapper_looks_like_the_function() -> None:
    f, _ = counted()
    assert f.__name__ == "f" and callable(f.__wrapped__)
    assert f.cache_parameters() == {"maxsize": 128, "ttl": None, "persist": None}


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_bad_maxsize_is_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match="maxsize"):
        memoize(bad)


def test_bare_decorator_use_is_rejected_with_a_hint() -> None:
    with pytest.raises(TypeError, match=r"@memoize\(\)"):
        memoize(lambda x: x)  # type: ignore[arg-type]


def test_ttl_with_persist_is_rejected(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="ttl and persist"):
        memoize(ttl=1, persist=tmp_path)


# --- properties ---------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=4),
    st.binary(max_size=4),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
        st.frozensets(scalars, max_size=3),
        st.sets(scalars, max_size=3),
    ),
    max_leaves=8,
)


def _typed_equal(a: Any, b: Any) -> bool:
    """Reference equality: same type at every level, and equal values (independent of callkey)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a.hex() == b.hex()
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_typed_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):  # insertion order included: json.dumps, repr and iteration show it
        return list(a) == list(b) and all(_typed_equal(a[k], b[k]) for k in a)
    if isinstance(a, set | frozenset):
        return len(a) == len(b) and all(any(_typed_equal(x, y) for y in b) for x in a)
    return bool(a == b)


@given(values, values)
def test_canonical_keys_are_equal_exactly_when_values_are_typed_equal(a: Any, b: Any) -> None:
    assert (canonical(a) == canonical(b)) == _typed_equal(a, b)


@given(values)
def test_canonical_key_is_hashable_and_stable(a: Any) -> None:
    assert hash(canonical(a)) == hash(canonical(a))


# Values built the way callers build them, including the types whose equality ignores something
# that repr() shows (order of a dict, exponent of a Decimal, time zone of a datetime, ...).
# Sets are left out on purpose: their iteration order is arbitrary, and equal sets share a key.
zones = st.sampled_from([None, UTC, timezone(timedelta(hours=1)), timezone(timedelta(0), "Z")])
shown_scalars = st.one_of(
    scalars,
    st.floats(),  # NaN and -0.0 included
    st.decimals(allow_nan=False, places=None),
    st.datetimes(timezones=zones),
    st.builds(range, st.integers(-3, 3), st.integers(-3, 3), st.sampled_from([1, 2, -1])),
)
shown_values = st.recursive(
    shown_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.lists(st.tuples(st.sampled_from("xyz"), inner), max_size=3).map(dict),
        st.lists(st.tuples(st.sampled_from("xyz"), inner), max_size=3).map(OrderedDict),
    ),
    max_leaves=8,
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(st.tuples(st.sampled_from("xyz"), inner), max_size=3).map(dict),
    ),
    max_leaves=8,
)


def _reordered(value: Any, rnd: Any) -> Any:
    """An equal value rebuilt with every dict's insertion order shuffled (the case to catch)."""
    if isinstance(value, dict):
        items = [(k, _reordered(v, rnd)) for k, v in value.items()]
        rnd.shuffle(items)
        return type(value)(items)
    if isinstance(value, list | tuple):
        return type(value)(_reordered(v, rnd) for v in value)
    return value


def _check_memoized_results_match(sensitive: Any, a: Any, b: Any) -> None:
    memo = memoize(maxsize=None)(sensitive)
    assert memo(a) == sensitive(a)
    # A key collision would hand b the result computed for a.
    assert memo(b) == sensitive(b)
    if canonical(a) == canonical(b):
        assert sensitive(a) == sensitive(b)


@given(st.data())
def test_equal_keys_mean_equal_repr_results(data: st.DataObject) -> None:
    a = data.draw(shown_values)
    b = data.draw(st.one_of(st.randoms(use_true_random=False).map(lambda r: _reordered(a, r)), shown_values))
    _check_memoized_results_match(repr, a, b)


@given(st.data())
def test_equal_keys_mean_equal_json_results(data: st.DataObject) -> None:
    a = data.draw(json_values)
    b = data.draw(st.one_of(st.randoms(use_true_random=False).map(lambda r: _reordered(a, r)), json_values))
    _check_memoized_results_match(json.dumps, a, b)


@given(shown_values, st.randoms(use_true_random=False))
def test_reordered_values_share_a_key_exactly_when_their_repr_is_unchanged(a: Any, rnd: Any) -> None:
    b = _reordered(a, rnd)
    assert (canonical(a) == canonical(b)) == (repr(a) == repr(b))


def test_many_threads_get_correct_results_and_consistent_counters() -> None:
    @memoize(maxsize=16)
    def square(x: int, *, offset: int = 0) -> int:
        return x * x + offset

    errors: list[str] = []
    calls_per_thread = 2000

    def work(tid: int) -> None:
        for i in range(calls_per_thread):
            # 8 x values x 2 offsets = 16 keys = maxsize: hits do not depend on how the threads
            # interleave (a cyclic scan over more keys than fit never hits when run alone)
            x = (tid * 31 + i) % 8
            got = square(x, offset=tid % 2) if i % 2 else square(x=x, offset=tid % 2)
            if got != x * x + tid % 2:
                errors.append(f"square({x}) = {got}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    info = square.cache_info()
    assert info.hits + info.misses == 8 * calls_per_thread
    assert info.hits > 0 and info.currsize <= 16
