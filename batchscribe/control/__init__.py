"""Concurrency and rate control: how many requests may be in flight, and when one may start.

Limits are small strategy objects in the spirit of aiometer: "wait until a start is allowed",
"note a finish". All timing reads the one injectable :class:`~batchscribe.clock.Clock`.
:class:`AdaptiveRate` (always on) learns a requests-per-minute limit from 429s and sets the
:class:`Pacer`'s rate (and, for a window of N per W, its gate);
:class:`AdaptiveConcurrency` (``--concurrency auto``) learns an in-flight
limit on top.
"""

from batchscribe.control.concurrency import AdaptiveConcurrency
from batchscribe.control.limits import OVERLOAD_STATUSES, ConcurrencyLimit, Pacer, PoolPause
from batchscribe.control.rate import MIN_RATE, AdaptiveRate

__all__ = [
    "MIN_RATE",
    "OVERLOAD_STATUSES",
    "AdaptiveConcurrency",
    "AdaptiveRate",
    "ConcurrencyLimit",
    "Pacer",
    "PoolPause",
]
