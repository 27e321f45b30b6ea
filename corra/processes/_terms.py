"""The index terms of a process record: what the store's secondary indexes hold of it.

Computed here and nowhere else: by the journal at every save (`TermsEncoder`), and by the
rebuild of an older store (`record_terms`); read by the listing (`corra.processes._listing`).
Each term is ``(index, group, order)`` (`corra.persistence.IndexTerm`):

- ``created``: one group; in creation order (``created_at``, then the id: the *creation
  position*);
- ``phase``: a group per phase, in creation order;
- ``label``: a group per ``key=value``, in creation order;
- ``name``: one group, in the order of the name, then of creation (a name prefix is a range);
- ``ended``: one group, terminal processes only, in the order of their end, then of creation.

The store counts every group (processes per phase, per label) without a scan.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

from corra.persistence import encode_terms, join_terms, term_template
from corra.processes._lifecycle import PHASES, TERMINAL
from corra.processes._record import ProcessRecord
from corra.processes._spec import ProcessSpec

CREATED: Final = "created"
PHASE: Final = "phase"
LABEL: Final = "label"
NAME: Final = "name"
ENDED: Final = "ended"

IndexTerm = tuple[str, bytes, bytes]

#: The longest label group stored as it is; a longer one (or one with NUL) is stored as a
#: digest, which a selector computes the same way (labels are matched whole, never by prefix).
MAX_LABEL_GROUP: Final = 256
_TIME = struct.Struct(">d")  # (big-endian IEEE 754 sorts as the numbers do, for times >= 0)
_PHASE_GROUPS: Final = {phase: phase.encode() for phase in PHASES}
#: After a name in its order: below every character a name may hold, so that ``job1`` comes
#: before ``job10`` (the store keeps NUL and SOH for itself).
NAME_END: Final = b"\x02"
_RESERVED: Final = (b"\x00", b"\x01")


def time_position(at: float) -> bytes:
    """A time as the start of a position: 16 hex digits that sort as the times do (times
    are >= 0), with no byte the store keeps for itself."""
    return _TIME.pack(at if at > 0.0 else 0.0).hex().encode()


def creation_position(record: ProcessRecord) -> bytes:
    """Where a record sorts in creation order (unique: the id is its end)."""
    return time_position(record.created_at) + record.id.encode("utf-8", "surrogateescape")


def phase_group(phase: str) -> bytes:
    return _PHASE_GROUPS.get(phase) or phase.encode()


def label_group(key: str, value: str) -> bytes:
    """The group of a ``key=value`` label (a digest if long, or holding NUL or SOH)."""
    text = f"{key}={value}".encode("utf-8", "surrogateescape")
    if len(text) > MAX_LABEL_GROUP or _RESERVED[0] in text or _RESERVED[1] in text:
        return b"\xff" + hashlib.sha256(text).hexdigest().encode()
    return text


def ended_at(record: ProcessRecord) -> float:
    """When a terminal process ended: its result's end, else its last transition."""
    result = record.state.result
    if result is not None and result.ended_at is not None:
        return result.ended_at
    return record.state.updated_at


def _lasting_terms(record: ProcessRecord, position: bytes) -> list[IndexTerm]:
    """The terms that stay while the record's spec does: creation, name, labels."""
    spec = record.spec
    name = (spec.name or record.id).encode("utf-8", "surrogateescape")
    terms: list[IndexTerm] = [(CREATED, b"", position), (NAME, b"", name + NAME_END + position)]
    if spec.labels:
        for key, value in spec.labels.items():
            terms.append((LABEL, label_group(key, value), position))
    return terms


def _phase_terms(record: ProcessRecord, position: bytes) -> list[IndexTerm]:
    """The terms that move with the phase: the phase, and the end of a terminal one."""
    phase = record.state.phase
    terms: list[IndexTerm] = [(PHASE, _PHASE_GROUPS[phase], position)]
    if phase in TERMINAL:
        terms.append((ENDED, b"", time_position(ended_at(record)) + position))
    return terms


def record_terms(record: ProcessRecord) -> tuple[IndexTerm, ...]:
    """Every index term of ``record`` (see the module's docstring), in the order in which
    `TermsEncoder` encodes them."""
    position = creation_position(record)
    return (*_lasting_terms(record, position), *_phase_terms(record, position))


class TermsEncoder:
    """The terms of each save, encoded (`corra.persistence.encode_terms`) as `record_terms`
    gives them; the journal makes one. What stays while a process's spec does is encoded
    once per process and remembered until it ends (or is evicted, at ``limit`` processes),
    as a template that a save fills with its phase: two concatenations
    (`corra.persistence.term_template`), its end added once it is terminal."""

    __slots__ = ("_lasting", "limit")

    def __init__(self, limit: int = 10_000) -> None:
        self._lasting: dict[str, tuple[ProcessSpec, float, bytes, bytes, bytes]] = {}
        self.limit = limit

    def encode(self, record: ProcessRecord) -> bytes:
        """The encoded terms of ``record``.

        Raises:
            ConfigError: a term cannot be stored (`corra.persistence.encode_terms`).
        """
        process_id = record.id
        known = self._lasting.get(process_id)
        if known is not None and known[0] is record.spec and known[1] == record.created_at:
            position, head, tail = known[2], known[3], known[4]
        else:
            position = creation_position(record)
            lasting = encode_terms(_lasting_terms(record, position))
            head, tail = term_template(lasting, PHASE, position)
            if len(self._lasting) >= self.limit:
                self._lasting.clear()
            self._lasting[process_id] = (record.spec, record.created_at, position, head, tail)
        phase = record.state.phase
        blob = head + _PHASE_GROUPS[phase] + tail
        if phase not in TERMINAL:
            return blob
        del self._lasting[process_id]  # (a rerun encodes them again)
        ended = time_position(ended_at(record)) + position
        return join_terms(blob, encode_terms(((ENDED, b"", ended),)))


# (the phase groups, checked once: a save puts one in its template without a check)
encode_terms([(PHASE, group, b"") for group in _PHASE_GROUPS.values()])
