"""One module per input format. Each exposes ``parse(lines, diag) -> Iterator[Event]``.

``lines`` is any iterable of text lines (a file object streams); line numbers count from 1
over every line, blank ones included, so messages point at the line a user sees in an editor.
Blank lines and lines starting with ``#`` are skipped by every text format.
"""
