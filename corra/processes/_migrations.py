"""Upgrades of stored process records, one schema step each (`corra.persistence.Codec`).

Each takes the ``data`` of a record at one schema and returns it at the next. They run on raw
JSON before it is structured: a record they do not recognise is left as it is, for the
structuring that follows to refuse with a message that names the field.
"""

from __future__ import annotations

from typing import Any

#: How corra before schema 2 said that it paused a process because its host stopped answering.
_HOST_PAUSE_REASON = "host unavailable: "


def record_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 says who paused a process (``state.paused_by``); schema 1 said it in words.

    A paused record whose reason starts with ``host unavailable: `` was paused by corra for
    its host (``"host"``); any other paused record by a user (``"user"``); a record that is
    not paused by nobody. The reason is kept as it was: it is what users see.
    """
    state = data.get("state")
    if not isinstance(state, dict) or "paused_by" in state:
        return data
    paused_by = None
    if state.get("phase") == "paused":
        reason = state.get("reason")
        host = isinstance(reason, str) and reason.startswith(_HOST_PAUSE_REASON)
        paused_by = "host" if host else "user"
    # (after paused_from, where the converter writes it: a record's keys keep their order)
    upgraded: dict[str, Any] = {}
    for key, value in state.items():
        upgraded[key] = value
        if key == "paused_from":
            upgraded["paused_by"] = paused_by
    upgraded.setdefault("paused_by", paused_by)
    return {**data, "state": upgraded}
