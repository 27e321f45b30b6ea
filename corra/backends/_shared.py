"""What backends share without knowing each other: a token bucket on trio's clock (login
budgets, submission rate limits), the checks of a configuration table's fields and numbers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import trio

from corra._errors import BackendError, ConfigError
from corra.processes._spec import MAX_SECONDS


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; `take` waits for one, FIFO.

    Waiters are served in arrival order (a lock), so a busy host cannot starve another.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp: float | None = None
        self._lock = trio.Lock()
        self.taken = 0
        """Tokens handed out so far."""

    def _refill(self) -> None:
        now = trio.current_time()
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def available(self) -> float:
        """Tokens there now (fractions count towards the next)."""
        self._refill()
        return self._tokens

    async def take(self) -> None:
        """Wait for a token and take it. Cancellable; a cancelled wait takes nothing."""
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                await trio.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1
            self.taken += 1


def check_fields(where: str, table: Mapping[str, Any], known: set[str], noun: str) -> None:
    """`ConfigError` naming ``where`` and every key of ``table`` that is not ``known``."""
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown {noun}(s) {', '.join(unknown)}; expected some of "
            + ", ".join(sorted(known))
        )


def number_check(
    name: str,
    *,
    minimum: float,
    integer: bool = False,
    allow_zero: bool = False,
    maximum: float | None = None,
) -> Callable[[Any, Any, Any], None]:
    """An attrs validator: a finite number (an int if ``integer``; never a bool) >=
    ``minimum``, > 0 unless ``allow_zero``, <= ``maximum``; its `ConfigError` names ``name``."""
    bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    if maximum == MAX_SECONDS:
        bounds += " (10 years)"

    def check(instance: Any, attribute: Any, value: Any) -> None:
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            expected = "an integer" if integer else "a number"
            raise ConfigError(f"{name}: got {value!r}, expected {expected} {bounds}")
        if (
            not math.isfinite(value)
            or value < minimum
            or (value == 0 and not allow_zero)
            or (maximum is not None and value > maximum)
        ):
            raise ConfigError(f"{name}: got {value!r}, expected a finite value {bounds}")

    return check


def seconds_check(
    name: str, *, minimum: float, allow_zero: bool = False
) -> Callable[[Any, Any, Any], None]:
    """An attrs validator of a duration: as `number_check`, at most `MAX_SECONDS` (10 years),
    as every duration corra takes."""
    return number_check(name, minimum=minimum, allow_zero=allow_zero, maximum=MAX_SECONDS)


def json_reply(data: bytes, where: str) -> Any:
    """The JSON on the last line of a host-side command's output (what came before it, such
    as a shell's greeting, is ignored).

    Raises:
        BackendError: naming ``where`` and the end of what was answered instead.
    """
    try:
        return json.loads(data.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise BackendError(f"{where} answered {data[-300:]!r}, expected JSON") from exc
