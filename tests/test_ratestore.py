"""One rate limit for all shards: SharedRate on a fake clock and store, then real processes
sharing --rate through a real redis-server (Redis killed mid-run included)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, read_results, wait_until

from batchscribe.control import AdaptiveRate
from batchscribe.errors import ConfigError
from batchscribe.ratestore import (
    LEARNED_TTL,
    READ_INTERVAL,
    RETRY_INTERVAL,
    Learned,
    SharedRate,
    redacted_url,
    store_key,
    window_for,
)
from batchscribe.testing import FakeClock, settle

# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("rate", "window"),
    [(30, (30, 1)), (30.0, (30, 1)), (2.5, (5, 2)), (0.2, (1, 5)), (1 / 7, (1, 7)),
     (0.01, (1, 100)), (1000, (1000, 1))],
)  # fmt: skip
def test_window_for_is_exact_when_it_can_be(rate: float, window: tuple[int, int]) -> None:
    """A rate becomes whole starts per whole seconds with the same ratio."""
    assert window_for(rate) == window


def test_window_for_never_rounds_above_the_rate() -> None:
    """A rate without a neat fraction is rounded down, never up."""
    amount, seconds = window_for(math.pi)
    assert amount / seconds <= math.pi
    assert amount / seconds > math.pi * 0.99
    with pytest.raises(ValueError, match="positive"):
        window_for(0)


def test_store_key_is_a_hash_of_the_api_key() -> None:
    """The Redis key names a hash of the API key, stable, distinct per key, never the key."""
    secret = "sk-live-0123456789abcdef"
    assert secret not in store_key(secret)
    assert store_key(secret) == store_key(secret)
    assert store_key(secret) != store_key(secret + "x")


def test_redacted_url_hides_the_password() -> None:
    """A password in --rate-store never reaches a message."""
    assert redacted_url("redis://:s3cret@cache:6380/2") == "redis://:***@cache:6380/2"
    assert redacted_url("rediss://user:s3cret@cache/0") == "rediss://user:***@cache/0"
    assert redacted_url("redis://cache:6379/0") == "redis://cache:6379/0"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cache:6379", "expected redis://HOST[:PORT][/DB]"),
        ("cache:6379", "expected redis://HOST[:PORT][/DB]"),
        ("redis://", "expected redis://HOST[:PORT][/DB]"),
        ("redis://cache:port/0", "Port could not be cast"),
        ("redis://cache:6379/zero", "the database must be a number"),
        ("redis://:hunter2@cache:6379/zero", "redis://:***@cache:6379/zero"),
    ],
)
def test_bad_store_url_is_a_config_error(url: str, message: str) -> None:
    """A malformed --rate-store is a configuration error (exit 2) that shows the right form."""
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        SharedRate(url, 30, pace=lambda: 30.0)
    assert "hunter2" not in str(info.value)


# --------------------------------------------------------------------------- on a fake clock


class _Stats:
    def __init__(self, reset_time: float) -> None:
        self.reset_time = reset_time
        self.remaining = 0


class _Store:
    """A moving window over a fake clock's wall time that can be made unreachable."""

    def __init__(self, clock: FakeClock, amount: int, seconds: float = 1.0) -> None:
        self.clock = clock
        self.amount = amount
        self.seconds = seconds
        self.starts: list[float] = []
        self.down = False
        self.calls = 0

    def _fail(self) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")

    async def hit(self, item: Any, *identifiers: str, cost: int = 1) -> bool:
        self._fail()
        now = self.clock.wall()
        recent = [t for t in self.starts if t > now - self.seconds + 1e-9]
        if len(recent) >= self.amount:
            return False
        self.starts.append(now)
        return True

    async def get_window_stats(self, item: Any, *identifiers: str) -> _Stats:
        self._fail()
        now = self.clock.wall()
        recent = [t for t in self.starts if t > now - self.seconds]
        return _Stats(min(recent, default=now) + self.seconds)


class _Board:
    """The fleet's schedule and learned record on a fake clock: the logic of ratestore's Lua
    scripts (which the real-Redis tests below run), unreachable with its ``_Store``."""

    def __init__(self, clock: FakeClock, store: _Store) -> None:
        self.clock = clock
        self.store = store
        self.next = float("-inf")
        self.record: Learned | None = None

    async def reserve(
        self, gap: float, answered: int = 0, epoch: int = 0
    ) -> tuple[float, Learned | None]:
        self.store._fail()
        now, wait = self.clock.now(), 0.0
        if gap > 0:
            at = max(now, self.next)
            self.next, wait = at + gap, at - now
        record = self.record
        if record is not None and answered and record.epoch == epoch:
            self.record = record = dataclasses.replace(record, answered=record.answered + answered)
        return wait, record

    async def publish(
        self, rate: float, anchor: float, *, cut: bool, seen: int, answered: int = 0
    ) -> int:
        self.store._fail()
        record = self.record
        epoch = record.epoch if record is not None else 0
        if cut:
            self.record = Learned(epoch + 1, rate, anchor, answered)
        elif epoch > seen:
            return epoch
        else:
            count = record.answered if record is not None else 0
            self.record = Learned(max(epoch, seen), rate, anchor, count)
        return self.record.epoch

    async def read(self) -> Learned | None:
        self.store._fail()
        return self.record


def _shared(
    clock: FakeClock,
    store: _Store,
    notes: list[tuple[str, str]],
    board: _Board | None = None,
    ceiling: float | None = None,
    pace: float | None = None,
) -> SharedRate:
    rate = ceiling if ceiling is not None else store.amount
    return SharedRate(
        "redis://:pw@cache:6379/0", rate, pace=lambda: pace or rate, shards=3, api_key="k",
        clock=clock, notify=lambda level, msg: notes.append((level, msg)), retry_interval=5.0,
        window=store, board=board or _Board(clock, store),
    )  # fmt: skip


async def _starts(clock: FakeClock, rates: list[SharedRate], each: int) -> list[list[float]]:
    """Start ``each`` acquires on every process at once; the clock times each one went."""
    times: list[list[float]] = [[] for _ in rates]

    async def one(k: int) -> None:
        await rates[k].acquire()
        times[k].append(clock.now())

    tasks = [asyncio.create_task(one(k)) for k in range(len(rates)) for _ in range(each)]
    while not all(t.done() for t in tasks):
        await settle()
        await clock.advance(0.05)
    return times


async def test_the_fleet_starts_evenly_one_gap_apart_never_two_at_once() -> None:
    """Two processes at a shared 3/s: every start one third of a second after the last one."""
    clock, notes = FakeClock(), list[tuple[str, str]]()
    store = _Store(clock, amount=3)
    board = _Board(clock, store)
    fleet = [_shared(clock, store, notes, board) for _ in range(2)]
    for rate in fleet:
        await rate.start()
    times = await _starts(clock, fleet, each=4)
    assert all(len(t) == 4 for t in times)  # each process had its share
    every = sorted(t for ts in times for t in ts)
    gaps = [b - a for a, b in itertools.pairwise(every)]
    assert min(gaps) >= 1 / 3 - 0.051, every  # (the test polls every 0.05 s)
    assert every[-1] - every[0] <= 7 / 3 + 0.1, every  # and no slower than the rate
    assert notes == []


async def test_a_cut_published_by_one_process_is_adopted_by_the_others() -> None:
    """A 429 in one process (its cut, published) lowers the other's rate at its next start."""
    clock, notes = FakeClock(), list[tuple[str, str]]()
    store = _Store(clock, amount=3)
    board = _Board(clock, store)
    one, two = (_shared(clock, store, notes, board, ceiling=None, pace=2.0) for _ in range(2))
    heard: list[tuple[float, float]] = []
    two.on_cut = lambda rate, anchor: heard.append((rate, anchor))
    for rate in (one, two):
        await rate.start()
    await two.acquire()
    one.observe(1.7, 2.0, cut=True)
    await settle()
    await clock.advance(1.0)
    await two.acquire()
    assert heard == [(1.7, 2.0)]
    one.observe(1.8, 2.0, cut=False)  # a climb in the same epoch is no cut to adopt
    await settle()
    await clock.advance(1.0)
    await two.acquire()
    assert heard == [(1.7, 2.0)]
    assert board.record == Learned(1, 1.8, 2.0)
    # Each process adds its answers since the cut to the fleet's count; both hear the sum.
    counts: list[int] = []
    one.on_answered = two.on_answered = counts.append
    for rate in (one, two, one):
        rate.observe(1.8, 2.0, cut=False, answered=True)
        rate.observe(1.8, 2.0, cut=False, answered=True)
        await clock.advance(1.0)
        await rate.acquire()
    assert counts == [2, 4, 6]
    assert board.record == Learned(1, 1.8, 2.0, 6)
    # A process that has not heard of the newest cut cannot overwrite it with its climb.
    two.epoch = 0
    two.observe(2.5, 2.6, cut=False)
    await settle()
    assert board.record == Learned(1, 1.8, 2.0, 6)
    await one.close()
    await two.close()


async def test_unpaced_the_store_is_read_now_and_then_not_per_start() -> None:
    """Before any 429 (no pace) a start costs no Redis round trip but one per READ_INTERVAL."""
    clock = FakeClock()
    store = _Store(clock, amount=3)
    rate = SharedRate(
        "redis://cache", None, pace=lambda: None, clock=clock, board=_Board(clock, store)
    )
    await rate.start()
    calls = store.calls
    for _ in range(50):
        await asyncio.wait_for(rate.acquire(), timeout=1)
    assert store.calls == calls + 1
    await clock.advance(READ_INTERVAL)
    await rate.acquire()
    assert store.calls == calls + 2


async def test_redis_lost_mid_run_warns_once_and_falls_back_after_one_window() -> None:
    """Redis going away: one warning, a one-window pause, then starts spaced at R/N."""
    clock, notes = FakeClock(), list[tuple[str, str]]()
    store = _Store(clock, amount=30)
    rate = _shared(clock, store, notes)
    await rate.start()
    await rate.acquire()
    store.down = True
    tasks = [asyncio.create_task(rate.acquire()) for _ in range(20)]
    await settle()
    assert not any(t.done() for t in tasks)  # the window's starts may have used the budget
    await clock.advance(1.0)
    assert sum(t.done() for t in tasks) == 1
    for _ in range(19):
        await clock.advance(0.1)  # R/N = 10/s, one at a time
    assert all(t.done() for t in tasks)
    assert rate.fallback_starts == 20
    assert [level for level, _ in notes] == ["warning"]
    message = notes[0][1]
    assert "rate store redis://:***@cache:6379/0 unreachable (ConnectionRefusedError" in message
    assert "going on at 10 requests/s in this process" in message
    assert "pw" not in message


async def test_redis_back_is_used_again_after_a_probation() -> None:
    """Once Redis answers again, starts count in it at once, and are shared alone after it."""
    clock, notes = FakeClock(), list[tuple[str, str]]()
    store = _Store(clock, amount=30)
    rate = _shared(clock, store, notes)
    await rate.start()
    store.down = True
    first = asyncio.create_task(rate.acquire())  # noticed: on the fallback after one window
    await settle()
    await clock.advance(1.0)
    await first
    calls = store.calls
    await clock.advance(0.1)
    await rate.acquire()
    assert store.calls == calls  # on the fallback, Redis is not asked on every start
    store.down = False
    await clock.advance(5.0)
    await rate.acquire()  # due: tries Redis in the background
    await settle()
    assert rate.state == "probation"
    assert notes[-1][0] == "info" and "reachable again" in notes[-1][1]
    before = (rate.fallback_starts, len(store.starts))
    await clock.advance(0.1)
    await rate.acquire()  # probation: both limits apply, and Redis counts the start
    assert len(store.starts) == before[1] + 1
    await clock.advance(5.0)
    await rate.acquire()
    assert rate.state == "shared"
    assert len(store.starts) == before[1] + 2  # shared alone now
    assert rate.fallback_starts == before[0]  # (probation starts count as shared)
    assert [level for level, _ in notes] == ["warning", "info"]


async def test_redis_still_down_is_tried_again_every_interval() -> None:
    """While Redis stays away, it is asked once per retry interval, not once per start."""
    clock, notes = FakeClock(), list[tuple[str, str]]()
    store = _Store(clock, amount=30)
    rate = _shared(clock, store, notes, pace=1000.0)
    store.down = True
    await rate.start()
    assert rate.state == "fallback"
    for _ in range(5):  # at 0, 2.5, 5, 7.5 and 10 s
        for _ in range(10):
            await rate.acquire()
            await clock.advance(0.01)
        await settle()
        await clock.advance(2.4)
    assert store.calls == 1 + 2  # the start's try, then one at 5 s and one at 10 s
    assert rate.fallback_starts == 50
    assert [level for level, _ in notes] == ["warning"]
    await rate.close()


async def test_unreachable_at_start_starts_on_the_fallback_without_a_pause() -> None:
    """An unreachable Redis at start is a warning, not an error: the run starts on R/N."""
    clock, notes = FakeClock(), list[tuple[str, str]]()
    store = _Store(clock, amount=30)
    store.down = True
    rate = _shared(clock, store, notes)
    assert await rate.start() is None
    await asyncio.wait_for(rate.acquire(), timeout=1)  # no pause: nothing was shared yet
    assert rate.fallback_starts == 1
    assert [level for level, _ in notes] == ["warning"]
    assert "<SharedRate redis://:***@cache:6379/0 <= 30/s fallback" in repr(rate)


# --------------------------------------------------------------------------- a real Redis

REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS is None, reason="redis-server is not installed (Debian package redis-server)"
)


@dataclass
class RedisServer:
    """A throwaway redis-server on a loopback port (no persistence)."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server on a free loopback port, killed at teardown."""
    assert REDIS is not None
    port = _free_port()
    proc = subprocess.Popen(
        [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = RedisServer(port, proc)
    try:
        wait_until(lambda: _pong(port) or proc.poll() is not None, timeout=10, what="redis PING")
        assert proc.poll() is None, "redis-server exited at start"
        yield server
    finally:
        server.kill()


def _spawn_fleet(spawn_cli: Any, archive: Any, emu: Any, store: str, n: int = 3) -> list[Any]:
    return [
        spawn_cli("run", archive.manifest, "--out", "r.{shard}.jsonl", "--shard", f"{k}/{n}",
                  "-j", "8", "--rate", "30", "--rate-store", store,
                  "--endpoint", emu.endpoint(), "--no-progress")
        for k in range(n)
    ]  # fmt: skip


def _busiest_second(emu: Any) -> tuple[int, list[int]]:
    timeline = [n for n in emu.stats()["requests_per_second"]]
    return max(timeline), timeline


@needs_redis
def test_three_processes_share_one_rate_through_redis(
    tmp_path: Path,
    emulator: Callable[..., Any],
    make_archive: Callable[..., Any],
    spawn_cli: Callable[..., subprocess.Popen[str]],
    redis_server: RedisServer,
) -> None:
    """Three processes at --rate 30 with one Redis start at most ~30 requests a second in all."""
    emu = emulator(latency_ms=20)
    archive = make_archive(tmp_path, 120, seconds=0.05)
    procs = _spawn_fleet(spawn_cli, archive, emu, redis_server.url)
    for proc in procs:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert "unreachable" not in stderr
    busiest, timeline = _busiest_second(emu)
    print(f"requests per second seen by the emulator: {timeline}")
    # 30 per moving second at the clients; arrivals lag their starts by a few ms, so a fixed
    # second of the emulator's may catch a few more. Without the shared store it would be 90.
    assert busiest <= 30 * 1.1, timeline
    assert sum(timeline) == 120
    active = [n for n in timeline if n]
    assert len(active) >= 4, timeline  # 120 requests at 30/s take four seconds at least
    items = [r for k in range(3) for r in read_results(tmp_path / f"r.{k}.jsonl")[0]]
    assert sorted(r["id"] for r in items) == sorted(archive.ids)


@needs_redis
def test_redis_killed_mid_run_falls_back_to_a_share_of_the_rate(
    tmp_path: Path,
    emulator: Callable[..., Any],
    make_archive: Callable[..., Any],
    spawn_cli: Callable[..., subprocess.Popen[str]],
    redis_server: RedisServer,
) -> None:
    """Redis dying mid-run: each process warns once and finishes at 30/3 per second."""
    emu = emulator(latency_ms=20)
    archive = make_archive(tmp_path, 150, seconds=0.05)
    procs = _spawn_fleet(spawn_cli, archive, emu, redis_server.url)
    wait_until(lambda: emu.stats()["requests"] >= 40, timeout=30, what="40 requests")
    redis_server.kill()
    for proc in procs:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        warnings = [line for line in stderr.splitlines() if "unreachable" in line]
        assert len(warnings) == 1, stderr
        assert warnings[0].startswith(
            f"batchscribe: warning: rate store {redis_server.url} unreachable ("
        )
        assert "going on at 10 requests/s in this process" in warnings[0]
    busiest, timeline = _busiest_second(emu)
    print(f"requests per second seen by the emulator: {timeline}")
    assert busiest <= 30 * 1.1, timeline  # 3 x 30/3 on the fallback, never a burst on top
    items = [r for k in range(3) for r in read_results(tmp_path / f"r.{k}.jsonl")[0]]
    assert sorted(r["id"] for r in items) == sorted(archive.ids)
    assert all(r["status"] == "ok" for r in items)


@needs_redis
async def test_the_lua_scripts_share_slots_cuts_and_counts_in_a_real_redis(
    redis_server: RedisServer,
) -> None:
    """The real scripts: even slots, a cut seen by all, stale climbs dropped, keys expire."""
    import redis.asyncio as aioredis

    from batchscribe.ratestore import _RedisBoard

    pool = aioredis.ConnectionPool.from_url(redis_server.url)
    one, two = _RedisBoard(pool, "batchscribe:t"), _RedisBoard(pool, "batchscribe:t")
    for board in (one, two):
        board.bind("scope")
    waits = [(await board.reserve(0.5))[0] for board in (one, two, one, two)]
    assert waits[0] < 0.01, waits
    assert all(abs(b - a - 0.5) < 0.05 for a, b in itertools.pairwise(waits)), waits
    assert await two.read() is None
    epoch = await one.publish(1.7, 2.0, cut=True, seen=0, answered=3)
    _, seen = await two.reserve(0.0, answered=2, epoch=epoch)
    assert seen == Learned(epoch, 1.7, 2.0, 5)  # the cut, and both processes' answers
    assert await two.publish(2.5, 2.6, cut=False, seen=0) == epoch  # stale: dropped
    _, seen = await one.reserve(0.0, answered=4, epoch=epoch - 1)  # counts of another epoch
    assert seen == Learned(epoch, 1.7, 2.0, 5)
    later = await two.publish(1.5, 1.8, cut=True, seen=epoch)
    assert later > epoch
    assert await one.read() == Learned(later, 1.5, 1.8, 0)
    client = aioredis.Redis(connection_pool=pool)
    assert 0 < await client.ttl("batchscribe:t:scope:learned") <= LEARNED_TTL
    assert 0 < await client.pttl("batchscribe:t:scope:slot") <= 3000
    await pool.disconnect()


def _fleet(spawn_cli: Any, archive: Any, emu: Any, store: str, *args: str, n: int = 2) -> list[Any]:
    return [
        spawn_cli("run", archive.manifest, "--out", "r.{shard}.jsonl", "--shard", f"{k}/{n}",
                  "-j", "4", "--rate-store", store, *args, "--endpoint", emu.endpoint(),
                  "--no-progress")
        for k in range(n)
    ]  # fmt: skip


def _finish(procs: list[Any], tmp_path: Path, archive: Any) -> list[str]:
    """Wait for every process; every item ok; their output (the summary, then stderr)."""
    errs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=90)
        assert proc.returncode == 0, stderr
        errs.append(stdout + stderr)
    items = [r for k in range(len(procs)) for r in read_results(tmp_path / f"r.{k}.jsonl")[0]]
    assert sorted(r["id"] for r in items) == sorted(archive.ids)
    assert all(r["status"] == "ok" for r in items)  # none failed by 429s
    return errs


def _refused(emu: Any) -> tuple[int, int]:
    stats = emu.stats()
    return stats["rate_limited_by"]["rate_limit"], stats["requests"]


@needs_redis
def test_a_fleet_at_the_limit_starts_evenly_and_is_not_refused(
    tmp_path: Path,
    emulator: Callable[..., Any],
    make_archive: Callable[..., Any],
    spawn_cli: Callable[..., subprocess.Popen[str]],
    redis_server: RedisServer,
) -> None:
    """Two processes at --rate R (the server's R, a bucket of one) start evenly: few 429s."""
    # 25/min time-scaled by 12: one start per 0.2 s, a server bucket of one, no delay header.
    emu = emulator(latency_ms=150, rate_limit=5.0, rate_burst=1.0, rate_headers=False)
    archive = make_archive(tmp_path, 40, seconds=0.05)
    procs = _fleet(spawn_cli, archive, emu, redis_server.url, "--rate", "300/min")
    _finish(procs, tmp_path, archive)
    refused, requests = _refused(emu)
    print(f"{refused} of {requests} requests answered 429")
    # (A burst of two per process and five per window, as before, drew 13%; one process at
    # its own --rate draws ~2.5%: arrivals from two processes jitter a little more.)
    assert refused <= 0.1 * requests, (refused, requests)


@needs_redis
def test_a_fleet_learns_one_rate_together(
    tmp_path: Path,
    emulator: Callable[..., Any],
    make_archive: Callable[..., Any],
    spawn_cli: Callable[..., subprocess.Popen[str]],
    redis_server: RedisServer,
) -> None:
    """Two processes with a store and no --rate hold an unknown limit together, none failed."""
    emu = emulator(latency_ms=150, rate_limit=5.0, rate_burst=1.0, rate_headers=False)
    archive = make_archive(tmp_path, 60, seconds=0.05)
    procs = _fleet(spawn_cli, archive, emu, redis_server.url)
    errs = _finish(procs, tmp_path, archive)
    refused, requests = _refused(emu)
    print(f"{refused} of {requests} requests answered 429")
    assert all("learned" in err for err in errs), errs  # the one who saw no 429 too
    # The opening volley (4 in flight per process, unpaced until the first 429) is refused
    # but for one start; after it, at most 5% (the probes of a short job).
    assert refused <= 2 * 4 + 0.05 * requests, (refused, requests)


@needs_redis
def test_a_process_joining_starts_at_the_fleets_learned_rate(
    tmp_path: Path,
    emulator: Callable[..., Any],
    make_archive: Callable[..., Any],
    spawn_cli: Callable[..., subprocess.Popen[str]],
    redis_server: RedisServer,
) -> None:
    """A rate learnt from one process's 429s paces the next one from its first start."""
    import redis

    emu = emulator(latency_ms=150, rate_limit=5.0, rate_burst=1.0, rate_headers=False)
    archive = make_archive(tmp_path, 50, seconds=0.05)

    def shard(k: int) -> Any:
        return spawn_cli("run", archive.manifest, "--out", "r.{shard}.jsonl", "--shard",
                         f"{k}/2", "-j", "4", "--rate-store", redis_server.url,
                         "--endpoint", emu.endpoint(), "--no-progress")  # fmt: skip

    first = shard(0)
    client = redis.Redis(port=redis_server.port)
    wait_until(lambda: bool(client.keys("batchscribe:*:learned")), timeout=30, what="a cut")
    second = shard(1)
    errs = _finish([first, second], tmp_path, archive)
    assert "starting at the rate the fleet learnt: ~" in errs[1], errs[1]
    throttled = re.search(r"(\d+) request\(s\) answered 429", errs[1])
    assert throttled is not None, errs[1]
    # Unpaced with -j 4 against a bucket of one, it would meet 429s at once (three at least).
    assert int(throttled[1]) <= 2, errs[1]
    key = client.keys("batchscribe:*:learned")[0]
    assert 0 < client.ttl(key) <= LEARNED_TTL  # a fleet that is gone leaves nothing behind
    assert {k.split(b":")[-1] for k in client.keys("batchscribe:*")} <= {b"learned", b"slot"}


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate-store", "redis"], "expected redis://HOST"),
        (["--rate", "5", "--rate-store", "http://cache:6379"], "expected redis://HOST"),
        (["--rate", "5", "--rate-store", "redis://:hunter2@cache/x"], "redis://:***@cache/x"),
    ],
)
def test_rate_store_misuse_exits_2(
    tmp_path: Path,
    make_archive: Callable[..., Any],
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
    args: list[str],
    message: str,
) -> None:
    """A malformed --rate-store URL exits 2 before anything is written."""
    archive = make_archive(tmp_path, 2)
    proc = run_cli("run", archive.manifest, "--out", "r.jsonl", *args,
                   "--endpoint", "http://127.0.0.1:9/")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "hunter2" not in proc.stderr
    assert not (tmp_path / "r.jsonl").exists()


def test_unreachable_store_at_start_runs_on_the_fallback(
    tmp_path: Path,
    emulator: Callable[..., Any],
    make_archive: Callable[..., Any],
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """A Redis that does not answer at start: one warning, and the run completes at R/N."""
    emu = emulator()
    archive = make_archive(tmp_path, 6, seconds=0.05)
    store = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    proc = run_cli(
        "run", archive.manifest, "--out", "r.{shard}.jsonl", "--shard", "1/2", "--rate", "20",
        "--rate-store", store, "--endpoint", emu.endpoint(), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "unreachable" in line]
    assert len(warnings) == 1, proc.stderr
    assert f"rate store {store} unreachable (ConnectionError" in warnings[0]
    assert "going on at 10 requests/s in this process instead of sharing 20/s" in warnings[0]
    items, _ = read_results(tmp_path / "r.1.jsonl")
    assert items and all(r["status"] == "ok" for r in items)


def test_readme_states_the_retry_interval_and_the_extra() -> None:
    """The README's outage behaviour and install line match the code and pyproject.toml."""
    text = (REPO / "README.md").read_text()
    assert f"tries Redis again every {RETRY_INTERVAL:g} seconds" in text
    assert "pip install 'batchscribe[redis]'" in text
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r"^redis = \[\n(\s+\"[^\"]+\",\n)+\]", pyproject, re.M)
    assert "| `--rate-store URL` |" in text


# ------------------------------------------------------------------------------ learned rate


def test_a_learnt_rate_is_kept_and_read_back_for_its_scope_only(tmp_path: Path) -> None:
    """The hint beside the results comes back for the same endpoint and model, not another."""
    from batchscribe.ratestore import load_hint, save_hint

    out = str(tmp_path / "r.jsonl")
    save_hint(out, "https://h/v1 model=pulse", 25 / 60, now=1000.0)
    assert load_hint(out, "https://h/v1 model=pulse", now=2000.0) == pytest.approx(25 / 60)
    assert load_hint(out, "https://h/v1 model=pulse-pro", now=2000.0) is None
    save_hint(out, "https://h/v1 model=pulse", None, now=3000.0)
    assert load_hint(out, "https://h/v1 model=pulse", now=3000.0) is None


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"scope": "s", "per_minute": "x", "learned_at": 0}',
     b'{"scope": "s", "per_minute": 0.001, "learned_at": 0}',  # absurdly low
     b'{"scope": "s", "per_minute": 1e12, "learned_at": 0}',  # absurdly high
     b'{"scope": "s", "per_minute": 25, "learned_at": -9e9}'],  # stale
)  # fmt: skip
def test_a_damaged_stale_or_absurd_hint_is_ignored(tmp_path: Path, content: bytes) -> None:
    """A hint that cannot be trusted is no hint: the run learns from scratch."""
    from batchscribe.ratestore import hint_path, load_hint

    out = str(tmp_path / "r.jsonl")
    Path(hint_path(out)).write_bytes(content)
    assert load_hint(out, "s", now=100.0) is None


# ------------------------------------------------------------------- the learned rate, shared


async def _second_strike(measure_admitted: bool) -> float | None:
    """A rate cut twice in a row while this process saw 2 starts/s admitted: the anchor."""
    clock = FakeClock()
    rater = AdaptiveRate(clock, hint=4.0)
    rater.measure_admitted = measure_admitted
    rater.on_start(clock.now())
    rater.on_response(clock.now(), 429)  # the first strike
    for _ in range(20):  # 2 starts/s answered here, fewer than the plateau needs
        await clock.advance(0.5)
        rater.on_start(clock.now())
        rater.on_response(clock.now(), 200)
    rater.on_start(clock.now())
    rater.on_response(clock.now(), 429)  # the second strike
    return rater.anchor


async def test_a_shared_rate_does_not_anchor_on_one_process_share_of_the_starts() -> None:
    """Alone, a second strike anchors on the starts the server let through; in a fleet, this
    process's share of them is not the limit, so it cuts from the refused rate instead."""
    alone, shared = await _second_strike(True), await _second_strike(False)
    assert alone is not None and alone == pytest.approx(2.0, rel=0.1)
    assert shared is not None and shared > 3.0


async def test_the_fleet_count_of_answers_moves_the_climb_on() -> None:
    """advance(n): a process that saw few answers climbs with the fleet's count."""
    clock = FakeClock()
    rater = AdaptiveRate(clock)
    rater.adopt(1.0, 2.0)
    assert rater.rate == pytest.approx(1.0)
    assert rater.advance(rater.climb)  # the fleet's answers: back on the plateau
    assert rater.rate == pytest.approx(2.0 * (1 - rater.margin))
    assert not rater.advance(1)  # behind this process's own count: nothing
    rater.on_response(clock.now() - 1, 429)  # started before the adopted cut: no new cut
    assert rater.cuts == 0
