"""Values of the command line's flags: argparse ``type=`` functions, each refusing a bad value
with one line naming what was expected (argparse adds the flag: ``argument --rate: ...``).

A count, time or rate refuses NaN and the infinities as well as its range, alike for every flag
(tests/test_cli.py checks every numeric option of every subcommand).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from batchscribe.pulse import coerce_param
from batchscribe.run.options import max_items_problem


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def _whole(text: str, least: int) -> int:
    value = _integer(text)
    if value < least:
        need = "must not be negative" if least == 0 else f"must be at least {least}"
        raise argparse.ArgumentTypeError(f"{need}, not {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1 (``--max-attempts``, ``--top``)."""
    return _whole(text, 1)


def count(text: str) -> int:
    """A whole number that may be 0 (``--runs``), refused like the others."""
    return _whole(text, 0)


def max_items(text: str) -> int:
    """``--max-items``: refused, like the other counts, by the rule RunOptions checks."""
    value = _integer(text)
    problem = max_items_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}, not {value}")
    return value


def _finite(text: str, expected: str) -> float:
    """A float from ``text``; NaN and infinities are refused (a comparison with NaN is always
    false, so a NaN would slip past every range check)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}")
    return value


def concurrency(text: str) -> int | str:
    """``--concurrency``: ``auto`` or a whole number of at least 1."""
    if text.strip().lower() == "auto":
        return "auto"
    return positive_int(text)


_RATE_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_rate(text: str) -> float:
    """Requests per second from ``25/min``, ``0.5/s``, ``1000/h`` or a bare number (per
    second, as ``--rate`` always read it); ValueError otherwise."""
    number, _, unit = text.strip().lower().partition("/")
    seconds = _RATE_UNITS.get(unit.strip() or "s")
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if seconds is None or not math.isfinite(value):
        raise ValueError(f"expected a rate like 25/min, 0.5/s or 1000/h, not {text!r}")
    if not value > 0:
        raise ValueError(f"must be a positive rate, not {text}")
    return value / seconds


def per_second(text: str) -> float:
    """``--rate``: :func:`parse_rate`, its refusal a usage error."""
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds(text: str) -> float:
    """Seconds that may be 0 (``--max-retry-wait``)."""
    value = _finite(text, "seconds")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def positive_seconds(text: str) -> float:
    """Seconds above 0 (``--timeout``)."""
    value = _finite(text, "seconds")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``45s``, ``30m``, ``6h``, ``1h30m`` or ``2d``; ValueError otherwise."""
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    total, number, seen = 0.0, "", False
    for char in text:
        if char.isdigit() or char == ".":
            number += char
        elif char in _UNITS and number:
            total += float(number) * _UNITS[char]
            number, seen = "", True
        else:
            raise ValueError(f"not a duration: {text!r} (try 90s, 30m, 6h or 1h30m)")
    if number or not seen:
        raise ValueError(f"not a duration: {text!r} (try 90s, 30m, 6h or 1h30m)")
    return total


def duration(text: str) -> float:
    """``--max-runtime``: a positive :func:`parse_duration`, its refusal a usage error."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < value < math.inf:  # (NaN too)
        raise argparse.ArgumentTypeError(f"must be a positive duration, not {text}")
    return value


def chunk_length(text: str) -> float:
    """``--max-chunk``: a positive :func:`parse_duration` (10m, 300, 1h); its range is
    RunOptions.validate's."""
    return duration(text)


def bitrate(text: str) -> int:
    """``--opus-bitrate``: bits per second from ``32k`` or ``32000`` (its range is
    RunOptions.validate's)."""
    number = text.strip().lower()
    scale = 1000.0 if number.endswith("k") else 1.0
    value = _finite(number.removesuffix("k"), "bits per second like 32k or 32000")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return round(value * scale)


def prep_workers(text: str) -> int:
    """``--prep-workers``: a whole number of at least 1."""
    return _whole(text, 1)


def price(text: str) -> float:
    """A price that may be 0 (``--price-per-hour``)."""
    value = _finite(text, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def param(name: str) -> Callable[[str], object]:
    """The value of the Pulse parameter ``name`` (``--model``, ``--language``), by the rule the
    manifest's per-item fields follow too."""

    def parse(text: str) -> object:
        try:
            return coerce_param(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse
