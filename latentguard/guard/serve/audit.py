"""Recording the server's decisions in the audit log (``latentguard serve --audit-db URL``).

Wiring a route takes one call, made after the route has its verdicts and before it answers::

    from latentguard.guard.serve import audit

    verdicts = await classify(prompts)
    await audit.record(request, route="/v1/classify", decisions=audit.from_verdicts(prompts, verdicts))

(the route takes ``request: fastapi.Request``). Each :class:`Decision` carries the prompt (stored as its
SHA-256, and as text only with ``--audit-store-text``), the score, the verdict, the action (``allow``,
``flag`` or ``block``), the policy and any error; the threshold defaults to the guard's.
:func:`from_verdicts` and :func:`from_replies` build them from classify verdicts and guarded replies.
:func:`record` adds the request id (the response's ``X-Request-ID`` header, set by the middleware;
:func:`request_id` gives it, e.g. as the ``id`` of an OpenAI-format response), the time, the route, the
client's token hash, the guard id, the model fingerprint and the latency. Without ``--audit-db`` it
does nothing.

A 200 means it is on record: :func:`record` returns once the rows are committed (group commits,
:class:`~latentguard.audit.writer.GroupCommitWriter`). When the database fails, ``--audit-failure
closed`` (the default) raises a 503 :class:`~latentguard.guard.serve.errors.ApiError`; ``open`` logs the
lost decisions and lets the route answer. Both are counted in ``/metrics``:
``latentguard_audit_failures_total{mode}``, next to ``latentguard_audit_rows_total`` and
``latentguard_audit_commit_duration_seconds``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import fastapi
from prometheus_client import CollectorRegistry, Counter

from latentguard.audit.store import AuditRow, AuditStore, clean_text, open_store, prompt_sha256
from latentguard.audit.writer import AuditWriteError, GroupCommitWriter
from latentguard.conversation import Prompt, prompt_key
from latentguard.guard.serve.backend import GuardBackend
from latentguard.guard.serve.config import ServeConfig
from latentguard.guard.serve.errors import ApiError
from latentguard.guard.serve.metrics import ServeMetrics, WindowedSummary
from latentguard.guard.types import GuardedReply, Verdict

logger = logging.getLogger(__name__)

__all__ = [
    "ACTIONS",
    "Auditor",
    "Decision",
    "from_replies",
    "from_verdicts",
    "record",
    "request_id",
]

#: What the server did with a prompt.
ACTIONS = ("allow", "flag", "block")


@dataclass(frozen=True, kw_only=True)
class Decision:
    """One decision a route answers, as the route knows it.

    Attributes:
        prompt: The text the guard judged.
        score: The guard score.
        harmful: The verdict.
        action: ``allow``, ``flag`` or ``block``.
        policy: The generation policy, if any.
        threshold: The threshold applied (default: the guard's).
        error: Set when the guard failed and the decision failed closed.
    """

    prompt: str
    score: float | None
    harmful: bool
    action: str
    policy: str | None = None
    threshold: float | None = None
    error: str | None = None


def from_verdicts(
    prompts: Sequence[Prompt], verdicts: Sequence[Verdict], *, block: bool = False
) -> list[Decision]:
    """Decisions from classify verdicts: a harmful prompt is flagged (blocked with ``block``).

    Args:
        prompts: The prompts, in order (a conversation is recorded as its canonical JSON,
            :func:`latentguard.conversation.prompt_key`).
        verdicts: One verdict per prompt.
        block: Whether the route blocks harmful prompts (e.g. a guardrail that answers ``BLOCKED``).

    Returns:
        One decision per prompt.
    """
    harmful_action = "block" if block else "flag"
    return [
        Decision(
            prompt=p if isinstance(p, str) else prompt_key(p),
            score=v.score,
            harmful=v.harmful,
            action=harmful_action if v.harmful else "allow",
            error=v.error,
        )
        for p, v in zip(prompts, verdicts, strict=True)
    ]


def from_replies(prompts: Sequence[Prompt], replies: Sequence[GuardedReply], policy: str) -> list[Decision]:
    """Decisions from guarded generation.

    Args:
        prompts: The prompts, in order.
        replies: One reply per prompt.
        policy: The request's policy.

    Returns:
        One decision per prompt.
    """
    return [
        Decision(
            prompt=prompt_key(p),
            score=r.score,
            harmful=r.harmful,
            action="block" if r.blocked else "flag" if r.flagged or r.harmful else "allow",
            policy=str(policy),
            error=r.error,
        )
        for p, r in zip(prompts, replies, strict=True)
    ]


def request_id(request: fastapi.Request) -> str:
    """The request's id (its response's ``X-Request-ID``), made here if the middleware did not.

    Args:
        request: The request.

    Returns:
        32 hex digits.
    """
    rid = getattr(request.state, "request_id", None)
    if not isinstance(rid, str):
        import uuid

        rid = uuid.uuid4().hex
        request.state.request_id = rid
    return rid


def _client_hash(request: fastapi.Request) -> str | None:
    scheme, _, credentials = (request.headers.get("authorization") or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return hashlib.sha256(credentials.strip().encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class _Identity:
    guard_id: str | None
    fingerprint: str | None
    threshold: float | None


def _identity(backend: GuardBackend) -> _Identity:
    """The guard id (a hash of the guard's description), the model fingerprint and the threshold."""
    try:
        info = backend.info
    except Exception:
        logger.warning("Backend info is unavailable; the audit log records no guard id", exc_info=True)
        return _Identity(None, None, None)
    if not isinstance(info, dict):
        return _Identity(None, None, None)
    guard = info.get("guard") if isinstance(info.get("guard"), dict) else None
    threshold = _finite(info.get("threshold"))
    if threshold is None and guard is not None:
        threshold = _finite(guard.get("threshold"))
    guard_id = None
    if guard is not None:
        guard_id = (
            str(guard.get("id") or "")
            or hashlib.sha256(json.dumps(guard, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]
        )
    fingerprint = info.get("fingerprint")
    return _Identity(guard_id, str(fingerprint)[:128] if fingerprint else None, threshold)


class Auditor:
    """The audit log of one app: its store, its group-commit writer and its metrics.

    Attributes:
        enabled: Whether the server was started with an audit database.
    """

    def __init__(self, config: ServeConfig, metrics: ServeMetrics, backend: GuardBackend) -> None:
        """Create a stopped audit log (nothing is opened until :meth:`start`).

        Args:
            config: Service settings (``audit_db``, ``audit_store_text``, ``audit_failure``).
            metrics: The app's metrics; the audit series join its registry.
            backend: The guard backend (its ``info`` names the guard, the model and the threshold).
        """
        self.enabled = config.audit_db is not None
        self._config = config
        self._metrics = metrics
        self._backend = backend
        self._store: AuditStore | None = None
        self._writer: GroupCommitWriter | None = None
        self._identity = _Identity(None, None, None)
        # without an audit log its series stay out of /metrics
        registry = metrics.registry if self.enabled else CollectorRegistry()
        self._rows = Counter(
            "latentguard_audit_rows_total", "Decisions committed to the audit log.", registry=registry
        )
        self._failures = Counter(
            "latentguard_audit_failures_total",
            "Decisions the audit log failed to commit, by --audit-failure mode "
            "(closed: answered 503; open: answered, not on record).",
            ("mode",),
            registry=registry,
        )
        self._failures.labels(mode=config.audit_failure)
        self._commit_seconds = WindowedSummary(
            "latentguard_audit_commit_duration_seconds", "Duration of audit-log commits.", (), registry
        )

    @property
    def store(self) -> AuditStore | None:
        """The open store (``None`` before start or when disabled)."""
        return self._store

    @property
    def threshold(self) -> float | None:
        """The guard's threshold, if known."""
        return self._identity.threshold

    def _committed(self, rows: int, seconds: float) -> None:
        self._rows.inc(rows)
        self._commit_seconds.observe(seconds)

    async def start(self) -> None:
        """Open the database (create or migrate its schema) and start the writer.

        Raises:
            AuditStoreError: If the database is unreachable, unwritable, or has a newer schema.
        """
        if not self.enabled or self._config.audit_db is None:
            return
        self._identity = _identity(self._backend)
        self._store = await asyncio.to_thread(open_store, self._config.audit_db)
        self._writer = GroupCommitWriter(self._store, on_commit=self._committed)
        self._writer.start()
        logger.info(
            "Audit log: %s (prompt text %s, failure mode %s)",
            self._store.name,
            "stored" if self._config.audit_store_text else "hashed only",
            self._config.audit_failure,
        )

    async def stop(self) -> None:
        """Commit what is queued and close the database."""
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def _rows_for(
        self, request: fastapi.Request, route: str, decisions: Sequence[Decision]
    ) -> list[AuditRow]:
        rid = request_id(request)
        started = getattr(request.state, "started", None)
        latency_ms = (time.perf_counter() - started) * 1000.0 if isinstance(started, float) else None
        now = datetime.now(timezone.utc)
        client = _client_hash(request)
        store_text = self._config.audit_store_text
        return [
            AuditRow(
                request_id=rid,
                item=i,
                ts=now,
                route=route,
                client=client,
                prompt_sha256=prompt_sha256(d.prompt),
                prompt=clean_text(d.prompt) if store_text else None,
                score=_finite(d.score),
                threshold=d.threshold if d.threshold is not None else self._identity.threshold,
                harmful=bool(d.harmful),
                policy=d.policy,
                action=d.action,
                guard_id=self._identity.guard_id,
                model_fingerprint=self._identity.fingerprint,
                latency_ms=latency_ms,
                error=clean_text(d.error) if d.error is not None else None,
            )
            for i, d in enumerate(decisions)
        ]

    async def record(self, request: fastapi.Request, route: str, decisions: Sequence[Decision]) -> None:
        """Commit a request's decisions (see :func:`record`).

        Raises:
            ApiError: 503 when the commit fails and the failure mode is ``closed``.
        """
        if not self.enabled or not decisions:
            return
        rows = self._rows_for(request, route, decisions)
        try:
            if self._writer is None:
                raise AuditWriteError("the audit log is not running")
            await asyncio.wait_for(self._writer.write(rows), timeout=self._config.request_timeout_s)
        except (AuditWriteError, asyncio.TimeoutError) as exc:
            reason = str(exc) or "timed out"
            mode = self._config.audit_failure
            self._failures.labels(mode=mode).inc(len(rows))
            if mode == "closed":
                logger.error(
                    "Audit log write failed for request %s (%s); answering 503", rows[0].request_id, reason
                )
                raise ApiError(
                    503, "the audit log is unavailable, so the decision cannot be put on record; retry later"
                ) from exc
            logger.error(
                "Audit log write failed; %d decision(s) of request %s answered but NOT on record: %s",
                len(rows),
                rows[0].request_id,
                reason,
            )


async def record(request: fastapi.Request, *, route: str, decisions: Sequence[Decision]) -> str:
    """Put a request's decisions on record before the route answers (a no-op without ``--audit-db``).

    Args:
        request: The request (its app's :class:`Auditor` is ``request.app.state.audit``).
        route: The route, e.g. ``"/v1/classify"``.
        decisions: One per prompt judged, in request order.

    Returns:
        The request id.

    Raises:
        ApiError: 503 when the audit log fails and ``--audit-failure`` is ``closed``.
    """
    auditor = getattr(request.app.state, "audit", None)
    if isinstance(auditor, Auditor):
        await auditor.record(request, route, decisions)
    return request_id(request)
