"""Values as people read them: ids fit to print, numbers from records, times and counts.

Shared by the text report, the HTML page and the exports. A record is read from a file anyone
may have edited, so every value is checked: a non-number, a negative or absurd time is shown as
``-``, never as a crash or a 300-digit number of hours.
"""

from __future__ import annotations

import math

#: Times a record may hold beyond audio (a run's wall time, a server's processing time):
#: past these they are corrupt, shown as "-" rather than as a 300-digit number of hours.
MAX_SHOWN = 1e9  # seconds (31 years), and for show_float any magnitude


def display_id(item_id: str) -> str:
    """An id fit to print: a URL's query (often a signature) hidden, control characters escaped."""
    if "://" in item_id and ("?" in item_id or "#" in item_id):
        cut = min(i for i in (item_id.find("?"), item_id.find("#")) if i >= 0)
        item_id = item_id[:cut] + "?…"
    return one_line(item_id)


def one_line(text: str) -> str:
    """``text`` on one line: control characters escaped, cut at 300 characters."""
    text = (
        text
        if text.isprintable()
        else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    )
    return text if len(text) <= 300 else text[:300] + "…"


def number(value: object, limit: float = math.inf) -> float | None:
    """A JSON number as a float: None for anything else (a bool, a string, NaN) and, with
    ``limit``, for a number beyond +-``limit``."""
    # (The range check first: NaN fails it, and a huge int never reaches float().)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and -limit <= value <= limit:
        return float(value)
    return None


def show_text(value: object) -> str:
    return "-" if value is None else one_line(str(value))


def show_int(value: object) -> str:
    return f"{value:,}" if type(value) is int else "-"


def show_float(value: object) -> str:
    n = number(value)
    return "-" if n is None or not abs(n) < MAX_SHOWN else f"{n:,.1f}"


def show_ms(value: object) -> str:
    n = number(value)
    if n is None or n < 0:
        return "-"
    return f"{n:,.0f} ms" if n < 1000 else show_seconds(n / 1000)


def show_seconds(value: object) -> str:
    """Seconds for people; "-" for none, and for a negative or absurd value (a corrupt record)."""
    n = number(value)
    if n is None or not 0 <= n < MAX_SHOWN:
        return "-"
    if n < 120:
        return f"{n:.1f} s"
    if n < 7200:
        return f"{n / 60:.1f} min"
    return f"{n / 3600:.2f} h"
