"""Aggregation: the call tree (inclusive/exclusive time per call path) and the per-function
table derived from it.

A node is a call *path*: recursion gives ``f`` and ``f;f`` as separate nodes, so for every
node ``inclusive == exclusive + sum(child.inclusive)`` holds exactly as in the trace. Building
it consumes a well-formed stream (``stack.py``) with one open-frame stack per track, O(depth);
the tree itself grows with the number of distinct call paths, not with the number of events.

The per-function view merges paths by name. Its inclusive time counts a frame only when no
caller of it has the same name (the outermost activation), so recursion is not counted twice
and a function's inclusive time never exceeds the total.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from libs.trace.events import BEGIN, Event


class Node:
    """One call path: ``calls`` frames with this path, their summed inclusive/exclusive time."""

    __slots__ = ("calls", "children", "exclusive", "inclusive", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.children: dict[str, Node] = {}
        self.calls = 0
        self.inclusive = 0.0
        self.exclusive = 0.0

    def walk(self) -> Iterator[tuple[tuple[str, ...], Node]]:
        """Every node below this one with its path (names from the first level down),
        pre-order, children in first-seen order; iterative, so deep recursion is fine.

        Each path is a new tuple, O(depth) per node: for whole-tree output at any depth use
        :meth:`descend` and keep the path yourself (the writers do)."""
        todo: list[tuple[tuple[str, ...], Node]] = [((c.name,), c) for c in reversed(self.children.values())]
        while todo:
            path, node = todo.pop()
            yield path, node
            todo.extend(((*path, c.name), c) for c in reversed(node.children.values()))

    def descend(self) -> Iterator[tuple[int, Node]]:
        """The nodes of :meth:`walk`, in the same order, each with its depth (1 = a child of
        this node) instead of its path: O(1) per node, so a consumer that keeps the current
        path as a list (``del path[depth - 1:]; path.append(node.name)``) is linear in the
        size of the tree however deep it is."""
        todo: list[tuple[int, Node]] = [(1, c) for c in reversed(self.children.values())]
        while todo:
            depth, node = todo.pop()
            yield depth, node
            if node.children:
                todo.extend((depth + 1, c) for c in reversed(node.children.values()))


class CallTree:
    """The merged call tree of a trace. ``root`` is virtual: its children are the outermost
    frames, its ``inclusive`` the total traced time."""

    def __init__(self) -> None:
        self.root = Node("<root>")
        self.start: float | None = None
        self.end: float | None = None

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> CallTree:
        tree = cls()
        tree.add(events)
        return tree

    def add(self, events: Iterable[Event]) -> None:
        root = self.root
        # Per track, the open frames as [node, begin ts, time of completed children]. The
        # current track's stack is cached in a local: consecutive events nearly always share
        # a track, and this loop is the hot path of every report (see benchmarks/bench_trace.py).
        stacks: dict[str, list[list]] = {}
        track: str | None = None
        stack: list[list] = []
        first = self.start
        last = self.end
        for ev in events:
            if ev.track is not track:
                track = ev.track
                stack = stacks.setdefault(track, [])
            if ev.kind == BEGIN:
                parent = stack[-1][0] if stack else root
                node = parent.children.get(ev.name)
                if node is None:
                    node = parent.children[ev.name] = Node(ev.name)
                stack.append([node, ev.ts, 0.0])
                if first is None or ev.ts < first:
                    first = ev.ts
            else:
                node, begin, child_time = stack.pop()
                inclusive = ev.ts - begin
                node.calls += 1
                node.inclusive += inclusive
                node.exclusive += inclusive - child_time
                if stack:
                    stack[-1][2] += inclusive
                else:
                    root.inclusive += inclusive
                    # Only an outermost end can be the latest timestamp of its track.
                    if last is None or ev.ts > last:
                        last = ev.ts
        self.start, self.end = first, last

    @property
    def total(self) -> float:
        return self.root.inclusive

    def functions(self) -> list[FunctionStats]:
        """Per-function totals (see module docstring for recursion)."""
        stats: dict[str, FunctionStats] = {}
        on_path: dict[str, int] = {}  # how many frames of each name are above the current node
        todo: list[tuple[Node, bool]] = [(child, False) for child in self.root.children.values()]
        while todo:
            node, leaving = todo.pop()
            if leaving:
                on_path[node.name] -= 1
                continue
            entry = stats.get(node.name)
            if entry is None:
                entry = stats[node.name] = FunctionStats(node.name)
            entry.calls += node.calls
            entry.exclusive += node.exclusive
            if not on_path.get(node.name):
                entry.inclusive += node.inclusive
            on_path[node.name] = on_path.get(node.name, 0) + 1
            todo.append((node, True))
            todo.extend((child, False) for child in node.children.values())
        return list(stats.values())


@dataclass
class FunctionStats:
    name: str
    calls: int = 0
    inclusive: float = 0.0
    exclusive: float = 0.0
