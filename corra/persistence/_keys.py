"""The store's keys: a process id, a name or a history position as LMDB keys, checked (no
NUL, within LMDB's key length), and the bytes a write must carry."""

from __future__ import annotations

from typing import Final

from corra._errors import ConfigError

#: LMDB's compile-time limit on key length (``mdb_env_get_maxkeysize``).
MAX_KEY_BYTES: Final = 511
SEPARATOR: Final = b"\x00"
SEQUENCE_BYTES: Final = 8


def key_of(value: object, field: str, *, reserve: int = 0) -> bytes:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{field}: got {value!r}, expected a non-empty string")
    if "\x00" in value:
        raise ConfigError(f"{field}: got {value!r}, expected no NUL character")
    try:
        encoded = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ConfigError(f"{field}: got {value!r}, expected encodable text") from None
    if len(encoded) > MAX_KEY_BYTES - reserve:
        raise ConfigError(
            f"{field}: got {len(encoded)} bytes, expected at most {MAX_KEY_BYTES - reserve}"
        )
    return encoded


def process_key(process_id: object) -> bytes:
    return key_of(process_id, "process_id", reserve=len(SEPARATOR) + SEQUENCE_BYTES)


def text(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def require_bytes(value: object, field: str) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{field} must be bytes, not {type(value).__name__}")
    return value


def history_prefix(process_key: bytes) -> bytes:
    return process_key + SEPARATOR
