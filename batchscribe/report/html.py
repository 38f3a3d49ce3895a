"""The report as one self-contained HTML page: inline CSS and SVG charts drawn here.

No script, nothing fetched: the page opens anywhere, offline. :func:`render_html` takes a
:class:`~batchscribe.report.tally.Report` built with ``charts=True`` (the durations and finish
times it keeps, one float per item and per record).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any

from batchscribe.report.tally import Report, epoch
from batchscribe.report.text import show_float, show_int, show_ms, show_seconds, show_text

# One self-contained page: inline CSS, SVG drawn here, no script, nothing fetched. Colours are
# Tableau 10 (distinguishable, colour-blind friendly); every chart has axis titles and a legend
# or direct labels.

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")
_OK = "#59a14f"
_SUBMITTED = "#4e79a7"
_CAUSE_COLOURS = {
    "5xx": "#e15759", "429": "#f28e2b", "network": "#b07aa1", "timeout": "#9c755f",
    "4xx": "#d37295", "missing": "#79706e", "invalid": "#bab0ac", "too_large": "#edc948",
    "file_changed": "#76b7b2", "redirect": "#ff9da7", "language": "#86bcb6",
}  # fmt: skip
_MAX_RUN_LINES = 8
_CSS = """
:root{--fg:#1f2933;--muted:#66768a;--line:#e4e7ec;--bg:#f5f6f8;--card:#fff}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:28px 24px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:15px;margin:0}
.sub{color:var(--muted);font-size:13px;margin:2px 0 0}
.tiles{display:grid;grid-template-columns:repeat(6,1fr);gap:12px;margin:20px 0 16px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.tile .k{color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.05em}
.tile .v{font-size:24px;font-weight:650;margin-top:2px;font-variant-numeric:tabular-nums}
.tile .d{color:var(--muted);font-size:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:16px 18px;margin:0 0 16px}
.card .sub{margin-bottom:10px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.grid2 .card{margin:0}
.row{margin-bottom:16px}
svg{display:block;width:100%;height:auto}
svg text{font-size:12px;fill:#5b6675}
svg .axis{font-size:12.5px;fill:#3b4656}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;margin-top:8px;font-size:12.5px;color:#3b4656}
.sw{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:6px;vertical-align:-1px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600;font-size:12px}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap;width:1%}
td.id{word-break:break-all}
.empty{color:var(--muted);padding:24px 0;text-align:center}
footer{color:var(--muted);font-size:12px;margin-top:24px}
"""


def render_html(report: Report, *, title: str = "batchscribe report", generated: str = "") -> str:
    """The report as one self-contained HTML page (build the report with ``charts=True``)."""
    # The durations sorted once for both their summary and histogram, and dropped before the
    # timeline sorts its finish times (each a list of floats as long as the file).
    durations = sorted(report.durations)
    duration_card = _card(
        "Audio duration of transcribed items",
        _duration_summary(durations),
        _histogram(durations),
    )
    del durations
    statuses = [
        (f"HTTP {s}" if s != "none" else "no response", n, _status_colour(s))
        for s, n in report.failed_by_status.most_common()
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(", ".join(report.files))}'
        + (f" · generated {escape(generated)}" if generated else "")
        + "</p>",
        _tiles(report),
        _card(
            "Items finished over time, per run",
            "Cumulative items finished (ok or failed) since each run started.",
            _timeline_chart(report),
        ),
        '<div class="grid2 row">',
        _card("Outcomes and failure causes", "Final state of every item.", _outcome_bars(report)),
        _card(
            "Failures by HTTP status",
            "The last HTTP status of each failed item (none: no response).",
            _bars(statuses) if statuses else '<div class="empty">No failures.</div>',
        ),
        "</div>",
        duration_card,
        _card("Runs", "The latest runs recorded (newest last).", _runs_table(report)),
        '<div class="grid2 row">',
        _card(
            "Slowest items",
            "By the server's processing time.",
            _items_table(report.slowest, "processing"),
        ),
        _card("Most attempts", "Items that needed retries.", _items_table(report.most_attempts)),
        "</div>",
        _card("Most common errors", "Final failures, by message.", _errors_table(report)),
        f"<footer>batchscribe · {report.counts.unreadable:,} unreadable line(s) skipped · "
        f"{report.superseded:,} superseded record(s)</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _tiles(report: Report) -> str:
    """The row of headline figures at the top of the page."""
    share = f"{100 * report.ok / report.items:.1f}% of items" if report.items else "no items"
    causes = ", ".join(f"{k} {n:,}" for k, n in report.failed_by_cause.most_common(3))
    tiles = [
        ("Items", f"{report.items:,}", f"{report.counts.records:,} records read"),
        ("OK", f"{report.ok:,}", share),
        ("Failed", f"{report.failed:,}", causes or "none"),
        (
            "Audio transcribed",
            _hours(report.audio_seconds),
            f"over {report.ok:,} ok items",
        ),
        ("Retries spent", f"{report.retries:,}", "attempts beyond the first"),
        ("Runs", f"{len(report.runs):,}", _span(report)),
    ]
    return "\n".join([
        '<div class="tiles">',
        *(
            f'<div class="tile"><div class="k">{escape(k)}</div><div class="v">{escape(v)}</div>'
            f'<div class="d">{escape(d)}</div></div>'
            for k, v, d in tiles
        ),
        "</div>",
    ])  # fmt: skip


def _outcome_bars(report: Report) -> str:
    """Bars of the final states: ok, submitted, and failed by cause."""
    outcomes = [("ok", report.ok, _OK)]
    if report.submitted:
        outcomes.append(("submitted (webhook)", report.submitted, _SUBMITTED))
    outcomes += [
        (f"failed: {cause}", n, _CAUSE_COLOURS.get(cause, "#e15759"))
        for cause, n in report.failed_by_cause.most_common()
    ]
    return _bars(outcomes)


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:,.0f} h" if hours >= 100 else f"{hours:,.2f} h"


def _status_colour(status: str) -> str:
    """Failure colours by kind: server errors red, rate limits orange, no response grey."""
    if status == "none":
        return _CAUSE_COLOURS["missing"]
    if status == "429":
        return _CAUSE_COLOURS["429"]
    return _CAUSE_COLOURS["5xx"] if status.startswith("5") else _CAUSE_COLOURS["4xx"]


def _card(title: str, subtitle: str, body: str) -> str:
    return (
        f'<section class="card"><h2>{escape(title)}</h2><p class="sub">{escape(subtitle)}</p>'
        f"{body}</section>"
    )


def _span(report: Report) -> str:
    if not report.first_finished or not report.last_finished:
        return ""
    first, last = report.first_finished[:10], report.last_finished[:10]
    return first if first == last else f"{first} to {last}"


def _nice_step(span: float, count: int) -> float:
    raw = max(span, 1e-9) / max(count, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)


def _ticks(top: float, count: int = 5, *, whole: bool = False) -> list[float]:
    """Evenly spaced round ticks from 0 covering ``top``."""
    step = _nice_step(top, count)
    if whole:
        step = max(1.0, math.ceil(step))
    n = max(1, math.ceil(top / step - 1e-9))
    return [i * step for i in range(n + 1)]


def _fmt_tick(value: float) -> str:
    if value >= 1000 and value == int(value):
        return f"{int(value):,}"
    return f"{value:g}"


def _axes(
    h: int, box: tuple[int, int, int, int], xs: list[float], ys: list[float],
    x_title: str, y_title: str, *, x_labels: list[str] | None = None, x_grid: bool = False,
) -> tuple[list[str], Any, Any]:  # fmt: skip
    """Gridlines, tick labels and axis titles; returns the parts and x/y scale functions.

    ``ys`` empty: no horizontal gridlines (bar charts); ``x_grid``: vertical gridlines.
    """
    left, top, right, bottom = box
    x_max = xs[-1] or 1.0
    y_max = (ys[-1] if ys else 1.0) or 1.0

    def sx(v: float) -> float:
        return left + (right - left) * v / x_max

    def sy(v: float) -> float:
        return bottom - (bottom - top) * v / y_max

    out = []
    for y in ys:
        out.append(
            f'<line x1="{left}" x2="{right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            f'stroke="{"#c3c9d2" if y == 0 else "#eceef2"}"/>'
            f'<text x="{left - 8}" y="{sy(y) + 4:.1f}" text-anchor="end">{_fmt_tick(y)}</text>'
        )
    labels = x_labels or [_fmt_tick(x) for x in xs]
    for x, label in zip(xs, labels, strict=True):
        if x_grid:
            out.append(
                f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{bottom}" '
                f'stroke="{"#c3c9d2" if x == 0 else "#eceef2"}"/>'
            )
        out.append(
            f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{bottom}" y2="{bottom + 5}" '
            'stroke="#c3c9d2"/>'
            f'<text x="{sx(x):.1f}" y="{bottom + 19}" text-anchor="middle">{label}</text>'
        )
    out.append(
        f'<text class="axis" x="{(left + right) / 2:.0f}" y="{h - 6}" text-anchor="middle">'
        f"{escape(x_title)}</text>"
    )
    if y_title:
        out.append(
            f'<text class="axis" transform="translate(16 {(top + bottom) / 2:.0f}) rotate(-90)" '
            f'text-anchor="middle">{escape(y_title)}</text>'
        )
    return out, sx, sy


def _left_margin(ys: list[float]) -> int:
    """Room for the widest y tick label (about 7 px a character) and the y axis title."""
    return 40 + 7 * max(len(_fmt_tick(y)) for y in ys)


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds <= 180:
        return 1.0, "s"
    if seconds <= 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _timeline_chart(report: Report) -> str:
    if not report.timeline:
        return '<div class="empty">No finish times recorded.</div>'
    starts = {str(run.get("run_id")): epoch(run.get("started_at")) for run in report.runs}
    series: list[tuple[str, float, list[float]]] = []  # (run id, start, sorted finish times)
    for run_id, times in report.timeline.items():
        ordered = sorted(times)
        start = starts.get(run_id)
        if start is None or start > ordered[0]:
            start = ordered[0]
        series.append((run_id, start, ordered))
    series.sort(key=lambda s: s[1])
    hidden = max(0, len(series) - _MAX_RUN_LINES)
    series = series[hidden:]
    longest = max(times[-1] - start for _, start, times in series) or 1.0
    scale, unit = _time_unit(longest)
    w, h = 1040, 330
    box = (64, 14, w - 20, h - 50)
    xs = _ticks(longest / scale, 8)
    ys = _ticks(max(len(times) for _, _, times in series), 5, whole=True)
    box = (_left_margin(ys), *box[1:])
    out, sx, sy = _axes(h, box, xs, ys, f"time since the run started ({unit})", "items finished")
    legend = []
    buckets = 200
    for i, (run_id, start, finished) in enumerate(series):
        colour = _PALETTE[i % len(_PALETTE)]
        span = finished[-1] - start
        points = [(0.0, 0)]
        for b in range(1, buckets + 1):
            t = start + span * b / buckets
            points.append(((t - start) / scale, bisect_right(finished, t)))
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2.5" '
            'stroke-linejoin="round" stroke-linecap="round"/>'
        )
        x_end, y_end = points[-1]
        out.append(f'<circle cx="{sx(x_end):.1f}" cy="{sy(y_end):.1f}" r="3.5" fill="{colour}"/>')
        when = datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        legend.append(
            f'<span><span class="sw" style="background:{colour}"></span>run '
            f"{escape(run_id[:12])} · {escape(when)} · {len(finished):,} items</span>"
        )
    if hidden:
        legend.append(f"<span>(the latest {len(series)} of {len(series) + hidden} runs)</span>")
    return (
        f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="items finished over time per run">'
        + "".join(out)
        + f'</svg><div class="legend">{"".join(legend)}</div>'
    )


def _bars(rows: list[tuple[str, int, str]]) -> str:
    rows = [row for row in rows if row[1] > 0]
    if not rows:
        return '<div class="empty">No items.</div>'
    w, row_h = 500, 30
    h = 16 + row_h * len(rows) + 46
    box = (150, 10, w - 60, 10 + row_h * len(rows))
    xs = _ticks(max(n for _, n, _ in rows), 4, whole=True)
    out, sx, _ = _axes(h, box, xs, [], "items", "", x_grid=True)
    for i, (label, n, colour) in enumerate(rows):
        y = box[1] + i * row_h + 5
        width = max(1.5, sx(n) - box[0])
        out.append(
            f'<text x="{box[0] - 8}" y="{y + 15}" text-anchor="end" class="axis">'
            f"{escape(label)}</text>"
            f'<rect x="{box[0]}" y="{y}" width="{width:.1f}" height="{row_h - 10}" rx="3" '
            f'fill="{colour}"/>'
            f'<text x="{box[0] + width + 6:.1f}" y="{y + 15}">{n:,}</text>'
        )
    return f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="bar chart">{"".join(out)}</svg>'


def _quantile(ordered: Sequence[float], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def _duration_summary(ordered: Sequence[float]) -> str:
    """The summary of the durations (sorted)."""
    if not ordered:
        return "No ok items with a duration."
    return (
        f"{len(ordered):,} ok items · median {show_seconds(_quantile(ordered, 0.5))} · "
        f"90th percentile {show_seconds(_quantile(ordered, 0.9))} · "
        f"longest {show_seconds(ordered[-1])}"
    )


def _histogram(ordered: Sequence[float]) -> str:
    """The histogram of the durations (sorted)."""
    if not ordered:
        return '<div class="empty">No ok items with a duration.</div>'
    p99 = _quantile(ordered, 0.99)
    longest = ordered[-1]
    cap = longest if longest <= 2 * p99 or p99 <= 0 else p99  # a long tail goes in the last bin
    scale, unit = _time_unit(cap)
    top = max(cap / scale, 1e-3)
    step = _nice_step(top, 24)
    bins = max(1, math.ceil(top / step - 1e-9))
    if bins * step <= top:
        bins += 1
    counts = _bin_counts(ordered, bins, scale, step)
    overflow = longest > bins * step * scale
    w, h = 1040, 300
    box = (64, 14, w - 20, h - 50)
    xs = [i * step for i in range(bins + 1)]
    stride = max(1, math.ceil(len(xs) / 12))
    labels = [(_fmt_tick(round(x, 6)) if i % stride == 0 else "") for i, x in enumerate(xs)]
    if overflow:
        labels[-1] = "+"
    ys = _ticks(max(counts), 5, whole=True)
    box = (_left_margin(ys), *box[1:])
    x_title = f"audio duration ({unit})" + (", last bin: everything longer" if overflow else "")
    out, sx, sy = _axes(h, box, xs, ys, x_title, "items", x_labels=labels)
    for i, n in enumerate(counts):
        if not n:
            continue
        x0, x1 = sx(xs[i]) + 1, sx(xs[i + 1]) - 1
        out.append(
            f'<rect x="{x0:.1f}" y="{sy(n):.1f}" width="{max(1.0, x1 - x0):.1f}" '
            f'height="{sy(0) - sy(n):.1f}" rx="2" fill="{_PALETTE[0]}">'
            f"<title>{_fmt_tick(round(xs[i], 6))}–{_fmt_tick(round(xs[i + 1], 6))} {unit}: "
            f"{n:,} items</title></rect>"
        )
    label = 'role="img" aria-label="duration histogram"'
    return f'<svg viewBox="0 0 {w} {h}" {label}>{"".join(out)}</svg>'


def _bin_counts(ordered: Sequence[float], bins: int, scale: float, step: float) -> list[int]:
    """How many of the (sorted) values fall in each bin; the last bin takes the rest.

    The same counts as ``counts[min(bins - 1, int(value / scale / step))] += 1`` for each
    value (a negative one in the first), but taken a run of values at a time: the bin grows
    with the value, so a binary search finds where each run ends.
    """
    counts = [0] * bins

    def bin_of(value: float) -> int:  # may be past the last bin; a negative value: the first
        return max(0, int(value / scale / step))

    i = 0
    while i < len(ordered):
        b = bin_of(ordered[i])
        j = len(ordered) if b >= bins - 1 else bisect_right(ordered, b, lo=i, key=bin_of)
        counts[min(bins - 1, b)] += j - i
        i = j
    return counts


def _table(head: list[tuple[str, bool]], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<div class="empty">{escape(empty)}</div>'
    cells = "".join(
        f'<th class="n">{escape(h)}</th>' if n else f"<th>{escape(h)}</th>" for h, n in head
    )
    body = []
    for row in rows:
        tds = []
        for (_, numeric), cell in zip(head, row, strict=True):
            cls = ' class="n"' if numeric else (' class="id"' if cell and len(cell) > 24 else "")
            tds.append(f"<td{cls}>{escape(cell)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _runs_table(report: Report) -> str:
    runs = report.runs[-20:]
    rows = [
        [
            show_text(run.get("run_id"))[:12], show_text(run.get("started_at")),
            show_seconds(run.get("wall_seconds")), show_int(run.get("ok")),
            show_int(run.get("failed")),
            show_int(run.get("retries")), show_float(run.get("items_per_second")),
            "interrupted" if run.get("interrupted") else ("aborted" if run.get("aborted") else ""),
        ]
        for run in runs
    ]  # fmt: skip
    head = [("run", False), ("started", False), ("wall", True), ("ok", True), ("failed", True),
            ("retries", True), ("items/s", True), ("", False)]  # fmt: skip
    return _table(head, rows, "No run records.")


def _items_table(entries: list[dict[str, Any]], kind: str = "attempts") -> str:
    rows = []
    for e in entries:
        status = e["status"] + (f" ({e['cause']})" if e["cause"] else "")
        processing = e["processing_time_ms"]
        time = show_ms(processing)
        rows.append([e["id"], status, str(e["attempts"]), time, show_seconds(e["duration"])])
    head = [("item", False), ("state", False), ("attempts", True), ("processing", True),
            ("audio", True)]  # fmt: skip
    return _table(head, rows, "None." if kind == "attempts" else "No processing times.")


def _errors_table(report: Report) -> str:
    rows = [[f"{n:,}", error] for error, n in report.errors.most_common(report.top)]
    return _table([("items", True), ("error", False)], rows, "No failures.")
