"""One request rate shared by every process that uses an API key: ``--rate R --rate-store URL``.

The key's rate limit is shared by every machine using it, so shards must share one budget of
R request starts per second. :class:`SharedRate` keeps it in Redis as a moving window (the
`limits <https://limits.readthedocs.io>`_ library's, not a protocol of ours): no one-second
window sees more than R starts from the whole fleet. It has the same ``async acquire()`` shape
as the per-process limiter, and the engine calls it at the same place.

If Redis cannot be reached (at start or mid-run) the process warns once and goes on with its
``fallback`` limiter at R/N (N the shard count), so the fleet still keeps within R; it tries
Redis again every ``retry_interval`` seconds and shares the budget again once it answers.

The rate a run *learnt* (without ``--rate``) is kept beside its results file
(:func:`save_hint`, ``OUT.rate.json``) for the next run on it to start from (:func:`load_hint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from hashlib import blake2b
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from batchscribe.clock import Clock, LoopClock
from batchscribe.errors import ConfigError

__all__ = [
    "Acquirer",
    "SharedRate",
    "check_url",
    "hint_path",
    "load_hint",
    "redacted_url",
    "save_hint",
    "store_key",
    "window_for",
]

#: Seconds a Redis call may take before the store counts as unreachable.
STORE_TIMEOUT = 2.0
#: Seconds between attempts to reach Redis again while running on the fallback.
RETRY_INTERVAL = 5.0
_SCHEMES = ("redis", "rediss")


class Acquirer(Protocol):
    """Anything that waits until one more request may start."""

    async def acquire(self) -> None: ...


class _Window(Protocol):
    """The part of ``limits.aio.strategies.MovingWindowRateLimiter`` used here."""

    async def hit(self, item: Any, *identifiers: str, cost: int = 1) -> bool: ...

    async def get_window_stats(self, item: Any, *identifiers: str) -> Any: ...


def redacted_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def check_url(url: str) -> None:
    """ConfigError unless ``url`` is ``redis://HOST[:PORT][/DB]`` (or rediss://)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"--rate-store {redacted_url(url)!r}: {exc}") from None
    shown = redacted_url(url)
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ConfigError(
            f"--rate-store {shown!r}: expected redis://HOST[:PORT][/DB] (or rediss:// for TLS)"
        )
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ConfigError(f"--rate-store {shown!r}: the database must be a number, not {db!r}")


def window_for(rate: float) -> tuple[int, int]:
    """``(amount, seconds)``: a whole number of starts per whole seconds equal to ``rate``/s.

    30 -> 30 per 1 s; 2.5 -> 5 per 2 s; 0.2 -> 1 per 5 s. A rate with no exact fraction under a
    minute is rounded down to one that has (never above the asked rate).
    """
    if rate <= 0 or not math.isfinite(rate):
        raise ValueError(f"a rate must be positive, not {rate!r}")
    for seconds in range(1, 61):
        amount = rate * seconds
        if amount >= 1 and abs(amount - round(amount)) < 1e-6:
            return round(amount), seconds
    seconds = 60 if rate * 60 >= 1 else math.ceil(1 / rate)
    return max(1, math.floor(rate * seconds)), seconds


def store_key(api_key: str | None) -> str:
    """The Redis identifier of one API key's budget: a hash, never the key itself."""
    digest = blake2b((api_key or "").encode(), digest_size=8, person=b"batchscribe").hexdigest()
    return f"key-{digest}"


class SharedRate:
    """At most ``rate`` request starts per second over every process sharing ``url``'s Redis.

    Three states. *shared*: every start takes a place in the Redis window. *fallback* (Redis
    unreachable): starts go through ``fallback`` (R/N in this process), after a pause of one
    window, since the window's last starts may have used the whole budget. *probation* (Redis
    answers again): for ``retry_interval`` seconds a start needs both a fallback place and a
    window place, so that this process's starts are counted in Redis again while the other
    processes, which try Redis at the same interval, are still on their fallbacks; then shared.

    Args:
        url: ``redis://HOST[:PORT][/DB]`` or ``rediss://...`` (a password may be given).
        rate: request starts per second for the whole fleet.
        fallback: the limiter used while Redis is unreachable (R/N per process).
        fallback_rate: its rate, for messages.
        pace: a per-process limiter applied before the shared window (the engine's ``--rate``
            spacing of 1/R), so one process never fires the fleet's whole second at once.
        api_key: whose budget this is (only a hash of it is stored).
        clock: the one clock (sleeps and the retry interval).
        notify: ``notify(level, message)`` for the warning and the recovery notice.
        retry_interval: seconds between attempts to reach an unreachable Redis.
        window: a ready limiter (tests); by default one is made over ``url`` with limits'
            ``MovingWindowRateLimiter`` (ConfigError when the redis extra is missing). Nothing
            connects before :meth:`start`.
    """

    def __init__(
        self,
        url: str,
        rate: float,
        *,
        fallback: Acquirer,
        fallback_rate: float,
        pace: Acquirer | None = None,
        api_key: str | None = None,
        clock: Clock | None = None,
        notify: Callable[[str, str], None] | None = None,
        retry_interval: float = RETRY_INTERVAL,
        window: _Window | None = None,
    ) -> None:
        check_url(url)
        self.url = url
        self.rate = rate
        self.fallback = fallback
        self.fallback_rate = fallback_rate
        self.pace = pace
        self._clock: Clock = clock or LoopClock()
        self._notify = notify or (lambda level, message: None)
        self.retry_interval = retry_interval
        self._amount, self._seconds = window_for(rate)
        self._ids = ("rate", store_key(api_key))
        self._window = window
        self._item: Any = None
        # What "unreachable" looks like: limits wraps the client's errors in StorageError
        # (added by _connect); a fake store in tests raises OSError.
        self._errors: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
        self._lock = asyncio.Lock()
        self.state = "shared"
        self._until = 0.0  # fallback: no start before; probation: shared from
        self._next_try = 0.0
        self._probe: asyncio.Task[None] | None = None
        self._pool: Any = None  # redis.asyncio.ConnectionPool, when start() made one
        self.shared_starts = 0
        self.fallback_starts = 0
        self.outages = 0
        if self._window is None:
            self._window = self._connect()
        from limits import RateLimitItemPerSecond

        self._item = RateLimitItemPerSecond(self._amount, self._seconds)

    async def start(self) -> None:
        """Reach Redis. An unreachable Redis is not an error: the run starts on the fallback
        (with the warning) and keeps trying, so a Redis that comes up after the workers costs
        nothing."""
        reason = await self._unreachable()
        if reason is not None:
            self._lose(reason, pause=False)

    async def _unreachable(self) -> str | None:
        """Why Redis cannot be used now (None when it answers): reads the window, takes nothing."""
        window = self._window
        assert window is not None
        try:
            await window.get_window_stats(self._item, *self._ids)
        except self._errors as exc:
            return _describe(exc)
        return None

    def _connect(self) -> _Window:
        try:
            from limits.aio.storage import RedisStorage
            from limits.aio.strategies import MovingWindowRateLimiter
            from limits.errors import StorageError
            from redis.asyncio import ConnectionPool
        except ImportError:
            raise ConfigError(_MISSING) from None
        self._errors = (*self._errors, StorageError)
        try:
            # Our own pool, so that close() can release its connections.
            pool = ConnectionPool.from_url(
                self.url, socket_timeout=STORE_TIMEOUT, socket_connect_timeout=STORE_TIMEOUT
            )
            storage = RedisStorage(
                f"async+{self.url}",
                wrap_exceptions=True,
                implementation="redispy",
                key_prefix="batchscribe",
                connection_pool=pool,  # type: ignore[arg-type]  # passed on to redis-py
            )
        except Exception as exc:  # limits' ConfigurationError, or the client's own
            raise ConfigError(
                f"--rate-store {redacted_url(self.url)!r}: {_describe(exc)}"
            ) from None
        self._pool = pool
        return MovingWindowRateLimiter(storage)

    async def acquire(self) -> None:
        """Wait until the fleet's budget (or, while Redis is away, the fallback) allows a start."""
        if self.state == "probation" and self._clock.now() >= self._until:
            self.state = "shared"
        if self.state == "fallback":
            self._maybe_retry()
            pause = self._until - self._clock.now()
            if pause > 0:
                await self._clock.sleep(pause)
            await self.fallback.acquire()
            self.fallback_starts += 1
            return
        if self.state == "probation":
            await self.fallback.acquire()
            async with self._lock:
                await self._acquire_shared()
            return  # whether Redis counted it or went away again, the fallback allowed it
        if self.pace is not None:
            await self.pace.acquire()
        async with self._lock:
            if await self._acquire_shared():
                return
        await self.acquire()  # Redis went away: wait on the fallback

    async def _acquire_shared(self) -> bool:
        """One place in the shared window; False when Redis is (or went) away."""
        window = self._window
        assert window is not None, "SharedRate.start() was not awaited"
        while self.state != "fallback":
            try:
                if await window.hit(self._item, *self._ids):
                    self.shared_starts += 1
                    return True
                stats = await window.get_window_stats(self._item, *self._ids)
            except self._errors as exc:
                self._lose(_describe(exc))
                return False
            # The oldest start leaves the window at reset_time, in epoch seconds (the store
            # stamps starts with time.time(), which is Clock.wall()).
            wait = float(stats.reset_time) - self._clock.wall()
            await self._clock.sleep(min(max(wait, 0.0) + 0.001, float(self._seconds)))
        return False

    def _lose(self, reason: str, *, pause: bool = True) -> None:
        now = self._clock.now()
        self.state = "fallback"
        self.outages += 1
        self._until = now + (self._seconds if pause else 0.0)
        self._next_try = now + self.retry_interval
        self._notify(
            "warning",
            f"rate store {redacted_url(self.url)} unreachable ({reason}): going on at "
            f"{self.fallback_rate:g} requests/s in this process instead of sharing "
            f"{self.rate:g}/s; trying it again every {self.retry_interval:g} s",
        )

    def _maybe_retry(self) -> None:
        if self._probe is not None or self._clock.now() < self._next_try:
            return
        self._probe = asyncio.get_running_loop().create_task(self._try_again())

    async def _try_again(self) -> None:
        try:
            ok = await self._unreachable() is None
            now = self._clock.now()
            if ok and self.state == "fallback":
                self.state = "probation"
                self._until = now + self.retry_interval
                self._notify(
                    "info",
                    f"rate store {redacted_url(self.url)} reachable again: sharing "
                    f"{self.rate:g} requests/s again",
                )
            else:
                self._next_try = now + self.retry_interval
        finally:
            self._probe = None

    async def close(self) -> None:
        """Stop a pending retry and release the connections to Redis."""
        probe = self._probe
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        pool, self._pool = self._pool, None
        if pool is not None:
            # Closing connections to a Redis that died must not fail a finished run.
            with contextlib.suppress(Exception):
                await pool.disconnect()

    def __repr__(self) -> str:
        return (
            f"<SharedRate {redacted_url(self.url)} rate={self.rate:g}/s {self.state} "
            f"shared_starts={self.shared_starts} fallback_starts={self.fallback_starts} "
            f"outages={self.outages}>"
        )


_MISSING = "--rate-store needs the redis extra: pip install 'batchscribe[redis]'"


def _describe(exc: BaseException) -> str:
    """A one-line reason, from the driver's error under limits' StorageError if there is one."""
    inner = getattr(exc, "storage_error", None) or exc
    text = " ".join(str(inner).split())[:160]
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


# ------------------------------------------------------------------------------ learned rate
#: Hints older than this are ignored (a plan may have changed since).
HINT_MAX_AGE = 30 * 86400.0
#: Hints outside this range (starts per second) are ignored as absurd: under 6 a minute a
#: stale-low hint would cost more to probe up from than a cold start costs to find the limit.
HINT_RANGE = (0.1, 10_000.0)


def hint_path(out: str) -> str:
    """Where the rate learnt by runs on results file ``out`` is kept: ``OUT.rate.json``."""
    return f"{out}.rate.json"


def load_hint(out: str, scope: str, now: float) -> float | None:
    """The rate (starts per second) the last run on ``out`` learnt for ``scope`` (the endpoint
    and model: the limit is per model), or None when there is none, it is for another scope,
    older than :data:`HINT_MAX_AGE`, absurd, or unreadable. Only ever a hint: the controller
    re-probes from it."""
    import orjson

    try:
        with open(hint_path(out), "rb") as f:
            doc = orjson.loads(f.read(4096))
        rate = float(doc["per_minute"]) / 60
        if doc["scope"] != scope or not 0 <= now - float(doc["learned_at"]) <= HINT_MAX_AGE:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rate if HINT_RANGE[0] <= rate <= HINT_RANGE[1] else None


def save_hint(out: str, scope: str, per_second: float | None, now: float) -> None:
    """Keep ``per_second`` for the next run on ``out`` (None: forget the hint). Best effort:
    written whole (a temporary file renamed over it) and never an error for the run."""
    import os

    import orjson

    path = hint_path(out)
    try:
        if per_second is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        doc = {"scope": scope, "per_minute": round(per_second * 60, 3), "learned_at": now}
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(doc) + b"\n")
        os.replace(tmp, path)
    except OSError:
        pass
