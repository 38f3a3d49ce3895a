"""Spend caps: the audio answered plus the audio in flight never passes the cap."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscribe.errors import ConfigError
from batchscribe.spend import PRICE_PER_HOUR, UNKNOWN_SECONDS, SpendCap, default_price

API = Path(__file__).resolve().parents[2] / "shared" / "pulse-api.md"  # beside the checkout


def test_default_prices_are_the_documented_ones() -> None:
    """The default price per audio hour of each model is pulse-api.md's per-minute price x 60."""
    assert PRICE_PER_HOUR["pulse"] == pytest.approx(0.21)
    assert PRICE_PER_HOUR["pulse-pro"] == pytest.approx(0.24)
    if API.exists():  # the contract as the repository's authors read it
        text = API.read_text()
        assert "Pulse $0.0035/min ($0.21 per audio hour)" in text
        assert "Pulse Pro $0.004/min" in text


def test_unknown_model_has_no_default_price() -> None:
    """A model without a default price asks for --price-per-hour in one line."""
    with pytest.raises(ConfigError, match="--price-per-hour"):
        default_price("whisper")


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"max_cost": -1.0, "price_per_hour": 0.21, "max_audio_hours": None}, "--max-cost"),
        ({"max_cost": None, "price_per_hour": 0.21, "max_audio_hours": -2.0}, "--max-audio-hours"),
        ({"max_cost": 5.0, "price_per_hour": 0.0, "max_audio_hours": None}, "--price-per-hour"),
    ],
)
def test_bad_caps_are_config_errors(kwargs: dict[str, float | None], flag: str) -> None:
    """A negative cap or a zero price with --max-cost is a usage error naming the flag."""
    with pytest.raises(ConfigError, match=flag):
        SpendCap(**kwargs)  # type: ignore[arg-type]


def test_cost_cap_becomes_audio_seconds() -> None:
    """$0.21 at $0.21 an hour is one hour: 3600 s of audio fit, one more second does not."""
    cap = SpendCap(max_cost=0.21, price_per_hour=0.21, max_audio_hours=None)
    assert cap.limit == pytest.approx(3600)
    held = cap.admit(3600)
    assert held == 3600
    assert cap.admit(1) is None and cap.reached
    cap.settle(held, 3600)
    assert cap.cost == pytest.approx(0.21) and cap.spent == 3600 and cap.reserved == 0


def test_the_lower_of_two_caps_wins() -> None:
    """With --max-cost and --max-audio-hours both given, the tighter one is the cap."""
    cap = SpendCap(max_cost=100.0, price_per_hour=0.21, max_audio_hours=0.5)
    assert cap.limit == pytest.approx(1800)


def test_in_flight_audio_counts() -> None:
    """Items in flight hold their audio: two 40-minute items do not both fit in an hour."""
    cap = SpendCap(max_cost=None, price_per_hour=0.21, max_audio_hours=1)
    assert cap.admit(2400) is not None
    assert cap.admit(2400) is None


def test_refusal_is_final() -> None:
    """After a refusal a short item is refused too: the run stops, it does not skip ahead."""
    cap = SpendCap(max_cost=None, price_per_hour=0.21, max_audio_hours=1)
    held = cap.admit(3000)
    assert held is not None and cap.admit(3000) is None
    cap.release(held)
    assert cap.admit(10) is None


def test_unknown_duration_reserves_the_longest_seen() -> None:
    """An item of unknown duration holds the longest duration seen, at least the default."""
    cap = SpendCap(max_cost=None, price_per_hour=0.21, max_audio_hours=10)
    assert cap.admit(None) == UNKNOWN_SECONDS
    held = cap.admit(1500)
    assert held is not None
    cap.settle(held, 1700)  # the service measured more than the headers said
    assert cap.admit(None) == 1700


def test_no_cap_admits_everything() -> None:
    """Without a cap every item is admitted and the spend is still counted."""
    cap = SpendCap(max_cost=None, price_per_hour=0.21, max_audio_hours=None)
    for _ in range(100):
        held = cap.admit(3600)
        assert held is not None
        cap.settle(held, 3600)
    assert cap.cost == pytest.approx(21.0)


# A run: items with a duration (None: unknown until answered) and the real duration, and the
# order in which starts, answers and unsent items interleave.
_item = st.tuples(st.one_of(st.none(), st.floats(0, 7200)), st.floats(0, 7200), st.booleans())


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(_item, min_size=1, max_size=60),
    steps=st.lists(st.integers(0, 3), max_size=200),
    hours=st.floats(0, 20),
)
def test_cap_is_passed_by_at_most_the_in_flight_underestimates(
    items: list[tuple[float | None, float, bool]], steps: list[int], hours: float
) -> None:
    """However items arrive and finish: with known durations the cap is never passed; it is
    passed only by what items of unknown duration exceed what they reserved."""
    cap = SpendCap(max_cost=None, price_per_hour=0.21, max_audio_hours=hours)
    limit = hours * 3600
    queue = list(items)
    flight: list[tuple[float, float, bool]] = []  # held, actual, sent
    excess = 0.0
    for step in [*steps, *([1] * len(items))]:  # then drain everything
        if step == 0 and queue:
            known, actual, sent = queue.pop(0)
            held = cap.admit(known)
            if held is None:
                assert cap.reached and cap.spent + cap.reserved + cap.estimate(known) > limit
                queue.clear()  # the run stops taking items
                continue
            flight.append((held, actual if known is None else known, sent))
        elif flight:
            held, actual, sent = flight.pop(step % len(flight))
            if sent:
                cap.settle(held, actual)
                excess += max(0.0, actual - held)
            else:
                cap.release(held)
        assert cap.spent <= limit + excess + 1e-6
        assert cap.spent + cap.reserved <= limit + excess + 1e-6
    assert cap.reserved == pytest.approx(0.0, abs=1e-6)
    if all(known is not None for known, _, _ in items):
        assert cap.spent <= limit + 1e-6
