"""Process ids: short, unique, sortable by creation."""

from __future__ import annotations

import itertools
import os
import time

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_counter = itertools.count()
# The last millisecond and pid, with their base-36 text: the same for every id made within
# them, so worked out once.
_last_stamp: tuple[int, str] = (-1, "")
_pid_part: tuple[int, str] = (-1, "")


def new_process_id() -> str:
    """Short, unique, sortable by creation: ``p`` + time in ms (base 36) + pid + counter."""
    global _last_stamp, _pid_part
    milliseconds = int(time.time() * 1000)
    if milliseconds != _last_stamp[0]:
        _last_stamp = (milliseconds, _base36(milliseconds))
    pid = os.getpid()
    if pid != _pid_part[0]:
        _pid_part = (pid, f"{_base36(pid % 1296):0>2}")
    high, low = divmod(next(_counter) % 46656, 36)
    high, middle = divmod(high, 36)
    return f"p{_last_stamp[1]}{_pid_part[1]}{_DIGITS[high]}{_DIGITS[middle]}{_DIGITS[low]}"


def _base36(number: int) -> str:
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = _DIGITS[rest] + out
        if not number:
            return out
