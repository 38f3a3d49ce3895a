"""One request rate shared by every process that uses an API key: ``--rate-store URL``.

The key's rate limit is shared by every machine using it (Pulse: per key and model), so the
shards of one job must hold ONE rate between them, not one each. What is shared, in Redis:

- **The start schedule** (``batchscribe:slot:KEY:SCOPE``, one number): the server time before
  which no process may start its next request. A start takes the next free slot and moves it on
  by ``1/rate`` (the generic cell rate algorithm, GCRA, in a Lua script, stamped with the Redis
  server's own clock so the machines' clocks do not matter). So the fleet's starts are spaced
  evenly, as the local :class:`~batchscribe.control.Pacer` spaces one process's: never two at
  once, which a server bucket of one (25/min: one start per 2.4 s) refuses; and no credit for
  idle time. Each process holds at most one reservation at a time, so a rate cut applies to the
  next start of every process.
- **The learned rate** (``batchscribe:learned:KEY:SCOPE``, a hash: ``rate``, ``anchor``,
  ``epoch``, ``cut_at``, ``answered``): each process runs its own
  :class:`~batchscribe.control.AdaptiveRate`, whose rate is the *fleet's* pace (the schedule
  above spaces every start at it). A 429 seen by any process cuts its rate and publishes the
  cut (``epoch``: the Redis time of the cut; the end of a search too, a new anchor); every
  other process adopts a newer cut at its next start, so one 429 lowers the rate of all, and
  the 429s the same volley drew in other processes do not cut again (each process's recovery
  point moves to the adoption). CUBIC's time is shared: ``answered`` counts the starts the
  whole fleet saw answered since the cut (each process adds its own at its next start), so
  the fleet climbs and probes as one process would, not N times slower. Each process
  publishes its climbs, which a process joining later starts from. (One process's share of the
  admitted starts is not the limit's rate: ``measure_admitted`` is off in a fleet.)
- **With ``--rate R``**, the fleet's ceiling: a moving window kept by the `limits
  <https://limits.readthedocs.io>`_ library (``MovingWindowRateLimiter``), so no window sees
  more than R starts from the fleet, whatever the processes' learned rates. Its windows are
  whole seconds and admit a window's starts at once, which is why the spacing is the schedule's
  job, not the window's.

Expiry, so that no process can leave the rate stuck: the schedule key lives one gap (plus a
second) past its last reservation; the learned record lives :data:`LEARNED_TTL` seconds after
the last start or publish of any process of the fleet. A process that dies mid-run leaves its
last publish behind, which the others overwrite as they climb or cut; a fleet that is gone
leaves nothing after :data:`LEARNED_TTL`.

If Redis cannot be reached (at start or mid-run) the process warns once and goes on alone at
1/N of the rate (N the shard count), so the fleet still keeps within it; it tries Redis again
every ``retry_interval`` seconds and shares the rate again once it answers.

The rate a run *learnt* is also kept beside its results file (:func:`save_hint`,
``OUT.rate.json``) for the next run on it to start from (:func:`load_hint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from batchscribe.clock import Clock, LoopClock
from batchscribe.control import Pacer
from batchscribe.errors import ConfigError

__all__ = [
    "Acquirer",
    "Learned",
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
#: Seconds the shared learned rate outlives the fleet's last start or publish.
LEARNED_TTL = 600
#: Seconds between reads of the shared learned rate while nothing is paced (before any 429).
READ_INTERVAL = 0.2
#: A climb is published when the rate moved by more than this share since the last publish.
PUBLISH_STEP = 0.02
_SCHEMES = ("redis", "rediss")


class Acquirer(Protocol):
    """Anything that waits until one more request may start."""

    async def acquire(self) -> None: ...


class _Window(Protocol):
    """The part of ``limits.aio.strategies.MovingWindowRateLimiter`` used here."""

    async def hit(self, item: Any, *identifiers: str, cost: int = 1) -> bool: ...

    async def get_window_stats(self, item: Any, *identifiers: str) -> Any: ...


@dataclass(frozen=True)
class Learned:
    """The fleet's learned rate as the store holds it (starts per second)."""

    epoch: int  # the Redis time (microseconds) of the last cut: newer cuts are adopted
    rate: float  # the pace just after the last cut, or the last published climb
    anchor: float  # the learned limit (the rate that drew the 429s)
    answered: int = 0  # starts the fleet saw answered (not 429) since the cut: CUBIC's time


class _Board(Protocol):
    """The shared schedule and learned rate (Redis; a fake in tests)."""

    async def reserve(
        self, gap: float, answered: int = 0, epoch: int = 0
    ) -> tuple[float, Learned | None]:
        """Take the next start slot ``gap`` seconds after the last (no slot when 0); add
        ``answered`` to the record's count when its epoch is still ``epoch``; return the
        seconds to wait for the slot and the learned record."""
        ...

    async def publish(
        self, rate: float, anchor: float, *, cut: bool, seen: int, answered: int = 0
    ) -> int:
        """Store a rate (a cut: a new epoch, from ``answered`` starts); return the epoch."""
        ...

    async def read(self) -> Learned | None: ...


# KEYS: slot, learned. ARGV: gap (microseconds, 0: no slot), learned TTL (s), answers to add
# to the count, the epoch they belong to. Returns {wait (us), epoch, rate, anchor, answered}.
# Times are the Redis server's (TIME).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local gap = tonumber(ARGV[1])
local wait = 0
if gap > 0 then
  local at = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
  redis.call('SET', KEYS[1], string.format('%d', at + gap), 'PX',
             math.floor((at + gap - now) / 1000) + 1000)
  wait = at - now
end
local rec = redis.call('HMGET', KEYS[2], 'epoch', 'rate', 'anchor', 'answered')
if rec[1] then
  if tonumber(ARGV[3]) > 0 and rec[1] == ARGV[4] then
    rec[4] = redis.call('HINCRBY', KEYS[2], 'answered', ARGV[3])
  end
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return {wait, rec[1], rec[2], rec[3], rec[4]}
"""

# KEYS: learned. ARGV: rate, anchor, cut (1/0), seen epoch, TTL (s), answered (a cut's start).
# A cut gets a new epoch (the server time, or one more than the last); a climb is dropped when a
# newer cut is there.
# Returns the record's epoch.
_PUBLISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if ARGV[3] == '1' then
  epoch = math.max(now, epoch + 1)
  redis.call('HSET', KEYS[1], 'epoch', string.format('%d', epoch), 'cut_at', t[1],
             'answered', ARGV[6])
elseif epoch > tonumber(ARGV[4]) then
  return string.format('%d', epoch)
else
  epoch = math.max(epoch, tonumber(ARGV[4]))
  redis.call('HSET', KEYS[1], 'epoch', string.format('%d', epoch))
end
redis.call('HSET', KEYS[1], 'rate', ARGV[1], 'anchor', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return string.format('%d', epoch)
"""


def _learned(epoch: Any, rate: Any, anchor: Any, answered: Any = 0) -> Learned | None:
    """A record from Redis's answer (None when absent or unreadable)."""
    try:
        got = Learned(int(epoch), float(rate), float(anchor), int(answered or 0))
    except (TypeError, ValueError):
        return None
    ok = all(math.isfinite(v) and v > 0 for v in (got.rate, got.anchor))
    return got if ok else None


class _RedisBoard:
    """:class:`_Board` over redis-py and two Lua scripts (plain Redis keys, see the module)."""

    def __init__(self, pool: Any, prefix: str) -> None:
        from redis.asyncio import Redis

        self._client = Redis(connection_pool=pool)
        self._reserve = self._client.register_script(_RESERVE)
        self._publish = self._client.register_script(_PUBLISH)
        self.prefix = prefix
        self.keys = (f"{prefix}:slot", f"{prefix}:learned")

    def bind(self, scope_id: str) -> None:
        self.keys = (f"{self.prefix}:{scope_id}:slot", f"{self.prefix}:{scope_id}:learned")

    async def reserve(
        self, gap: float, answered: int = 0, epoch: int = 0
    ) -> tuple[float, Learned | None]:
        micros = max(1, round(gap * 1e6)) if gap > 0 else 0
        args = [micros, LEARNED_TTL, answered, epoch]
        wait, *rec = await self._reserve(keys=list(self.keys), args=args)
        return int(wait) / 1e6, _learned(*rec)

    async def publish(
        self, rate: float, anchor: float, *, cut: bool, seen: int, answered: int = 0
    ) -> int:
        args = [repr(rate), repr(anchor), 1 if cut else 0, seen, LEARNED_TTL, answered]
        return int(await self._publish(keys=[self.keys[1]], args=args))

    async def read(self) -> Learned | None:
        rec: list[Any] = await self._client.hmget(  # type: ignore[misc]  # async client
            self.keys[1], ["epoch", "rate", "anchor", "answered"]
        )
        return _learned(*rec)


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
    """One start rate for every process sharing ``url``'s Redis, API key and scope (see the
    module docstring for what is shared and why).

    Three states. *shared*: every start takes the next slot of the fleet's schedule (and, with
    a ceiling, a place in the ``limits`` window). *fallback* (Redis unreachable): starts are
    spaced by a local pacer at 1/``shards`` of the rate, after a pause of one gap (or window),
    since the fleet's last starts may have used it. *probation* (Redis answers again): for
    ``retry_interval`` seconds a start needs both a local turn and a shared slot, so that this
    process's starts are counted in Redis again while the other processes, which try Redis at
    the same interval, are still on their own; then shared.

    Args:
        url: ``redis://HOST[:PORT][/DB]`` or ``rediss://...`` (a password may be given).
        ceiling: ``--rate``: at most this many starts per second for the whole fleet, or None.
        pace: the fleet's pacing rate now (starts per second; None: unpaced), read at every
            start: the engine's learned rate, under the ceiling.
        shards: N, for the fallback's share.
        on_cut: ``on_cut(rate, anchor)``, called when another process published a newer cut.
        on_answered: ``on_answered(n)``, called with the fleet's count of answered starts since
            the cut (CUBIC's time: the fleet climbs and probes on all its answers).
        api_key: whose budget this is (only a hash of it is stored).
        clock: the one clock (sleeps and the retry interval).
        notify: ``notify(level, message)`` for the warning and the recovery notice.
        retry_interval: seconds between attempts to reach an unreachable Redis.
        window, board: ready stores (tests); by default both are made over ``url`` (ConfigError
            when the redis extra is missing). Nothing connects before :meth:`start`.
    """

    def __init__(
        self,
        url: str,
        ceiling: float | None,
        *,
        pace: Callable[[], float | None],
        shards: int = 1,
        on_cut: Callable[[float, float], None] | None = None,
        on_answered: Callable[[int], None] | None = None,
        api_key: str | None = None,
        clock: Clock | None = None,
        notify: Callable[[str, str], None] | None = None,
        retry_interval: float = RETRY_INTERVAL,
        window: _Window | None = None,
        board: _Board | None = None,
    ) -> None:
        check_url(url)
        self.url = url
        self.rate = ceiling
        self.shards = max(1, shards)
        self._pace = pace
        self.on_cut = on_cut
        self.on_answered = on_answered
        self._answered = 0  # answers counted here, not yet added to the fleet's count
        self._clock: Clock = clock or LoopClock()
        self._notify = notify or (lambda level, message: None)
        self.retry_interval = retry_interval
        self._ids = ("rate", store_key(api_key))
        self._window = window
        self._board = board
        self._item: Any = None
        # What "unreachable" looks like: limits wraps the client's errors in StorageError and
        # redis-py raises RedisError (added by _connect); a fake store in tests raises OSError.
        self._errors: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
        self._lock = asyncio.Lock()
        self._local = Pacer(self._clock)  # the fallback's spacing
        self.state = "shared"
        self._until = 0.0  # fallback: no start before; probation: shared from
        self._next_try = 0.0
        self._next_read = float("-inf")
        self._probe: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[None]] = set()
        self._pool: Any = None  # redis.asyncio.ConnectionPool, when _connect made one
        self.epoch = 0  # the newest cut this process knows of
        self.learned: Learned | None = None  # the record found at start
        self._published: float | None = None
        self.shared_starts = 0
        self.fallback_starts = 0
        self.outages = 0
        self.adopted = 0
        self._amount, self._seconds = window_for(ceiling) if ceiling else (0, 0)
        if self._board is None:
            self._connect()
        if ceiling:
            from limits import RateLimitItemPerSecond

            self._item = RateLimitItemPerSecond(self._amount, self._seconds)

    @property
    def fallback_rate(self) -> float | None:
        """Starts per second this process takes alone while Redis is away (None: unpaced)."""
        rate = self._pace()
        return None if rate is None else rate / self.shards

    async def start(self, scope: str = "") -> Learned | None:
        """Reach Redis and return the fleet's learned rate for ``scope`` (the endpoint and
        model; None when there is none). An unreachable Redis is not an error: the run starts
        on the fallback (with the warning) and keeps trying, so a Redis that comes up after the
        workers costs nothing."""
        bind = getattr(self._board, "bind", None)
        if bind is not None:
            bind(blake2b(scope.encode(), digest_size=6).hexdigest())
        try:
            self.learned = await self._read()
        except self._errors as exc:
            self._lose(_describe(exc), pause=False)
            return None
        if self.learned is not None:
            self.epoch = self.learned.epoch
        return self.learned

    async def _read(self) -> Learned | None:
        """The learned record (raises the store's errors); with a ceiling, also reads the
        window, so both are known to answer."""
        board = self._board
        assert board is not None
        if self._window is not None and self._item is not None:
            await self._window.get_window_stats(self._item, *self._ids)
        return await board.read()

    def _connect(self) -> None:
        try:
            from limits.aio.storage import RedisStorage
            from limits.aio.strategies import MovingWindowRateLimiter
            from limits.errors import StorageError
            from redis.asyncio import ConnectionPool
            from redis.exceptions import RedisError
        except ImportError:
            raise ConfigError(_MISSING) from None
        self._errors = (*self._errors, StorageError, RedisError)
        try:
            # Our own pool, so that close() can release its connections.
            pool = ConnectionPool.from_url(
                self.url, socket_timeout=STORE_TIMEOUT, socket_connect_timeout=STORE_TIMEOUT
            )
            if self._window is None and self.rate:
                storage = RedisStorage(
                    f"async+{self.url}",
                    wrap_exceptions=True,
                    implementation="redispy",
                    key_prefix="batchscribe",
                    connection_pool=pool,  # type: ignore[arg-type]  # passed on to redis-py
                )
                self._window = MovingWindowRateLimiter(storage)
            self._board = _RedisBoard(pool, f"batchscribe:{self._ids[1]}")
        except Exception as exc:  # limits' ConfigurationError, or the client's own
            raise ConfigError(
                f"--rate-store {redacted_url(self.url)!r}: {_describe(exc)}"
            ) from None
        self._pool = pool

    async def acquire(self) -> None:
        """Wait for this process's turn in the fleet's schedule (or, while Redis is away, the
        local fallback's)."""
        if self.state == "probation" and self._clock.now() >= self._until:
            self.state = "shared"
        if self.state == "fallback":
            self._maybe_retry()
            pause = self._until - self._clock.now()
            if pause > 0:
                await self._clock.sleep(pause)
            await self._local_turn()
            self.fallback_starts += 1
            return
        if self.state == "probation":
            await self._local_turn()
            async with self._lock:
                await self._take_shared()
            return  # whether Redis counted it or went away again, the fallback allowed it
        async with self._lock:
            # (One reservation at a time per process: a cut applies to its next start.)
            if await self._take_shared():
                return
        await self.acquire()  # Redis went away: wait on the fallback

    async def _local_turn(self) -> None:
        self._local.rate = self.fallback_rate
        await self._local.wait()

    async def _take_shared(self) -> bool:
        """The next slot of the fleet's schedule (and a place in the ceiling's window); False
        when Redis is (or went) away."""
        board = self._board
        assert board is not None
        if self.state == "fallback":
            return False  # (lost while this start waited for the lock)
        rate = self._pace()
        now = self._clock.now()
        if rate is not None or now >= self._next_read:
            # (Unpaced, only a read of the learned rate now and then: an unlimited service
            # pays one Redis round trip per READ_INTERVAL, not one per start.)
            answered, self._answered = self._answered, 0
            try:
                wait, learned = await board.reserve(
                    1.0 / rate if rate else 0.0, answered, self.epoch
                )
            except self._errors as exc:
                self._lose(_describe(exc), gap=1.0 / rate if rate else 0.0)
                return False
            self._next_read = now + READ_INTERVAL
            self._heard(learned)
            if wait > 0:
                await self._clock.sleep(wait)
        if self._item is not None and not await self._take_window():
            return False
        self.shared_starts += 1
        return True

    def _heard(self, learned: Learned | None) -> None:
        """Adopt a cut another process published since the last one this process knows, or
        move on to the fleet's count of answers since the cut."""
        if learned is None or learned.epoch < self.epoch:
            return
        if learned.epoch == self.epoch:
            if self.on_answered is not None and learned.answered:
                self.on_answered(learned.answered)
            return
        self.epoch = learned.epoch
        self.adopted += 1
        if self.on_cut is not None:
            self.on_cut(learned.rate, learned.anchor)
        if self.on_answered is not None and learned.answered:
            self.on_answered(learned.answered)

    async def _take_window(self) -> bool:
        """One place in the ceiling's moving window; False when Redis is (or went) away."""
        window = self._window
        assert window is not None
        while self.state != "fallback":
            try:
                if await window.hit(self._item, *self._ids):
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

    def observe(
        self,
        rate: float | None,
        anchor: float | None,
        *,
        cut: bool,
        answered: bool = False,
        since: float = 0.0,
    ) -> None:
        """Publish this process's learned rate: always after its own cut (a 429 it saw, or the
        end of a search: a new anchor), else when it climbed by more than
        :data:`PUBLISH_STEP` since its last publish. In the background (a start never waits
        for it); a lost store shows at the next start. ``answered``: one more start answered
        since the cut (added to the fleet's count at this process's next start); ``since``:
        the count a cut starts from (a search's end starts on the plateau)."""
        if cut:
            self._answered = 0
        elif answered:
            self._answered += 1
        if rate is None or anchor is None or self.state == "fallback":
            return
        last = self._published
        if not cut and last is not None and abs(rate - last) <= PUBLISH_STEP * last:
            return
        if not cut and self._publishing:
            return  # (the next climb publishes)
        self._published = rate
        task = asyncio.get_running_loop().create_task(
            self._publish(rate, anchor, cut, round(since))
        )
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, rate: float, anchor: float, cut: bool, since: int) -> None:
        board = self._board
        assert board is not None
        try:
            epoch = await board.publish(rate, anchor, cut=cut, seen=self.epoch, answered=since)
        except self._errors:
            return
        if epoch > self.epoch:
            self.epoch, self._answered = epoch, 0

    def _lose(self, reason: str, *, pause: bool = True, gap: float = 0.0) -> None:
        if self.state == "fallback":
            return  # (one warning per outage)
        now = self._clock.now()
        self.state = "fallback"
        self.outages += 1
        self._until = now + (max(gap, float(self._seconds)) if pause else 0.0)
        self._next_try = now + self.retry_interval
        if self.rate:
            instead = (
                f"going on at {self.rate / self.shards:g} requests/s in this process instead "
                f"of sharing {self.rate:g}/s"
            )
        else:
            instead = f"going on at 1/{self.shards} of the learned rate in this process"
        self._notify(
            "warning",
            f"rate store {redacted_url(self.url)} unreachable ({reason}): {instead}; trying it "
            f"again every {self.retry_interval:g} s",
        )

    def _maybe_retry(self) -> None:
        if self._probe is not None or self._clock.now() < self._next_try:
            return
        self._probe = asyncio.get_running_loop().create_task(self._try_again())

    async def _try_again(self) -> None:
        try:
            try:
                await self._read()
                ok = True
            except self._errors:
                ok = False
            now = self._clock.now()
            if ok and self.state == "fallback":
                self.state = "probation"
                self._until = now + self.retry_interval
                self._notify(
                    "info",
                    f"rate store {redacted_url(self.url)} reachable again: sharing the rate again",
                )
            else:
                self._next_try = now + self.retry_interval
        finally:
            self._probe = None

    async def close(self) -> None:
        """Stop a pending retry or publish and release the connections to Redis."""
        for task in [self._probe, *self._publishing]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        pool, self._pool = self._pool, None
        if pool is not None:
            # Closing connections to a Redis that died must not fail a finished run.
            with contextlib.suppress(Exception):
                await pool.disconnect()

    def __repr__(self) -> str:
        ceiling = "learned" if self.rate is None else f"<= {self.rate:g}/s"
        return (
            f"<SharedRate {redacted_url(self.url)} {ceiling} {self.state} "
            f"shared_starts={self.shared_starts} fallback_starts={self.fallback_starts} "
            f"outages={self.outages} adopted={self.adopted}>"
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
