"""The emulator's request-rate limits: a plan's per-model requests per minute, and the older
global token bucket (``rate_limit``). Pure: every call takes ``now``, so tests step time by hand.

Which model of "25 requests per minute per model"? The service does not say. Two readings are
common in API gateways, and a client must cope with both, so both are here:

- ``window`` (the default): a sliding 60-s window over the admitted requests (a sliding log).
  It is the literal reading of "N requests per minute" and the stricter one for a client: a
  burst of N is admitted, then nothing until the oldest leaves the window, so a client that
  learns from the first minute sees a cliff, not a slope. Refused requests do not count (they
  were not served), as in the sliding-log limiters of Redis-backed gateways.
- ``bucket``: a token bucket refilled at N per minute (one token every 2.4 s at 25/min) with a
  small capacity (N/5 by default). It admits a short burst and then exactly the refill rate,
  like nginx's ``limit_req`` with ``burst`` or AWS API Gateway's throttling.

Each limiter returns 0.0 when it admits a request now, else the seconds until it would.

:class:`Link` is not a request limit but the upload link in front of the service: request
bodies share it, so a benchmark can show that the bytes sent matter.
"""

from __future__ import annotations

from collections import deque

__all__ = ["Link", "SlidingWindow", "TokenBuckets"]


class SlidingWindow:
    """At most ``limit`` admitted requests per key in any ``window`` seconds."""

    def __init__(self) -> None:
        self._admitted: dict[str, deque[float]] = {}

    def admit(self, key: str, now: float, limit: float, window: float) -> float:
        """Admit one request for ``key`` at ``now`` (0.0), or the seconds until a slot frees."""
        times = self._admitted.setdefault(key, deque())
        while times and times[0] <= now - window:
            times.popleft()
        allowed = max(1, int(limit))
        if len(times) < allowed:
            times.append(now)
            return 0.0
        # The limit may have dropped mid-run: the slot frees when enough old starts expire.
        return max(times[len(times) - allowed] + window - now, 1e-3)

    def __repr__(self) -> str:
        counts = {key: len(times) for key, times in self._admitted.items()}
        return f"<SlidingWindow admitted={counts}>"


class TokenBuckets:
    """One token bucket per key, refilled at ``rate`` tokens/s up to ``burst``."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float, float, float]] = {}  # tokens, at, rate, burst

    def admit(self, key: str, now: float, rate: float, burst: float) -> float:
        """Take a token for ``key`` at ``now`` (0.0), or the seconds until the next token."""
        burst = max(1.0, burst)
        state = self._state.get(key)
        if state is None:
            tokens = burst  # a new bucket starts full
        else:  # refilled at the rate in force since the last call (it may change mid-run)
            tokens = min(burst, state[0] + max(0.0, now - state[1]) * state[2])
        if tokens >= 1.0:
            self._state[key] = (tokens - 1.0, now, rate, burst)
            return 0.0
        self._state[key] = (tokens, now, rate, burst)
        return (1.0 - tokens) / rate

    def __repr__(self) -> str:
        tokens = {key: round(state[0], 3) for key, state in self._state.items()}
        return f"<TokenBuckets tokens={tokens}>"


class Link:
    """One upload link shared by every connection: bytes cross it one after another at
    ``rate`` bytes/s, so the total over all bodies never exceeds it (an idle link saves no
    credit: no burst)."""

    def __init__(self) -> None:
        self._free_at = 0.0  # when the bytes booked so far have crossed

    def take(self, size: int, now: float, rate: float) -> float:
        """Book ``size`` bytes that arrived at ``now``; the seconds until they have crossed."""
        start = max(now, self._free_at)
        self._free_at = start + size / rate
        return self._free_at - now

    def __repr__(self) -> str:
        return f"<Link free_at={self._free_at:.3f}>"
