"""Reading results files for people: the report, its HTML page, the failed list.

- :mod:`~batchscribe.report.tally`: :func:`build_report`, the totals over the final state of
  every id (text lines, the ``--json`` document);
- :mod:`~batchscribe.report.html`: :func:`render_html`, the self-contained page with charts;
- :mod:`~batchscribe.report.failed`: :func:`failed_items`, the failed items as a manifest
  ``batchscribe run`` accepts, and :func:`write_lines` to write it;
- :mod:`~batchscribe.report.text`: values as people read them (ids, times, counts).
"""

from __future__ import annotations

from batchscribe.report.failed import CAUSES, failed_items, parse_causes, write_lines
from batchscribe.report.html import render_html
from batchscribe.report.tally import Report, build_report, epoch, epochs
from batchscribe.report.text import display_id

#: The name of :func:`failed_items` before the report became a package.
failed_manifest = failed_items

__all__ = [
    "CAUSES",
    "Report",
    "build_report",
    "display_id",
    "epoch",
    "epochs",
    "failed_items",
    "failed_manifest",
    "parse_causes",
    "render_html",
    "write_lines",
]
