"""Spend caps: ``--max-cost`` and ``--max-audio-hours`` as one limit on audio seconds.

Pulse bills by audio duration, so a cost cap is an audio cap at a price: ``max_cost /
price_per_hour`` hours. :class:`SpendCap` counts the audio of answered requests (``spent``)
plus the audio of requests in flight (``reserved``), and admits an item only if that total plus
the item stays within the cap. Concurrent requests therefore cannot run past the budget: what
is in flight is already counted when the next item asks.

An item whose duration is unknown before it is sent (a URL source: the service measures it)
reserves the longest duration seen so far in the run, and at least
:data:`UNKNOWN_SECONDS`. If it turns out longer, :meth:`SpendCap.settle` counts the real
duration and the cap is passed by that item's excess: with known durations (headers) the cap
is never passed; with unknown ones, by at most what the items in flight at the end exceed their
estimates, which the growing estimate keeps to one item in an archive of similar lengths.

A refusal is final: the cap stops taking items (the run ends with exit 4, resumable) rather
than skipping a long item to send shorter ones after it, so a rerun continues where it stopped.

Pure: no clock, no I/O; the engine calls it from the event loop.
"""

from __future__ import annotations

from batchscribe.errors import ConfigError

__all__ = ["PRICE_PER_HOUR", "UNKNOWN_SECONDS", "SpendCap", "default_price"]

#: US dollars per audio hour, Standard plan over HTTP (pulse-api.md: "Pulse $0.0035/min ($0.21
#: per audio hour), Pulse Pro $0.004/min"). The model card's "Pulse batch $0.005/min" is another
#: plan: ``--price-per-hour`` sets the price of the user's own plan.
PRICE_PER_HOUR: dict[str, float] = {"pulse": 0.0035 * 60, "pulse-pro": 0.004 * 60}

#: What an item of unknown duration reserves until a longer one has been seen: ten minutes.
UNKNOWN_SECONDS = 600.0


def default_price(model: str) -> float:
    """The price per audio hour of ``model`` (``pulse`` or ``pulse-pro``). Raises ConfigError."""
    try:
        return PRICE_PER_HOUR[model]
    except KeyError:
        raise ConfigError(f"no default price for model {model!r}: give --price-per-hour") from None


class SpendCap:
    """Admits items while the audio answered plus the audio in flight stays within the cap.

    Args:
        max_cost: the most to spend (in the price's currency), or None.
        price_per_hour: the price of one audio hour (must be above 0 with ``max_cost``).
        max_audio_hours: the most audio to send, or None.

    Use: ``held = cap.admit(seconds)``; None means stop. Then exactly one of
    ``cap.settle(held, actual_seconds)`` (the answer came back; also for a failure the service
    billed) or ``cap.release(held)`` (the item was not sent, or not billed).
    """

    __slots__ = ("_largest", "limit", "price_per_hour", "reached", "reserved", "spent")

    def __init__(
        self, *, max_cost: float | None, price_per_hour: float, max_audio_hours: float | None
    ) -> None:
        if max_cost is not None and max_cost < 0:
            raise ConfigError(f"--max-cost must be 0 or more, not {max_cost}")
        if max_audio_hours is not None and max_audio_hours < 0:
            raise ConfigError(f"--max-audio-hours must be 0 or more, not {max_audio_hours}")
        if price_per_hour < 0 or (max_cost is not None and price_per_hour == 0):
            raise ConfigError(f"--price-per-hour must be above 0, not {price_per_hour}")
        limits = []
        if max_cost is not None:
            limits.append(max_cost / price_per_hour * 3600)
        if max_audio_hours is not None:
            limits.append(max_audio_hours * 3600)
        #: the cap in audio seconds (None: no cap, every item is admitted)
        self.limit: float | None = min(limits) if limits else None
        self.price_per_hour = price_per_hour
        #: audio seconds of answered requests
        self.spent = 0.0
        #: audio seconds held by requests in flight
        self.reserved = 0.0
        #: True once an item was refused: every later one is refused too
        self.reached = False
        self._largest = 0.0

    @property
    def cost(self) -> float:
        """What the answered audio cost at ``price_per_hour``."""
        return self.spent / 3600 * self.price_per_hour

    def estimate(self, item_seconds: float | None) -> float:
        """What an item reserves: its duration, or for an unknown one the longest seen so far
        (at least :data:`UNKNOWN_SECONDS`)."""
        if item_seconds is not None:
            return max(0.0, item_seconds)
        return max(self._largest, UNKNOWN_SECONDS)

    def admit(self, item_seconds: float | None) -> float | None:
        """Reserve the item's audio and return the seconds held, or None: the cap is reached."""
        held = self.estimate(item_seconds)
        if self.limit is not None and (
            self.reached or self.spent + self.reserved + held > self.limit
        ):
            self.reached = True
            return None
        self.reserved += held
        self._largest = max(self._largest, held)
        return held

    def settle(self, held: float, actual: float) -> None:
        """The request holding ``held`` seconds was answered for ``actual`` seconds of audio."""
        self.reserved = max(0.0, self.reserved - held)
        self.spent += max(0.0, actual)
        self._largest = max(self._largest, actual)

    def release(self, held: float) -> None:
        """The request holding ``held`` seconds was not sent (or not billed)."""
        self.reserved = max(0.0, self.reserved - held)

    def __repr__(self) -> str:
        return (
            f"<SpendCap limit={self.limit} spent={self.spent:.1f}s reserved="
            f"{self.reserved:.1f}s cost={self.cost:.4f} reached={self.reached}>"
        )
