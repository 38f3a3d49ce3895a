"""How the emulator behaves: fault profiles, plans (the service's documented limits), the
configuration object, and the ``batchscribe emulate`` flags that build it.

Nothing here imports aiohttp: the configuration is plain data, read afresh by the server for
every request, so a test or a benchmark may change it while the emulator runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchscribe.pulse import CURRENT_PATH, LEGACY_PATH, MAX_PAYLOAD

__all__ = [
    "LEGACY_PATHS",
    "PATHS",
    "PLANS",
    "PROFILES",
    "UNIFIED_PATH",
    "EmulatorConfig",
    "FaultRates",
    "Plan",
    "add_arguments",
    "config_from_args",
]

#: The unified endpoint (what the SDK uses): ``model`` required, ``{error, request_id, details}``.
UNIFIED_PATH = CURRENT_PATH
#: The legacy endpoints: the original guide's path and the same path on the current host
#: (``/waves/v1/pulse/get_text``, changelog 2026-05-28). Legacy error shapes.
LEGACY_PATHS = (LEGACY_PATH, "/waves/v1/pulse/get_text")
#: Endpoint kinds (for ``RunningEmulator.endpoint``) -> path.
PATHS = {"current": UNIFIED_PATH, "legacy": LEGACY_PATHS[0], "legacy-current": LEGACY_PATHS[1]}


@dataclass
class FaultRates:
    """Per-request fault probabilities (0..1), rolled in this order; their sum must be <= 1.

    Args:
        p429: answer 429 with a delay header (``EmulatorConfig.retry_delay_s``).
        p5xx: answer 500, 502 (an HTML proxy page) or 503 (sometimes with Retry-After).
        preset: reset the connection without any response.
        ptruncate: answer 200 with a body cut short.
        pstall: hang ``EmulatorConfig.stall_seconds`` before answering normally.
    """

    p429: float = 0.0
    p5xx: float = 0.0
    preset: float = 0.0
    ptruncate: float = 0.0
    pstall: float = 0.0

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault rate {spec.name} must be between 0 and 1, not {value!r}")
        if self.total() > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {self.total():g}; they must add up to <= 1")

    def total(self) -> float:
        """The probability that a request meets any fault."""
        return self.p429 + self.p5xx + self.preset + self.ptruncate + self.pstall


PROFILES: dict[str, FaultRates] = {
    "none": FaultRates(),
    # A service having a bad day: every kind of transient trouble, rarely. No stalls, so a run
    # is not slowed down by client timeouts.
    "flaky": FaultRates(p429=0.05, p5xx=0.05, preset=0.02, ptruncate=0.02),
    # Heavy throttling: one request in three is told to come back later.
    "rate-limited": FaultRates(p429=0.35),
    # Mostly down: most requests fail with 5xx or a dropped connection.
    "outage": FaultRates(p5xx=0.6, preset=0.2),
    # Everything, often, stalls included.
    "hostile": FaultRates(p429=0.15, p5xx=0.15, preset=0.08, ptruncate=0.08, pstall=0.04),
}


@dataclass(frozen=True)
class Plan:
    """A subscription plan's request limit, as the service documents it.

    Args:
        requests_per_minute: admitted requests per model per minute; None: no limit.
        rate_headers: whether its 429s carry a delay header by default (the documentation
            promises none, so the Standard plan sends none unless asked).
    """

    requests_per_minute: float | None
    rate_headers: bool


PLANS: dict[str, Plan] = {
    # Enterprise-like: no request limit (configured per customer). The default, so the README's
    # first command runs at full speed.
    "unlimited": Plan(None, rate_headers=True),
    # "25 requests per minute per model on the Standard plan"; pulse and pulse-pro are counted
    # apart. No Retry-After is promised, so none is sent unless --rate-headers.
    "standard": Plan(25.0, rate_headers=False),
}
#: How a plan's per-minute limit is held: see :mod:`batchscribe.emulator.limits`.
PLAN_ALGORITHMS = ("window", "bucket")


@dataclass
class EmulatorConfig:
    """How the emulator behaves; mutable while it runs (read afresh for every request).

    Args:
        key: when set, requests need ``Authorization: Bearer <key>`` (else 401).
        latency_ms: added before every answer (not before 4xx and gateway 429s).
        jitter_ms: latency varies uniformly by +/- this much (seeded, per content).
        faults: fault probabilities; see :data:`PROFILES`.
        seed: makes fault rolls and jitter differ between runs while staying reproducible.
        rate_limit: token bucket refilled at this many requests/s (all models together); an
            empty bucket answers 429 with ``retry-after-ms`` set to the time until the next token.
        rate_burst: bucket capacity; default ``max(1, rate_limit / 10)`` (100 ms of tokens), so a
            client has to pace itself rather than fire a second's worth at once.
        max_concurrent: with more than this many requests in flight, answer 429 with
            ``retry-after-ms: busy_retry_ms``.
        stall_seconds: how long a stall fault hangs before answering normally.
        retry_delay_s: the delay fault 429s (and 503s with Retry-After) ask for.
        busy_retry_ms: the delay concurrency-cap 429s ask for.
        max_payload: bodies over this many bytes are refused (413 unified, 400 legacy).
        early_grace_s: a retry this much before the asked delay is not counted as early
            (clock granularity between client and server).
        plan: a name from :data:`PLANS`: the per-model request limit of a subscription plan.
            ``EmulatorConfig.for_plan`` also takes the plan's default for ``rate_headers``.
        plan_rpm: overrides the plan's requests per minute (per model); may change mid-run.
        plan_algorithm: ``"window"`` (a sliding 60-s window, the default) or ``"bucket"`` (a
            token bucket refilled at the per-minute rate); see :mod:`~.limits` for why.
        plan_window_s: the length of the plan's "minute" (tests shorten it; the count stays).
        plan_burst: the bucket's capacity with ``plan_algorithm="bucket"``; default a fifth of
            the per-minute count (5 on the Standard plan).
        rate_headers: the rate limiter's 429s (``plan`` and ``rate_limit``) carry
            ``Retry-After``, ``retry-after-ms`` and ``X-RateLimit-Reset``; when False none of
            them (a client must then find the pace alone).
        max_audio_minutes: audio longer than this is refused with 400 (the service's documented
            10-minute session); None: no limit.
        link_bytes_per_s: request bodies are read no faster than this many bytes per second,
            all connections together (one shared upload link); None: as fast as they come.
    """

    key: str | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    faults: FaultRates = field(default_factory=FaultRates)
    seed: int = 0
    rate_limit: float | None = None
    max_concurrent: int | None = None
    stall_seconds: float = 3600.0
    retry_delay_s: float = 1.0
    rate_burst: float | None = None
    busy_retry_ms: int = 50
    max_payload: int = MAX_PAYLOAD
    early_grace_s: float = 0.05
    plan: str = "unlimited"
    plan_rpm: float | None = None
    plan_algorithm: str = "window"
    plan_window_s: float = 60.0
    plan_burst: float | None = None
    rate_headers: bool = True
    max_audio_minutes: float | None = 10.0
    link_bytes_per_s: float | None = None

    def __post_init__(self) -> None:
        if self.plan not in PLANS:
            raise ValueError(f"unknown plan {self.plan!r} (expected one of: {', '.join(PLANS)})")
        if self.plan_algorithm not in PLAN_ALGORITHMS:
            raise ValueError(
                f"plan_algorithm must be one of {', '.join(PLAN_ALGORITHMS)}, "
                f"not {self.plan_algorithm!r}"
            )

    @classmethod
    def for_plan(cls, plan: str, **overrides: Any) -> EmulatorConfig:
        """A configuration for ``plan`` with the plan's own defaults (``rate_headers``: the
        Standard plan sends no delay header), then ``overrides``."""
        if plan not in PLANS:
            raise ValueError(f"unknown plan {plan!r} (expected one of: {', '.join(PLANS)})")
        overrides.setdefault("rate_headers", PLANS[plan].rate_headers)
        return cls(plan=plan, **overrides)

    def requests_per_minute(self) -> float | None:
        """The plan's per-model request limit in force (``plan_rpm`` first), or None."""
        if self.plan_rpm is not None:
            return self.plan_rpm
        return PLANS[self.plan].requests_per_minute

    def max_audio_seconds(self) -> float | None:
        """The session limit in seconds, or None."""
        return None if self.max_audio_minutes is None else self.max_audio_minutes * 60


# --------------------------------------------------------------------------------------------
# Command line: `batchscribe emulate`


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability must be between 0 and 1, not {text}")
    return value


def _latency(text: str) -> tuple[float, float]:
    base, _, jitter = text.partition(":")
    try:
        values = float(base), float(jitter or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"latency must look like MS or MS:JITTER (e.g. 200:50), not {text!r}"
        ) from None
    if not all(0 <= value < math.inf for value in values):  # (NaN too)
        raise argparse.ArgumentTypeError(f"latency and jitter must be >= 0, not {text!r}")
    return values


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value < math.inf:  # (NaN too)
            raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
        return value

    return parse


def _bytes_per_s(text: str) -> float:
    """A link speed in bytes per second: ``8000000``, ``8M``, ``8MB``, ``500k`` (powers of 1000)."""
    number = text.strip().upper().removesuffix("B").removesuffix("/S")
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(number[-1:], 1.0)
    try:
        value = float(number[:-1] if scale != 1.0 else number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a link speed is bytes per second, e.g. 8000000 or 8M, not {text!r}"
        ) from None
    if not 0 < value < math.inf:  # (NaN too)
        raise argparse.ArgumentTypeError(f"a link speed must be > 0, not {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``batchscribe emulate`` flags to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: loopback only)")
    parser.add_argument("--port", type=_port, default=8787, help="TCP port (default: 8787; 0: any)")
    parser.add_argument("--key", help="require Authorization: Bearer KEY (default: no key check)")
    parser.add_argument(
        "--plan",
        choices=list(PLANS),
        default="unlimited",
        help="the service's request limit: standard = 25 requests/min per model, 429 with no "
        "delay header (unless --rate-headers); unlimited = none (default)",
    )
    parser.add_argument(
        "--plan-rpm",
        type=_positive(float),
        metavar="N",
        help="the plan's requests per minute per model instead of its own (e.g. 12)",
    )
    parser.add_argument(
        "--plan-algorithm",
        choices=PLAN_ALGORITHMS,
        default="window",
        help="how the plan's limit is held: a sliding 60-s window (default) or a token bucket",
    )
    parser.add_argument(
        "--rate-headers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rate-limit 429s carry Retry-After/retry-after-ms/X-RateLimit-Reset (default: "
        "yes, except on --plan standard)",
    )
    parser.add_argument(
        "--max-audio-minutes",
        type=_positive(float),
        default=10.0,
        metavar="M",
        help="refuse audio longer than M minutes with 400 (the 10-minute session; default: 10)",
    )
    parser.add_argument(
        "--link-speed",
        type=_bytes_per_s,
        metavar="BYTES_PER_S",
        help="read request bodies no faster than this, all connections together (one shared "
        "upload link; e.g. 8M = 8 MB/s; default: as fast as they come)",
    )
    _add_fault_arguments(parser)


def _add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``batchscribe emulate`` flags of answer timing and faults."""
    parser.add_argument(
        "--latency",
        type=_latency,
        default=(0.0, 0.0),
        metavar="MS[:JITTER]",
        help="added latency per answer in ms, optionally +/- JITTER ms (default: 0)",
    )
    parser.add_argument(
        "--faults",
        choices=sorted(PROFILES),
        default="none",
        help="fault profile (default: none); --p* flags override single rates",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault rolls (default: 0)")
    parser.add_argument(
        "--rate-limit",
        type=_positive(float),
        metavar="R",
        help="token bucket of R requests/s (burst max(1, R/10)); beyond it 429 + retry-after-ms",
    )
    parser.add_argument(
        "--max-concurrent",
        type=_positive(int),
        metavar="C",
        help="429 when more than C requests are in flight",
    )
    for flag, what in (
        ("--p429", "429 with a delay header"),
        ("--p5xx", "500/502/503"),
        ("--preset", "connection reset without a response"),
        ("--ptruncate", "200 with a body cut short"),
        ("--pstall", "hang --stall-seconds before answering"),
    ):
        parser.add_argument(flag, type=_rate, metavar="P", help=f"probability of {what}")
    parser.add_argument(
        "--stall-seconds",
        type=_positive(float),
        default=3600.0,
        metavar="S",
        help="how long a stall hangs (default: 3600)",
    )


def config_from_args(ns: argparse.Namespace) -> EmulatorConfig:
    """The configuration the ``batchscribe emulate`` flags describe (profile, then overrides).

    Raises:
        ValueError: when the fault rates add up to more than 1.
    """
    rates = dataclasses.asdict(PROFILES[ns.faults])
    for name in rates:
        value = getattr(ns, name, None)
        if value is not None:
            rates[name] = value
    latency, jitter = ns.latency
    plan_options: dict[str, Any] = {}
    if ns.rate_headers is not None:
        plan_options["rate_headers"] = ns.rate_headers
    return EmulatorConfig.for_plan(
        ns.plan,
        key=ns.key,
        latency_ms=latency,
        jitter_ms=jitter,
        faults=FaultRates(**rates),
        seed=ns.seed,
        rate_limit=ns.rate_limit,
        max_concurrent=ns.max_concurrent,
        stall_seconds=ns.stall_seconds,
        plan_rpm=ns.plan_rpm,
        plan_algorithm=ns.plan_algorithm,
        max_audio_minutes=ns.max_audio_minutes,
        link_bytes_per_s=ns.link_speed,
        **plan_options,
    )
