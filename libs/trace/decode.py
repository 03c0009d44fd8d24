"""Bytes in, text lines out: strict UTF-8, and a byte that is not UTF-8 named by its line.

A text-mode file decodes ahead in blocks, so its ``UnicodeDecodeError`` knows neither the
line nor the offset in the file (only one inside its block). Here the input is read in
blocks of whole lines and decoded per block (a UTF-8 sequence never contains a line break, so
whole lines decode on their own): a bad byte is a :class:`FormatError` naming the file, the
line, the byte's offset in the input and its column, and in lenient mode that line alone is
dropped (read as a blank line, so later line numbers stay right).

Lines end as in a text-mode file with universal newlines (``\\n``, ``\\r\\n`` or ``\\r``), the
ending kept; memory is one block plus the longest line.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

from libs.trace.errors import Diagnostics, FormatError

BLOCK = 1 << 16
_BREAKS = (b"\n", b"\r")


def utf8_lines(
    stream: BinaryIO | io.RawIOBase | io.BufferedIOBase, diag: Diagnostics, *, block_size: int = BLOCK
) -> Iterator[str]:
    """Decode ``stream`` line by line; see the module docstring for errors."""
    # read1 returns what a pipe has now (a live `tail -f |` keeps flowing); read() of a pipe
    # would wait for a whole block.
    read = getattr(stream, "read1", None) or stream.read
    decode = bytes.decode
    held: list[bytes] = []  # the start of a line no block has ended yet
    offset = 0  # offset in the input of the next chunk's first byte
    lines_before = 0  # lines in the input before the next chunk
    while True:
        block = read(block_size)
        if block:
            # Cut after the last line break, but not after a final "\r": its "\n" may start
            # the next block, and "\r\n" is one line break.
            stop = len(block) - (block[-1:] == b"\r")
            cut = max(block.rfind(b"\n", 0, stop), block.rfind(b"\r", 0, stop)) + 1
            if not cut:
                held.append(block)
                continue
            if held:
                held.append(block[:cut])
                chunk = b"".join(held)
            else:
                chunk = block[:cut] if cut < len(block) else block
            held = [block[cut:]] if cut < len(block) else []
        else:
            chunk = b"".join(held)
            if not chunk:
                return
        parts = chunk.splitlines(keepends=True)
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            yield from _line_by_line(parts, offset, lines_before, diag)
        else:
            yield from map(decode, parts)
        offset += len(chunk)
        lines_before += len(parts)
        if not block:
            return


def _line_by_line(parts: list[bytes], offset: int, number: int, diag: Diagnostics) -> Iterator[str]:
    """The slow path of a chunk with a bad byte: decode each line, report the bad ones."""
    for part in parts:
        number += 1
        try:
            yield part.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = part[exc.start]
            diag.report(
                FormatError,
                f"not UTF-8 text: byte 0x{bad:02x} at byte offset {offset + exc.start} "
                f"(column {exc.start + 1}): {exc.reason}",
                number,
            )
            yield "\n"  # lenient: the line is dropped; a blank line keeps the numbering
        offset += len(part)
