"""What the emulator saw since start or the last reset: the test oracle behind
``GET /_emulator/stats`` (tests spy on the server instead of mocking the client)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Stats"]


class Stats:
    """What the emulator saw since start or the last reset."""

    def __init__(self, now: float) -> None:
        self.started = now
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.rate_limited = {"fault": 0, "rate_limit": 0, "concurrency": 0, "plan": 0}
        self.server_errors = 0
        self.resets = 0
        self.truncations = 0
        self.stalls = 0
        self.cancelled = 0
        self.early_retries = 0
        self.early_examples: list[dict[str, Any]] = []
        self.by_path = {"legacy": 0, "current": 0}  # both legacy paths count as legacy
        self.by_endpoint: dict[str, int] = {}  # path -> requests
        self.by_model: dict[str, int] = {}  # requests with valid parameters, by model asked
        self.by_language: dict[str, int] = {}  # ... and by language asked
        self.per_second: list[int] = []
        self.body_bytes = 0  # request body bytes read (what crossed the link)
        self.link_wait_s = 0.0  # seconds bodies waited for the link, summed over requests

    def arrive(self, now: float) -> None:
        self.requests += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        second = int(now - self.started)
        per_second = self.per_second
        if second >= len(per_second):
            per_second.extend([0] * (second + 1 - len(per_second)))
        per_second[second] += 1

    def answered(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def snapshot(self, now: float, by_content: Mapping[str, int]) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rate_limited": sum(self.rate_limited.values()),
            "rate_limited_by": dict(self.rate_limited),
            "server_errors": self.server_errors,
            "resets": self.resets,
            "truncations": self.truncations,
            "stalls": self.stalls,
            "cancelled": self.cancelled,
            "early_retries": self.early_retries,
            "early_retry_examples": list(self.early_examples),
            "by_content": dict(by_content),
            "by_path": dict(self.by_path),
            "by_endpoint": dict(self.by_endpoint),
            "by_model": dict(self.by_model),
            "by_language": dict(self.by_language),
            "requests_per_second": list(self.per_second),
            "body_bytes": self.body_bytes,
            "link_wait_s": round(self.link_wait_s, 3),
            "uptime_s": round(now - self.started, 3),
        }
