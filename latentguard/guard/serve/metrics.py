"""The service's Prometheus metrics, kept in one ``prometheus_client`` registry per app.

Every app owns a :class:`ServeMetrics`: its own :class:`prometheus_client.CollectorRegistry` (never the
library's global default registry), so two apps in one process count separately. ``GET /metrics``
renders it with :func:`prometheus_client.generate_latest` (text format 0.0.4) and leaves out the
library's ``*_created`` series, so the exposed metric names are exactly these:

* ``latentguard_http_requests_total{endpoint,code}`` (counter)
* ``latentguard_http_request_duration_seconds{endpoint}`` (summary with quantiles 0.5, 0.9, 0.99)
* ``latentguard_prompts_classified_total{op}``, ``latentguard_prompts_harmful_total{op}``,
  ``latentguard_backend_errors_total{op}`` (counters; ``op`` is ``classify`` or ``generate``)
* ``latentguard_generations_blocked_total{policy}`` (counter)
* ``latentguard_request_errors_total{kind}`` (counter; ``timeout``, ``unavailable``, ``internal``)
* ``latentguard_classify_batch_size`` (histogram, power-of-two buckets up to the largest batch)
* ``latentguard_backend_call_duration_seconds{op}`` (summary with quantiles)

``prometheus_client``'s own summaries have no quantiles, so :class:`WindowedSummary` is a small
collector computing them over a sliding window of recent observations.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from latentguard.guard.types import GuardedReply, Policy, Verdict

__all__ = [
    "CONTENT_TYPE",
    "ENDPOINTS",
    "ServeMetrics",
    "WindowedSummary",
    "endpoint_label",
]

#: Content type of ``GET /metrics`` (what :func:`prometheus_client.generate_latest` writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Paths counted under their own ``endpoint`` label; every other path is counted as ``other``.
ENDPOINTS = (
    "/v1/classify",
    "/v1/generate",
    "/v1/models",
    "/beta/litellm_basic_guardrail_api",
    "/analyze/prompt",
    "/scan/prompt",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
)
_ERROR_KINDS = ("timeout", "unavailable", "internal")
_OPS = ("classify", "generate")
_QUANTILES = (0.5, 0.9, 0.99)
_WINDOW = 1024


def endpoint_label(path: str) -> str:
    """The ``endpoint`` label of a request path.

    Args:
        path: The request path.

    Returns:
        ``path`` if it is one of :data:`ENDPOINTS`, else ``"other"``.
    """
    return path if path in ENDPOINTS else "other"


class WindowedSummary:
    """A summary collector: count, sum and quantiles over the last ``window`` observations per series.

    It registers itself in ``registry`` like ``prometheus_client``'s own metrics and renders as one
    ``summary`` family: ``name{...,quantile="q"}`` per quantile, then ``name_sum`` and ``name_count``.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        quantiles: Sequence[float] = _QUANTILES,
        window: int = _WINDOW,
    ) -> None:
        """Create the summary and register it.

        Args:
            name: Metric name.
            documentation: One-line description (the ``# HELP`` text).
            labelnames: Label names.
            registry: The registry to join.
            quantiles: Quantiles to report, each in ``[0, 1]``.
            window: Recent observations per series the quantiles are computed from.
        """
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.quantiles = tuple(quantiles)
        self._window = window
        self._lock = threading.Lock()
        self._recent: dict[tuple[str, ...], collections.deque[float]] = {}
        self._counts: dict[tuple[str, ...], int] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation.

        Args:
            value: The observed value.
            **labels: One value per label name.

        Raises:
            ValueError: If the label names differ from the summary's.
        """
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} expects labels {self.labelnames}, got {tuple(labels)}")
        key = tuple(str(labels[n]) for n in self.labelnames)
        with self._lock:
            self._recent.setdefault(key, collections.deque(maxlen=self._window)).append(value)
            self._counts[key] = self._counts.get(key, 0) + 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def describe(self) -> Iterable[Metric]:
        """The family without samples (lets the registry check for duplicate names)."""
        return [Metric(self.name, self.documentation, "summary")]

    def collect(self) -> Iterable[Metric]:
        """The family with its current samples."""
        family = Metric(self.name, self.documentation, "summary")
        with self._lock:
            for key in sorted(self._counts):
                labels = dict(zip(self.labelnames, key, strict=True))
                recent = sorted(self._recent[key])
                for q in self.quantiles:
                    idx = min(len(recent) - 1, max(0, math.ceil(q * len(recent)) - 1))
                    family.add_sample(self.name, {**labels, "quantile": repr(float(q))}, recent[idx])
                family.add_sample(f"{self.name}_sum", labels, self._sums[key])
                family.add_sample(f"{self.name}_count", labels, float(self._counts[key]))
        return [family]


class _WithoutCreated:
    """A view of a registry without the ``*_created`` series ``prometheus_client`` adds to counters."""

    def __init__(self, registry: Collector) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = [s for s in family.samples if s.name != f"{family.name}_created"]
            yield kept


def _batch_buckets(batch_max_size: int) -> list[float]:
    """Powers of two from 1 up to the first one >= ``batch_max_size``."""
    buckets: list[float] = [1.0]
    while buckets[-1] < batch_max_size:
        buckets.append(buckets[-1] * 2)
    return buckets


class ServeMetrics:
    """The service's metrics, owned by one app.

    Attributes:
        registry: The app's own ``prometheus_client`` registry.
    """

    def __init__(self, batch_max_size: int) -> None:
        """Create the metrics in a new registry.

        Args:
            batch_max_size: Largest batch the batcher forms (sets the batch-size buckets).
        """
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "latentguard_http_requests_total",
            "HTTP requests by endpoint and status code.",
            ("endpoint", "code"),
            registry=r,
        )
        self._latency = WindowedSummary(
            "latentguard_http_request_duration_seconds", "HTTP request latency in seconds.", ("endpoint",), r
        )
        self._prompts = Counter(
            "latentguard_prompts_classified_total",
            "Prompts the guard classified successfully, by operation.",
            ("op",),
            registry=r,
        )
        self._harmful = Counter(
            "latentguard_prompts_harmful_total",
            "Prompts the guard judged harmful, by operation.",
            ("op",),
            registry=r,
        )
        self._blocked = Counter(
            "latentguard_generations_blocked_total",
            "Generations withheld, by policy.",
            ("policy",),
            registry=r,
        )
        self._backend_errors = Counter(
            "latentguard_backend_errors_total",
            "Prompts that failed closed because the backend raised or returned an invalid result.",
            ("op",),
            registry=r,
        )
        self._errors = Counter(
            "latentguard_request_errors_total",
            "Requests that could not be served, by kind.",
            ("kind",),
            registry=r,
        )
        self._batch_size = Histogram(
            "latentguard_classify_batch_size",
            "Prompts per backend classify batch.",
            buckets=_batch_buckets(batch_max_size),
            registry=r,
        )
        self._backend_seconds = WindowedSummary(
            "latentguard_backend_call_duration_seconds", "Duration of backend calls in seconds.", ("op",), r
        )
        for op in _OPS:  # make these series visible at 0
            self._prompts.labels(op=op)
            self._harmful.labels(op=op)
            self._backend_errors.labels(op=op)
        for kind in _ERROR_KINDS:
            self._errors.labels(kind=kind)

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        """Count one HTTP request and record its latency.

        Args:
            endpoint: The ``endpoint`` label (see :func:`endpoint_label`).
            code: The response status code.
            seconds: How long the request took.
        """
        self._requests.labels(endpoint=endpoint, code=str(code)).inc()
        self._latency.observe(seconds, endpoint=endpoint)

    def observe_results(self, op: str, results: Sequence[Verdict] | Sequence[GuardedReply]) -> None:
        """Count a request's prompts: classified, judged harmful, and failed closed.

        Args:
            op: ``"classify"`` or ``"generate"``.
            results: One result per prompt; those with an ``error`` failed closed.
        """
        failed = sum(r.error is not None for r in results)
        self._prompts.labels(op=op).inc(len(results) - failed)
        self._harmful.labels(op=op).inc(sum(r.harmful and r.error is None for r in results))
        self._backend_errors.labels(op=op).inc(failed)

    def observe_blocked(self, policy: Policy, count: int) -> None:
        """Count generations withheld under ``policy``.

        Args:
            policy: The request's policy.
            count: How many responses were withheld (0 makes the series visible).
        """
        self._blocked.labels(policy=policy.value).inc(count)

    def count_error(self, kind: str) -> None:
        """Count a request that could not be served.

        Args:
            kind: ``"timeout"``, ``"unavailable"`` or ``"internal"``.
        """
        self._errors.labels(kind=kind).inc()

    def observe_batch(self, size: int) -> None:
        """Record the size of one backend classify batch.

        Args:
            size: Prompts in the batch.
        """
        self._batch_size.observe(size)

    def observe_backend_call(self, op: str, seconds: float) -> None:
        """Record the duration of one backend call.

        Args:
            op: ``"classify"`` or ``"generate"``.
            seconds: How long the call took.
        """
        self._backend_seconds.observe(seconds, op=op)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format 0.0.4 (served with :data:`CONTENT_TYPE`).

        Returns:
            The UTF-8 exposition text.
        """
        return generate_latest(_WithoutCreated(self.registry))  # type: ignore[arg-type]
