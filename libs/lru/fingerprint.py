"""The fingerprint of a function's code, which salts the keys of a persisted memoize cache.

A result that ``memoize(persist=...)`` wrote to disk is only valid for the code that computed
it: after ``return x * 2`` became ``return x * 3``, a cache keyed by the function's name alone
would keep answering ``f(5) == 10``. The fingerprint is a hash of what the function executes:
the bytecode, exception table, constants, names and argument layout of its code object, and of
every code object nested in it (lambdas, inner functions, comprehensions), and of every
function it wraps (``__wrapped__``, as ``functools.wraps`` sets it). It leaves out what does not
change behaviour (file name, line numbers, the name of the function), so moving a function or
editing code around it keeps its cache, and it is the same in every process: frozenset
constants (``x in {"a", "b"}``) are hashed in sorted order, not in the per-process order of
salted string hashes.

What it does not see: other functions the code calls, globals it reads, values its closure
captured, and the state of objects it uses. A cache whose results depend on those must be
cleared by hand (``cache_clear()``) when they change. Its Python version is part of it, since
bytecode differs between versions, as is the format of the argument keys (``KEY_FORMAT``).
"""

from __future__ import annotations

import hashlib
import sys
import types
from collections.abc import Callable
from typing import Any

# Bump when libs.lru.callkey changes the canonical form of an argument: keys persisted in the
# old form must not be compared with new ones.
KEY_FORMAT = 2


def _canon(value: Any) -> object:
    """A nested tuple of strings, bytes and ints standing for one constant or code object."""
    if isinstance(value, types.CodeType):
        return (
            "code",
            value.co_code,
            getattr(value, "co_exceptiontable", b""),
            value.co_argcount,
            value.co_posonlyargcount,
            value.co_kwonlyargcount,
            value.co_flags,
            value.co_names,
            value.co_varnames,
            value.co_freevars,
            value.co_cellvars,
            tuple(_canon(c) for c in value.co_consts),
        )
    if isinstance(value, tuple):
        return ("tuple", tuple(_canon(v) for v in value))
    if isinstance(value, frozenset):
        return ("frozenset", tuple(sorted((_canon(v) for v in value), key=repr)))
    return (type(value).__name__, repr(value))


def code_fingerprint(func: Callable[..., Any]) -> str:
    """32 hex digits that change whenever the code ``func`` runs changes (see the module doc)."""
    parts: list[object] = [KEY_FORMAT, sys.implementation.name, sys.version_info[:2]]
    seen: set[int] = set()
    current: Any = func
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "__code__", None)
        if code is None:  # a builtin or a callable object: its name is all there is
            code = getattr(type(current).__call__, "__code__", None)
        parts.append(
            _canon(code)
            if code is not None
            else ("named", getattr(current, "__module__", None), getattr(current, "__qualname__", None))
        )
        current = getattr(current, "__wrapped__", None)
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()
