"""Canonical cache keys for function calls.

Two calls get the same key only when the function cannot tell their arguments apart: they bind
the same value to every parameter of the same function, where "the same" includes everything
the function can observe through Python's guaranteed behaviour (type, sign of zero, dict
insertion order, a Decimal's exponent, ...). A cache may miss when two inputs are
interchangeable; it must never hit with a result computed for a different input.

``inspect.signature(f).bind`` plus ``apply_defaults`` turn ``f(1, b=2)``, ``f(b=2, a=1)`` and
``f(1)`` (when ``b`` defaults to 2) into one binding; keyword-only and ``**kwargs`` arguments
are ordered by name, so keyword order never matters (a function that reads the order of its
own ``**kwargs`` must not be memoized).

Each argument is then canonicalised into a hashable, picklable form built from ``int``,
``str``, ``bytes``, ``None``, tuples and the hashable values kept as they are, which is what
lets a persistent cache find the same key after a restart:

* ``int``, ``str``, ``bytes`` and ``None`` stand for themselves (the fast, common case).
* Everything else is a tuple whose first item names the type, so ``[1]``, ``(1,)``, ``{1}``
  and ``frozenset({1})`` are four different keys, and so are ``1``, ``True`` and ``1.0``
  (Python says ``1 == True == 1.0``, but ``f(True)`` may rightly differ from ``f(1)``, e.g.
  ``json.dumps``; this matches ``functools.lru_cache(typed=True)``). Floats are keyed by
  ``float.hex()``, so ``0.0`` and ``-0.0`` differ and every NaN meets every other NaN.
* Lists, tuples, dicts, sets and frozensets (and subclasses, tagged with their own type
  name) are canonicalised recursively. Dict items keep their insertion order, which Python
  guarantees and which ``json.dumps``, ``repr`` and iteration show: ``{'x': 1, 'y': 2}`` and
  ``{'y': 2, 'x': 1}`` are two keys, and so are two ``OrderedDict``s that are unequal because
  of their order. A ``defaultdict``'s key includes its ``default_factory``.
* Set members are sorted (by the ``repr`` of their canonical form): set iteration order is
  arbitrary (string hashes are salted per process), so no function can rely on it, and
  ``functools.lru_cache`` likewise gives ``frozenset({8, 16})`` and ``frozenset({16, 8})``
  one entry. Sorting lets equal sets meet, also after a restart.
* Stdlib values whose equality is coarser than what they show are keyed by what they show:
  a ``Decimal`` by its sign, digits and exponent (``1.0`` vs ``1.00``), a ``datetime`` or
  ``time`` by its fields, ``fold`` and time zone (``12:00+00:00 == 13:00+01:00``, but their
  ``isoformat()`` differs), a ``range`` by start, stop and step (``range(0) == range(2, 2)``).
* Any other value must be hashable and is kept as is, tagged with its type's qualified name:
  it is keyed by its own ``__eq__``, so a type whose equal instances behave differently must
  not be an argument of a memoized function. Its ordering inside a set can fall back on its
  ``repr``; when that is ambiguous the worst case is a cache miss, never a wrong hit.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import inspect
from collections import defaultdict
from collections.abc import Callable, Hashable
from typing import Any

_SELF: tuple[type, ...] = (int, str, bytes, type(None))
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _shown(value: Any) -> Hashable | None:
    """For stdlib types whose ``==`` ignores something they show, that something; else None."""
    if isinstance(value, decimal.Decimal):
        return value.as_tuple()
    if isinstance(value, _dt.datetime | _dt.time):
        tz = value.tzinfo
        zone = None if tz is None else (_type_name(type(tz)), repr(tz), value.tzname())
        return (value.replace(tzinfo=None).isoformat(), value.fold, zone)
    if isinstance(value, range):
        return (value.start, value.stop, value.step)
    if isinstance(value, float):  # a float subclass: keyed like a float, by its exact bits
        return value.hex()
    if isinstance(value, complex):
        return (value.real.hex(), value.imag.hex())
    return None


def canonical(value: Any, _path: frozenset[int] = frozenset()) -> Hashable:
    """The canonical, hashable form of one argument value (see the module docstring)."""
    t = type(value)
    if t in _SELF:
        return value
    if t is bool:
        return ("bool", value)
    if t is float:
        return ("float", value.hex())
    if t is complex:
        return ("complex", value.real.hex(), value.imag.hex())
    if isinstance(value, list | tuple | dict | set | frozenset | bytearray):
        if id(value) in _path:
            raise ValueError(f"cannot build a cache key from a self-referential {t.__name__}")
        path = _path | {id(value)}
        tag = t.__name__ if t.__module__ == "builtins" else _type_name(t)
        if isinstance(value, bytearray):
            return (tag, bytes(value))
        if isinstance(value, list | tuple):
            return (tag, tuple([canonical(v, path) for v in value]))
        if isinstance(value, dict):
            items = tuple([(canonical(k, path), canonical(v, path)) for k, v in value.items()])
            if isinstance(value, defaultdict):
                return (tag, items, canonical(value.default_factory, path))
            return (tag, items)
        members = [canonical(v, path) for v in value]
        return (tag, tuple(sorted(members, key=repr)))
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"cannot build a cache key from an unhashable {_type_name(t)}; "
            "pass a hashable value or a list/tuple/dict/set of them"
        ) from None
    shown = _shown(value)
    if shown is not None:
        return ("obj", _type_name(t), shown)
    return ("obj", _type_name(t), value)


class CallKey:
    """Builds the cache key of a call to one function: ``(identity, canonical arguments)``."""

    def __init__(self, func: Callable[..., Any], salt: str = "") -> None:
        # Module + qualname identify the function across processes, which a persisted
        # cache needs; id() would not survive a restart. A persisted cache adds the code's
        # fingerprint as ``salt``, so results of an older body of the function never match.
        self.identity = f"{getattr(func, '__module__', None)}.{getattr(func, '__qualname__', repr(func))}"
        if salt:
            self.identity += f"#{salt}"
        try:
            self.signature = inspect.signature(func)
        except (ValueError, TypeError):
            # Some builtins have no introspectable signature. Keying by (*args, **kwargs) is
            # still exact; only different spellings of one call no longer share an entry.
            self.signature = inspect.Signature(
                [
                    inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
                    inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
                ]
            )
        self._kinds = {name: p.kind for name, p in self.signature.parameters.items()}
        params = self.signature.parameters.values()
        # A call that passes every parameter positionally to a function without *args,
        # **kwargs or keyword-only parameters binds exactly as written: skip bind() then.
        self._plain_arity = len(params) if all(p.kind in _POSITIONAL for p in params) else -1

    def build(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, tuple[Hashable, ...]]:
        """The key of the call ``func(*args, **kwargs)``."""
        if not kwargs and len(args) == self._plain_arity:
            return (self.identity, tuple(map(canonical, args)))
        bound = self.signature.bind(*args, **kwargs)  # TypeError exactly as the call would raise
        bound.apply_defaults()
        parts: list[Hashable] = []
        for name, value in bound.arguments.items():
            kind = self._kinds[name]
            if kind is inspect.Parameter.VAR_POSITIONAL:
                parts.append(("*", tuple([canonical(v) for v in value])))
            elif kind is inspect.Parameter.VAR_KEYWORD:
                parts.append(("**", tuple(sorted((k, canonical(v)) for k, v in value.items()))))
            else:
                parts.append(canonical(value))
        return (self.identity, tuple(parts))

    __call__ = build
