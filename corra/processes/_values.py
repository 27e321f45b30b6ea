"""A program's result value: the JSON it wrote to ``$CORRA_RESULT``, read once it has
ended, checked once, kept with its record.

Rule 1: read at the end, through the seam. Once `Backend.wait` or `Backend.kill` gave an
        attempt's `Result`, and before its exit is recorded, the process actor reads the
        value with ``Backend.read_log(key, "result", ...)`` (`RESULT_STREAM`: the run dir's
        ``result.json``; a pod's termination message on Kubernetes) and adds it to the
        result (`with_value`). The file stays in the run dir until the process is removed,
        so a runtime that crashed before recording the exit reads the same value again.
Rule 2: no file, or one with nothing but whitespace, is no value (``has_value`` False). A
        written ``null`` is a value (``has_value`` True, ``value`` None).
Rule 3: one JSON value, as UTF-8 text (RFC 8259: no ``NaN`` nor ``Infinity``), nested at most
        `MAX_DEPTH` levels; anything else is refused with json's words, line and column
        (``value_error``).
Rule 4: sizes. A value whose JSON (compact, as the record writes it) takes at most
        `VALUE_LIMIT` bytes is kept in the record; a larger one of at most `FILE_LIMIT`
        bytes (as written) in a file of the state dir, ``results/<key>.json`` (directory
        0700, file 0600; ``value_file`` names it, ``value`` is None); a larger one is
        refused, saying its size and the limit.
Rule 5: a refused value changes nothing of how the process ended: its exit decides.
Rule 6: a backend that knows better may set ``value_error`` (or the value) itself in the
        result it gives (Kubernetes' limit of 4096 bytes): then nothing is read.
Rule 7: big values are read, parsed and written in a worker thread, never on trio's loop.

`result_value` gives the value of a result wherever it is kept.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from corra._errors import ConfigError, StoreError, ValueGone
from corra._statedir import make_private_dirs, read_private, write_private
from corra.processes._backend import RESULT_STREAM, Backend, EffectKey
from corra.processes._lifecycle import Result

#: The most bytes of JSON a value may take in the record.
VALUE_LIMIT: Final = 64 * 1024
#: The most bytes a program may write as its value (kept as a file above `VALUE_LIMIT`).
FILE_LIMIT: Final = 16 * 1024 * 1024
#: The directory of the state dir where values larger than `VALUE_LIMIT` are kept.
RESULTS_DIR: Final = "results"
#: The deepest a value may nest arrays and objects (the record's encoding and decoding, and
#: every reader's, recurse: far from Python's limit wherever they run).
MAX_DEPTH: Final = 200
#: Bytes asked of `Backend.read_log` at once, past the first read.
_CHUNK: Final = 1 << 20
#: JSON's compact form, as the record writes it (ASCII only).
_compact = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def result_value(result: Result | None) -> Any:
    """The value the program of ``result`` wrote, wherever it is kept: its ``value``, or the
    file ``value_file`` names (read here: blocking). None when it wrote none (or ``null``:
    ``has_value`` tells them apart) or its value was refused (``value_error``).

    Raises:
        ValueGone: the file of a large value is gone or cannot be read.
    """
    if result is None or not result.has_value:
        return None
    if result.value_file is None:
        return result.value
    try:
        data = read_private(Path(result.value_file), what="result value")
        return json.loads(data)
    except (OSError, ValueError) as exc:
        raise ValueGone(f"the value kept in {result.value_file} cannot be read: {exc}") from exc


def value_path(results_dir: Path, key: EffectKey) -> Path:
    """Where the value of the attempt ``key`` is kept when it is too large for its record."""
    return results_dir / f"{key}.json"


def remove_values(results_dir: Path | None, process_id: str, attempts: int) -> None:
    """Remove the kept values of a process's attempts 1 to ``attempts`` (none there is fine).
    Blocking."""
    if results_dir is None:
        return
    for attempt in range(1, attempts + 1):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(value_path(results_dir, EffectKey(process_id, attempt)))


async def with_value(
    result: Result,
    backend: Backend,
    key: EffectKey,
    host: str | None,
    results_dir: Path | None,
) -> Result:
    """``result`` with the value the program of ``key`` wrote (see the module's rules)."""
    if result.has_value or result.value_error is not None:
        return result  # (Rule 6: the backend said)
    data = await _read(backend, key, host)
    if data is None:
        return _refused(result, f"more than {FILE_LIMIT} bytes: over the limit of 16 MiB")
    if not data.strip():
        return result
    if len(data) <= VALUE_LIMIT:  # (small: on the loop, as a record's encoding is)
        return _decided(result, data, key, results_dir)
    return await trio.to_thread.run_sync(_decided, result, data, key, results_dir)


async def _read(backend: Backend, key: EffectKey, host: str | None) -> bytes | None:
    """What the program wrote (b"": nothing), or None past `FILE_LIMIT`."""
    size = VALUE_LIMIT + 1
    try:
        data = await backend.read_log(key, RESULT_STREAM, 0, size, host)
    except ConfigError:  # (a backend that reads no values: its programs have none)
        return b""
    if len(data) < size:
        return data
    parts = [data]
    total = len(data)
    while total <= FILE_LIMIT:
        part = await backend.read_log(key, RESULT_STREAM, total, _CHUNK, host)
        if not part:
            break
        parts.append(part)
        total += len(part)
    return None if total > FILE_LIMIT else b"".join(parts)


def _decided(result: Result, data: bytes, key: EffectKey, results_dir: Path | None) -> Result:
    """``result`` with the value of ``data`` (not empty, at most `FILE_LIMIT` bytes) in it,
    kept in a file, or refused."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        return _refused(result, f"not UTF-8 text: byte {exc.start + 1} of {len(data)}")
    except json.JSONDecodeError as exc:
        return _refused(result, f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    except ValueError as exc:  # (_no_constant's)
        return _refused(result, f"not JSON: {exc}")
    except RecursionError:
        return _refused(result, f"nested more than {MAX_DEPTH} levels deep")
    if _deeper(value, MAX_DEPTH):
        return _refused(result, f"nested more than {MAX_DEPTH} levels deep")
    if len(data) <= VALUE_LIMIT and len(_compact(value)) <= VALUE_LIMIT:
        return attrs.evolve(result, value=value, has_value=True)
    if results_dir is None:
        return _refused(result, f"{len(data)} bytes: over the record's limit of 64 KiB")
    path = value_path(results_dir, key)
    try:
        make_private_dirs(results_dir)
        write_private(path, data)
    except OSError as exc:  # (a full disk, say: the step is tried again)
        raise StoreError(f"the result value of {key}: cannot keep it in {path}: {exc}") from exc
    return attrs.evolve(result, has_value=True, value_file=os.path.abspath(path))


def _deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` (decoded JSON) nests arrays and objects more than ``limit`` deep."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            item
            for container in level
            if isinstance(container, (list, dict))
            for item in (container.values() if isinstance(container, dict) else container)
        ]
        if not level:
            return False
    return any(isinstance(item, (list, dict)) for item in level)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _refused(result: Result, why: str) -> Result:
    return attrs.evolve(result, value_error=f"$CORRA_RESULT refused: {why}")
