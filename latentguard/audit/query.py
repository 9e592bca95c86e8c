"""Reading the audit log: filtered rows, summary statistics, the dashboard's series, and pruning.

All of it is SQLAlchemy Core against :data:`~latentguard.audit.schema.decisions`. Statistics are computed
in Python from the selected columns (streamed), so they are the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from latentguard.audit.schema import decisions
from latentguard.audit.store import AuditStore
from latentguard.audit.times import as_utc

__all__ = [
    "COLUMNS",
    "NEAR_MARGINS",
    "dashboard_data",
    "prune",
    "quantile",
    "select_rows",
    "stats",
]

#: Exported columns, in order.
COLUMNS: tuple[str, ...] = tuple(c.name for c in decisions.columns)
#: The margins ``stats`` counts near-threshold decisions within (``|score - threshold| <= margin``).
NEAR_MARGINS = (0.01, 0.05, 0.1)
_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_STREAM = 2000


def quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of sorted values (``None`` when empty).

    Args:
        sorted_values: Values in ascending order.
        q: The quantile, in ``[0, 1]``.

    Returns:
        The quantile.
    """
    if not sorted_values:
        return None
    idx = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return float(sorted_values[idx])


def _where(since: datetime | None, until: datetime | None, flagged: bool) -> list[sa.ColumnElement[bool]]:
    clauses: list[sa.ColumnElement[bool]] = []
    if since is not None:
        clauses.append(decisions.c.ts >= since)
    if until is not None:
        clauses.append(decisions.c.ts < until)
    if flagged:
        clauses.append(decisions.c.harmful.is_(True))
    return clauses


def _iso(value: datetime) -> str:
    return as_utc(value).isoformat(timespec="microseconds").replace("+00:00", "Z")


def select_rows(
    store: AuditStore,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    flagged: bool = False,
    limit: int | None = None,
    newest_first: bool = False,
) -> Iterator[dict[str, Any]]:
    """Stream recorded decisions, oldest first (times as ISO 8601 UTC strings).

    Args:
        store: The audit database.
        since: Only decisions at or after this time.
        until: Only decisions before this time.
        flagged: Only decisions judged harmful.
        limit: At most this many rows.
        newest_first: Newest first instead.

    Yields:
        One dict per decision, keyed by :data:`COLUMNS`.
    """
    order = (
        (decisions.c.ts.desc(), decisions.c.id.desc()) if newest_first else (decisions.c.ts, decisions.c.id)
    )
    query = sa.select(decisions).where(*_where(since, until, flagged)).order_by(*order)
    if limit is not None:
        query = query.limit(limit)
    with store.engine.connect() as conn:
        result = conn.execution_options(yield_per=_STREAM).execute(query)
        for row in result.mappings():
            out = dict(row)
            out["ts"] = _iso(out["ts"])
            yield out


def _bucket(ts: datetime, seconds: float) -> datetime:
    epoch = as_utc(ts).timestamp()
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=timezone.utc)


def _summary_columns(since: datetime | None) -> sa.Select[Any]:
    c = decisions.c
    return sa.select(c.ts, c.route, c.score, c.threshold, c.harmful, c.latency_ms, c.error).where(
        *_where(since, None, False)
    )


def stats(
    store: AuditStore, *, since: datetime | None = None, margins: Sequence[float] = NEAR_MARGINS
) -> dict[str, Any]:
    """Counts, flag rate per hour, score and latency quantiles and near-threshold counts.

    Args:
        store: The audit database.
        since: Only decisions at or after this time.
        margins: Near-threshold margins.

    Returns:
        A JSON-ready dict.
    """
    total = flagged = errors = 0
    routes: dict[str, int] = defaultdict(int)
    hours: dict[datetime, list[int]] = defaultdict(lambda: [0, 0])
    scores: list[float] = []
    latencies: list[float] = []
    near = dict.fromkeys(margins, 0)
    first = last = None
    with store.engine.connect() as conn:
        result = conn.execution_options(yield_per=_STREAM).execute(_summary_columns(since))
        for ts, route, score, threshold, harmful, latency, error in result:
            total += 1
            flagged += bool(harmful)
            errors += error is not None
            routes[route] += 1
            bucket = hours[_bucket(ts, 3600)]
            bucket[0] += 1
            bucket[1] += bool(harmful)
            first = ts if first is None or ts < first else first
            last = ts if last is None or ts > last else last
            if score is not None:
                scores.append(score)
                if threshold is not None and error is None:
                    for m in margins:
                        near[m] += abs(score - threshold) <= m
            if latency is not None:
                latencies.append(latency)
    scores.sort()
    latencies.sort()
    return {
        "decisions": total,
        "flagged": flagged,
        "errors": errors,
        "flag_rate": flagged / total if total else None,
        "first": _iso(first) if first is not None else None,
        "last": _iso(last) if last is not None else None,
        "by_route": dict(sorted(routes.items())),
        "per_hour": [
            {"hour": _iso(h), "decisions": n, "flagged": f, "flag_rate": f / n}
            for h, (n, f) in sorted(hours.items())
        ],
        "score_quantiles": {f"p{round(100 * q):02d}": quantile(scores, q) for q in _QUANTILES},
        "latency_ms_quantiles": {f"p{round(100 * q):02d}": quantile(latencies, q) for q in (0.5, 0.9, 0.99)},
        "near_threshold": {f"within_{m:g}": n for m, n in near.items()},
    }


def prune(store: AuditStore, older_than: timedelta, *, now: datetime | None = None) -> int:
    """Delete decisions older than ``older_than``.

    Args:
        store: The audit database.
        older_than: Age above which decisions are deleted.
        now: The current time (default: now).

    Returns:
        How many rows were deleted.
    """
    cutoff = (now or datetime.now(timezone.utc)) - older_than
    with store.engine.begin() as conn:
        result = conn.execute(decisions.delete().where(decisions.c.ts < cutoff))
    return int(result.rowcount or 0)


def _histogram(scores: list[float], threshold: float | None, bins: int) -> dict[str, Any]:
    values = [*scores, *([threshold] if threshold is not None else [])]
    if not values:
        return {"edges": [], "counts": []}
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    counts = [0] * bins
    for s in scores:
        counts[min(bins - 1, int((s - lo) / width))] += 1
    return {"edges": [lo + i * width for i in range(bins + 1)], "counts": counts}


def dashboard_data(
    store: AuditStore,
    *,
    hours: float = 1.0,
    bucket_s: float = 60.0,
    threshold: float | None = None,
    bins: int = 30,
    recent: int = 20,
    now: datetime | None = None,
) -> dict[str, Any]:
    """What ``GET /dashboard`` draws: flag rate and latency quantiles over time, the score histogram
    and the recent flagged decisions.

    Args:
        store: The audit database.
        hours: The window, ending now.
        bucket_s: Width of the time buckets, in seconds.
        threshold: The guard's threshold (default: the latest recorded one).
        bins: Histogram bins.
        recent: How many recent flagged decisions to list.
        now: The current time (default: now).

    Returns:
        A JSON-ready dict.
    """
    now = now or datetime.now(timezone.utc)
    since = now - timedelta(hours=hours)
    series: dict[datetime, dict[str, Any]] = defaultdict(lambda: {"n": 0, "flagged": 0, "lat": []})
    scores: list[float] = []
    latest_threshold: tuple[datetime, float] | None = None
    with store.engine.connect() as conn:
        result = conn.execution_options(yield_per=_STREAM).execute(_summary_columns(since))
        for ts, _route, score, row_threshold, harmful, latency, _error in result:
            bucket = series[_bucket(ts, bucket_s)]
            bucket["n"] += 1
            bucket["flagged"] += bool(harmful)
            if latency is not None:
                bucket["lat"].append(latency)
            if score is not None:
                scores.append(score)
            if row_threshold is not None and (latest_threshold is None or ts >= latest_threshold[0]):
                latest_threshold = (ts, row_threshold)
    if threshold is None and latest_threshold is not None:
        threshold = latest_threshold[1]
    buckets = []
    for start, bucket in sorted(series.items()):
        lat = sorted(bucket["lat"])
        buckets.append(
            {
                "start": _iso(start),
                "decisions": bucket["n"],
                "flagged": bucket["flagged"],
                "flag_rate": bucket["flagged"] / bucket["n"],
                "latency_ms": {f"p{round(100 * q)}": quantile(lat, q) for q in (0.5, 0.9, 0.99)},
            }
        )
    keep = ("ts", "route", "score", "threshold", "prompt_sha256", "prompt", "action", "request_id", "error")
    flagged_rows = [
        {k: r[k] for k in keep} for r in select_rows(store, flagged=True, limit=recent, newest_first=True)
    ]
    return {
        "now": _iso(now),
        "hours": hours,
        "bucket_s": bucket_s,
        "threshold": threshold,
        "decisions": sum(b["decisions"] for b in buckets),
        "flagged": sum(b["flagged"] for b in buckets),
        "buckets": buckets,
        "histogram": _histogram(scores, threshold, bins),
        "recent_flagged": flagged_rows,
    }
