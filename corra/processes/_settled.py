"""Whether a named process is over with a given spec, told from its stored bytes: what a job
file run again asks of each of its names, without decoding a record.

A record's JSON begins with its id, its spec and its phase (``{"schema":3,"type":
"ProcessRecord","data":{"id":...,"spec":{...},"state":{"phase":...``): the codec's fast
writer (`corra.processes._fast_json`, whose `RecordEncoder.head` writes that beginning) and
the converter's way write the same text (tests/test_codec.py). A stored record that begins
with the text a record of the same id and spec begins with, then a terminal phase, is that
process, terminal, with that very spec (equal JSON text decodes to equal specs): all a run
of the same spec needs to know to do nothing with it. Anything else (another spec, a record
of an older schema, a process that is not terminal) is not told here: the caller decodes the
record (`ProcessManager.named`). So a job file of 100,000 finished processes run again costs
a key lookup and a byte compare per name, not a decode (about 50 µs each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs

from corra.processes._backend import Capabilities
from corra.processes._fast_json import RecordEncoder
from corra.processes._lifecycle import TERMINAL, Phase
from corra.processes._ports import RecordCodec, RecordStore
from corra.processes._spec import ProcessSpec, absolute_paths

_TERMINAL_PHASES: Final = tuple((phase, f'{phase}"'.encode()) for phase in sorted(TERMINAL))


@attrs.frozen
class Settled:
    """A named process that is over (finished, failed or killed), with the spec it was
    asked about: a run of that spec has nothing to do with it."""

    id: str
    name: str
    phase: Phase


def settled(codec: RecordCodec, process_id: str, spec: ProcessSpec, raw: bytes) -> Settled | None:
    """The process ``process_id`` whose stored record is ``raw``, if that record says it is
    over with ``spec`` (its spec as stored: local paths absolute); None if it cannot tell
    (see the module's docstring: the caller decodes the record then)."""
    # (a codec without a fast encoder, or a wrapper of one, cannot tell: None)
    encoder, envelope = getattr(codec, "fast_encoder", None), getattr(codec, "head", None)
    if spec.name is None or not isinstance(encoder, RecordEncoder) or type(envelope) is not str:
        return None
    head = encoder.head(process_id, spec)
    if head is None:
        return None
    text = f'{envelope}{head}{{"phase":"'.encode("ascii")
    if not raw.startswith(text):
        return None
    for phase, name in _TERMINAL_PHASES:
        if raw.startswith(name, len(text)):
            return Settled(process_id, spec.name, phase)
    return None


#: Names looked up per read transaction by `find`.
_BATCH: Final = 1000


def find(
    store: RecordStore,
    codec: RecordCodec,
    specs: Sequence[ProcessSpec],
    capabilities: Callable[[ProcessSpec], Capabilities],
    in_memory: Callable[[str], Any],
) -> list[Settled | None]:
    """Per spec, the process named as it is (``capabilities`` gives its backend's, which
    say how its local paths are stored), if its stored record says it is over with this
    very spec; None if no process has the name, or its record is in memory (``in_memory(id)``
    is not None: it has an actor, memory may be ahead of the store), or its bytes do not
    tell (`settled`). The names are looked up `_BATCH` at a time, one read transaction each.
    """
    found: list[Settled | None] = []
    for start in range(0, len(specs), _BATCH):
        chunk = specs[start : start + _BATCH]
        named = [spec for spec in chunk if spec.name is not None]
        stored = iter(store.load_named([spec.name for spec in named if spec.name is not None]))
        for spec in chunk:
            item = None if spec.name is None else next(stored)
            if item is None or in_memory(item[0]) is not None:
                found.append(None)
                continue
            as_stored = absolute_paths(spec, capabilities(spec))
            found.append(settled(codec, item[0], as_stored, item[1]))
    return found
