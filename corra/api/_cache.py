"""The JSON of terminal processes, kept for ``GET /v1/processes/{id}``, bounded by bytes.

A terminal process changes again only when a user reruns or removes it (no other event
leaves a terminal phase, and its history is complete), so its answer can be kept and served
as is until then (`TerminalCache.drop`). What bounds the memory this takes
is the size of the answers, not their number: one process with large labels or a long
history weighs what a thousand small ones do.
"""

from __future__ import annotations

import collections

#: The most bytes of answers kept in all (their encoded size).
TERMINAL_CACHE_BYTES = 32 << 20
#: The largest answer kept: above it, one answer would push out a large part of the others
#: (it is built anew on each request instead).
TERMINAL_ENTRY_BYTES = TERMINAL_CACHE_BYTES // 16


class TerminalCache:
    """Encoded answers by process id, least recently used out first, at most ``max_bytes``
    of them in all (an answer above ``max_entry`` is not kept)."""

    def __init__(
        self, max_bytes: int = TERMINAL_CACHE_BYTES, max_entry: int = TERMINAL_ENTRY_BYTES
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry = min(max_entry, max_bytes)
        self.size = 0
        """The bytes of the answers kept now."""
        self._bodies: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._bodies)

    def get(self, process_id: str) -> bytes | None:
        """The answer kept for ``process_id`` (now the most recently used), or None."""
        body = self._bodies.get(process_id)
        if body is not None:
            self._bodies.move_to_end(process_id)
        return body

    def put(self, process_id: str, body: bytes) -> None:
        """Keep ``body`` for ``process_id``, pushing out the least recently used answers
        beyond the bound."""
        if len(body) > self.max_entry:
            return
        old = self._bodies.pop(process_id, None)
        if old is not None:
            self.size -= len(old)
        self._bodies[process_id] = body
        self.size += len(body)
        while self.size > self.max_bytes:
            _, evicted = self._bodies.popitem(last=False)
            self.size -= len(evicted)

    def drop(self, process_id: str) -> None:
        """Forget the answer of ``process_id`` (rerun or removed: it changed)."""
        old = self._bodies.pop(process_id, None)
        if old is not None:
            self.size -= len(old)
