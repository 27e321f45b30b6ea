"""The writes of the keyed databases (notes, statuses, the layer above's entries), each of
them no save's: no history, snapshot or index changes (`corra.persistence._keyed` reads
them). Mixed into `corra.persistence.Store`, whose writer commits them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from corra._errors import ConfigError
from corra.persistence._keys import MAX_KEY_BYTES, process_key, require_bytes
from corra.persistence._writes import PutEntries, PutNotes, Write


class KeyedWrites:
    """`put_notes`, `put_statuses`, `put_entries`: each one transaction of the writer's."""

    async def _submit(self, write: Write) -> Any:
        raise NotImplementedError

    async def put_notes(self, notes: Mapping[str, bytes | None]) -> None:
        """Set the note of each process id to its bytes, or remove it (None), in one
        transaction: no save's (no history, snapshot or index changes). A checkpoint.
        Raises `StoreError` as `delete` does."""
        items = tuple(
            (process_key(key), None if value is None else require_bytes(value, "note"))
            for key, value in notes.items()
        )
        await self._submit(PutNotes(items))

    async def put_entries(self, items: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Set each key of the ``workflows`` database to its bytes, or remove it (None), in
        order, in one durable transaction (`corra.persistence._keyed.EntryReads` reads
        them). A checkpoint; the writes of a cancelled call may still be committed.

        Raises:
            StoreError: the transaction failed, or the store is closed or read-only.
            ConfigError: a key is empty or longer than LMDB takes.
            TypeError: a key or a value is not bytes.
        """
        checked = []
        for key, value in items:
            require_bytes(key, "key")
            if not key or len(key) > MAX_KEY_BYTES:
                raise ConfigError(f"key: got {len(key)} bytes, expected 1 to {MAX_KEY_BYTES}")
            checked.append((key, None if value is None else require_bytes(value, "entry")))
        await self._submit(PutEntries(tuple(checked)))

    async def put_statuses(self, statuses: Mapping[str, bytes | None]) -> None:
        """Set (bytes) or remove (None) the status of each process id, in one transaction,
        as `put_notes` does notes (`corra.persistence._keyed`). A checkpoint."""
        items = tuple(
            (process_key(key), None if value is None else require_bytes(value, "status"))
            for key, value in statuses.items()
        )
        await self._submit(PutNotes(items, "statuses"))
