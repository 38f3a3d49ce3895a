"""Prometheus metrics of a run: a textfile for node_exporter, a push to a Pushgateway.

``--metrics-file PATH`` is for cron and systemd timers (node_exporter's textfile collector is
the standard way a short job exposes metrics); ``--metrics-push URL`` for batch jobs on
Kubernetes (the Pushgateway). Both come from one :class:`Snapshot` of the run, taken on the
event loop (cheap: a copy of the summary) and written or pushed from a thread (blocking I/O).

The metrics are counts of this run, built fresh from each snapshot by a collector of our own,
not prometheus-client's process-global metrics: a run inside a library user's process must not
add series to their registry, and two runs in one process must not share counters.

Names (prefix ``batchscribe_``; ``job`` and ``shard`` labels on every series of the file, and in
the Pushgateway's grouping key for a push):

- ``items_total{status}``: ok, failed, submitted, skipped_ok, skipped_failed, invalid
- ``items_failed_total{cause}``; ``requests_total{code}`` (when the run counts them)
- ``retries_total``, ``throttled_total`` (requests answered 429), ``audio_seconds_total``,
  ``uploaded_bytes_total`` (when counted), ``cost`` (with a spend cap)
- ``items_expected`` (when the sources are all read), ``in_flight``, ``concurrency_limit``,
  ``learned_rate_per_second`` (once learned), ``last_success_timestamp_seconds``,
  ``elapsed_seconds``, ``finished`` (0/1) and ``exit_code`` (at the end)
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from batchscribe.atomicfile import replace_file
from batchscribe.events import Summary
from batchscribe.pulse import url_secrets

__all__ = ["PREFIX", "Snapshot", "build_registry", "push", "render", "write_textfile"]

PREFIX = "batchscribe_"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The run at one moment: a copy of its summary and what the summary does not hold.

    ``requests_by_status`` (HTTP status code or ``transport`` -> requests), ``bytes_uploaded``
    and ``last_success`` (unix time of the last ok item) are None when the run does not count
    them: their series are then left out rather than shown as 0.
    """

    summary: Summary
    elapsed: float = 0.0
    in_flight: int = 0
    requests_by_status: Mapping[str, int] | None = None
    bytes_uploaded: int | None = None
    last_success: float | None = None
    cost: float | None = None
    finished: bool = False

    @classmethod
    def take(cls, summary: Summary, **extra: Any) -> Snapshot:
        """A snapshot of the live ``summary`` (copied: the run goes on changing it)."""
        copy = dataclasses.replace(summary, failed_by_cause=Counter(summary.failed_by_cause))
        if extra.get("requests_by_status") is not None:
            extra["requests_by_status"] = dict(extra["requests_by_status"])
        return cls(copy, **extra)


class _RunCollector(Collector):
    """Yields the metric families of one snapshot, each series with the given labels."""

    def __init__(self, snapshot: Snapshot, labels: Mapping[str, str]) -> None:
        self._snapshot = snapshot
        self._names = list(labels)
        self._values = list(labels.values())

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + name, doc, labels=self._names)
        family.add_metric(self._values, value)
        return family

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(PREFIX + name, doc, labels=self._names)
        family.add_metric(self._values, value)
        return family

    def _by(self, name: str, doc: str, label: str, counts: Mapping[str, int]) -> Metric:
        family = CounterMetricFamily(PREFIX + name, doc, labels=[*self._names, label])
        for key, value in sorted(counts.items()):
            family.add_metric([*self._values, str(key)], value)
        return family

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot
        s = snap.summary
        statuses = {
            "ok": s.ok, "failed": s.failed, "submitted": s.submitted,
            "skipped_ok": s.skipped_ok, "skipped_failed": s.skipped_failed,
            "invalid": s.invalid_lines,
        }  # fmt: skip
        yield self._by("items", "Items of this run by final status.", "status", statuses)
        yield self._by("items_failed", "Failed items by cause.", "cause", s.failed_by_cause)
        if snap.requests_by_status is not None:
            yield self._by(
                "requests", "Requests by HTTP status (transport: no answer).", "code",
                snap.requests_by_status,
            )  # fmt: skip
        yield self._counter("retries", "Attempts retried.", s.retries)
        yield self._counter("throttled", "Requests answered 429.", s.throttled)
        yield self._counter("audio_seconds", "Audio transcribed (seconds).", s.audio_seconds)
        if snap.bytes_uploaded is not None:
            yield self._counter("uploaded_bytes", "Request bytes uploaded.", snap.bytes_uploaded)
        if snap.cost is not None:
            yield self._gauge("cost", "Spend so far at the price per audio hour.", snap.cost)
        if s.total is not None:
            yield self._gauge("items_expected", "Items in the sources (all read).", s.total)
        yield self._gauge("in_flight", "Requests in flight.", snap.in_flight)
        yield self._gauge("concurrency_limit", "The in-flight limit.", s.concurrency)
        if s.learned_rate is not None:
            yield self._gauge(
                "learned_rate_per_second", "The rate limit learnt from 429s.", s.learned_rate
            )
        if snap.last_success is not None:
            yield self._gauge(
                "last_success_timestamp_seconds", "Unix time of the last ok item.",
                snap.last_success,
            )  # fmt: skip
        yield self._gauge("elapsed_seconds", "Wall time of the run so far.", snap.elapsed)
        yield self._gauge("finished", "1 once the run has ended.", int(snap.finished))
        if snap.finished:
            yield self._gauge("exit_code", "The run's exit code.", s.exit_code)


def _labels(job: str, shard: str) -> dict[str, str]:
    return {"job": job, "shard": shard or "all"}


def build_registry(
    snapshot: Snapshot, labels: Mapping[str, str] | None = None
) -> CollectorRegistry:
    """A registry holding only this snapshot's metrics, each series with ``labels``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RunCollector(snapshot, labels or {}))
    return registry


def render(snapshot: Snapshot, job: str, shard: str = "") -> bytes:
    """The Prometheus text format of ``snapshot``, labelled ``job`` and ``shard`` (``K/N``;
    empty: ``all``)."""
    return generate_latest(build_registry(snapshot, _labels(job, shard)))


def write_textfile(path: str, snapshot: Snapshot, job: str, shard: str = "") -> None:
    """Write the metrics to ``path`` for node_exporter's textfile collector (name it
    ``*.prom``). Atomic and durable: a reader or a crash never sees half a file (not
    prometheus-client's ``write_to_textfile``, which neither fsyncs nor hides its temporary
    file from the collector's ``*.prom`` glob). Blocking: run it in a thread. Raises OSError.
    """
    replace_file(path, render(snapshot, job, shard))


def push(
    url: str, snapshot: Snapshot, job: str, shard: str = "", *, timeout: float = 10.0
) -> str | None:
    """Push the metrics to the Pushgateway at ``url`` (grouping key: ``job``, and ``shard``
    when given); a ``user:password@`` in the URL is sent as basic auth. Returns None, or a
    warning naming the gateway by its scheme only (the URL may carry a token). Blocking: run
    it in a thread. Replaces what this job and shard pushed before (PUT).
    """
    from prometheus_client.exposition import (
        basic_auth_handler,
        default_handler,
        push_to_gateway,
    )

    parts = urlsplit(url)
    secrets = [s for s in (parts.password, *url_secrets(url)) if s]
    # user:password@ goes into a basic-auth header (urllib would take it for a host name)
    gateway = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    handler: Any = default_handler
    if parts.username is not None:
        user, password = parts.username, parts.password or ""

        def handler(
            url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
            data: bytes,
        ) -> Any:  # fmt: skip
            return basic_auth_handler(url, method, timeout, headers, data, user, password)

    grouping = {"shard": shard} if shard else None
    try:
        push_to_gateway(
            gateway, job=job, registry=build_registry(snapshot), grouping_key=grouping,
            timeout=timeout, handler=handler,
        )  # fmt: skip
    except Exception as exc:  # any failure is a warning: metrics never fail a run
        reason = str(exc) or type(exc).__name__
        for secret in secrets:
            reason = reason.replace(secret, "***")
        if url in reason:
            reason = reason.replace(url, "***")
        return f"metrics push to the Pushgateway ({parts.scheme or 'http'}://) failed: {reason}"
    return None
