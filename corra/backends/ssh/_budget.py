"""A token bucket on trio's clock: the login budget shared by every pool of a runtime."""

from __future__ import annotations

import trio

from corra.backends.ssh._config import LoginSettings


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

    @classmethod
    def for_logins(cls, settings: LoginSettings | None = None) -> TokenBucket:
        settings = settings or LoginSettings()
        return cls(settings.rate, settings.burst)

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
