"""HTTP service for a Latent Guard.

This module serves any object that implements :class:`GuardBackend` over a small JSON API:

* ``POST /v1/classify``: is each prompt harmful, according to the model's own hidden states?
* ``POST /v1/generate``: generate a response for each prompt under a guard policy
  (``block``, ``flag`` or ``allow``).
* ``GET /healthz`` (liveness), ``GET /readyz`` (readiness plus backend info) and ``GET /metrics``
  (Prometheus text format).

Design notes:

* **Micro-batching.** Classify prompts from concurrent requests are queued in an asyncio batcher owned by
  the app. The batcher hands up to ``batch_max_size`` prompts at once to ``backend.classify``, waiting at
  most ``batch_max_wait_ms`` after the oldest queued prompt, and scatters the results back in order.
* **One backend thread.** Models are not assumed to be thread safe, so every backend call (classify
  batches and generation requests) runs in one single-thread executor and is therefore serialised.
* **Fail closed.** If the backend raises (or returns something malformed) a prompt is reported as harmful
  with score 1.0 and an ``error`` field; generation is blocked. When a batch of several prompts fails, the
  batch is retried in halves so that one poisoned prompt cannot make other clients' prompts fail.
* **Bad input never gets a 5xx.** Limits are enforced before the backend sees anything, every error is a
  JSON ``{"error": ...}`` body, and 503 is used only for timeouts and for a service that is not running.
* **Optional bearer token** for ``/v1/*`` and ``/metrics``; ``/healthz`` and ``/readyz`` stay open.
"""

import asyncio
import collections
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import fastapi
import uvicorn
from fastapi import Depends, FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

__all__ = [
    "ClassifyResult",
    "GenerateResult",
    "GuardBackend",
    "MetricsRegistry",
    "ServeConfig",
    "TokenFileError",
    "create_app",
    "read_token_file",
    "run",
]

#: Generation policies understood by ``POST /v1/generate``.
POLICIES: tuple[str, ...] = ("block", "flag", "allow")
#: Default ``max_new_tokens`` of ``POST /v1/generate`` (capped by ``ServeConfig.max_new_tokens_limit``).
DEFAULT_MAX_NEW_TOKENS = 128

Policy = Literal["block", "flag", "allow"]


# --------------------------------------------------------------------------------------------------------
# Protocol and configuration
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifyResult:
    """The guard's verdict on one prompt.

    Attributes:
        harmful: Whether the guard judges the prompt harmful.
        score: The guard's harmfulness score (higher is more harmful).
        layer_scores: Optional per-layer scores, keyed by layer index.
    """

    harmful: bool
    score: float
    layer_scores: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerateResult:
    """The outcome of guarded generation for one prompt.

    Attributes:
        harmful: Whether the guard judges the prompt harmful.
        score: The guard's harmfulness score.
        blocked: Whether the response was withheld.
        response: The generated response, or ``None`` when blocked.
        flagged: Whether the response is returned but flagged as harmful (``flag`` policy).
        repaired_response: An optional safe replacement response produced by the guard.
    """

    harmful: bool
    score: float
    blocked: bool
    response: str | None
    flagged: bool
    repaired_response: str | None = None


class GuardBackend(Protocol):
    """What the HTTP service needs from a Latent Guard.

    Calls are made from a single worker thread, one at a time, so implementations need not be thread
    safe. Both methods may raise; the service then fails closed.
    """

    def classify(self, prompts: list[str]) -> list[ClassifyResult]:
        """Classify a batch of prompts.

        Args:
            prompts: Non-empty list of prompts.

        Returns:
            One result per prompt, in the same order.
        """
        ...

    def generate(self, prompts: list[str], max_new_tokens: int, policy: str) -> list[GenerateResult]:
        """Generate guarded responses.

        Args:
            prompts: Non-empty list of prompts.
            max_new_tokens: Generation budget per prompt.
            policy: One of ``"block"``, ``"flag"``, ``"allow"``.

        Returns:
            One result per prompt, in the same order.
        """
        ...

    @property
    def info(self) -> dict[str, Any]:
        """Cheap, JSON-friendly description (model name, guard threshold, layers...) shown at /readyz."""
        ...


def _check_token(token: str) -> None:
    """Validate a bearer token's syntax.

    Args:
        token: The token.

    Raises:
        ValueError: If the token is empty or contains characters other than visible ASCII.
    """
    if not token:
        raise ValueError("the bearer token must not be empty")
    if not all(0x21 <= ord(ch) <= 0x7E for ch in token):
        raise ValueError("the bearer token must consist of visible ASCII characters (no spaces)")


@dataclass(frozen=True)
class ServeConfig:
    """Settings of the HTTP service.

    Raises:
        ValueError: On construction, if a setting is out of range.
    """

    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Interface to bind. Keep the loopback default unless a token protects the API."},
    )
    port: int = field(default=8000, metadata={"help": "TCP port to listen on (0 picks a free port)."})
    token: str | None = field(
        default=None,
        repr=False,  # keep the secret out of logs
        metadata={
            "help": "If set, /v1/* and /metrics require 'Authorization: Bearer <token>'. "
            "Prefer reading it from a file (see read_token_file) over the command line."
        },
    )
    max_prompts: int = field(
        default=64, metadata={"help": "Maximum number of prompts per request (413 above)."}
    )
    max_chars: int = field(default=8000, metadata={"help": "Maximum characters per prompt (413 above)."})
    max_new_tokens_limit: int = field(
        default=512, metadata={"help": "Largest max_new_tokens a generate request may ask for (422 above)."}
    )
    batch_max_size: int = field(
        default=32, metadata={"help": "Most prompts the micro-batcher passes to one backend classify call."}
    )
    batch_max_wait_ms: float = field(
        default=5.0,
        metadata={"help": "Longest a queued prompt waits for others to join its batch, in milliseconds."},
    )
    request_timeout_s: float = field(
        default=60.0,
        metadata={"help": "Per-request limit on waiting for the backend, in seconds (503 when exceeded)."},
    )

    def __post_init__(self) -> None:
        """Check that every setting is in range.

        Raises:
            ValueError: If a setting is out of range.
        """
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_prompts", "max_chars", "max_new_tokens_limit", "batch_max_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.batch_max_wait_ms) and self.batch_max_wait_ms >= 0):
            raise ValueError(f"batch_max_wait_ms must be a finite number >= 0, got {self.batch_max_wait_ms}")
        if not (math.isfinite(self.request_timeout_s) and self.request_timeout_s > 0):
            raise ValueError(f"request_timeout_s must be a finite number > 0, got {self.request_timeout_s}")
        if self.token is not None:
            _check_token(self.token)


class TokenFileError(ValueError):
    """A bearer-token file could not be used."""


def read_token_file(path: str | os.PathLike[str]) -> str:
    """Read a bearer token from a file.

    Surrounding whitespace (such as a trailing newline) is stripped. A warning is logged when the file is
    readable by group or others.

    Args:
        path: Path to a UTF-8 text file holding the token.

    Returns:
        The token.

    Raises:
        TokenFileError: If the file cannot be read, is not UTF-8, is empty, or holds an invalid token.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"token file {p} is not valid UTF-8 text") from exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TokenFileError(f"cannot read token file {p}: {reason}") from exc
    token = text.strip()
    if not token:
        raise TokenFileError(f"token file {p} is empty")
    try:
        _check_token(token)
    except ValueError as exc:
        raise TokenFileError(f"token file {p}: {exc}") from exc
    with contextlib.suppress(OSError):
        if os.name == "posix" and stat.S_IMODE(p.stat().st_mode) & 0o077:
            logger.warning("Token file %s is readable by other users; consider 'chmod 600'.", p)
    return token


# --------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------

LabelKey = tuple[str, ...]


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _format_labels(
    names: Sequence[str], values: Sequence[str], extra: Mapping[str, str] | None = None
) -> str:
    pairs = [f'{n}="{_escape_label_value(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.extend(f'{n}="{_escape_label_value(v)}"' for n, v in extra.items())
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Metric:
    """Base class of the registry's metrics; all state is guarded by the registry's lock."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str], lock: threading.Lock) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self._lock = lock

    def _key(self, labels: Mapping[str, str]) -> LabelKey:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} expects labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def render_samples(self) -> list[str]:
        """Return the sample lines; called with the registry lock held."""
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing counter."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str], lock: threading.Lock) -> None:
        super().__init__(name, help_text, label_names, lock)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to the counter for the given labels.

        Args:
            amount: Non-negative increment; 0 just makes the series visible.
            **labels: Label values.
        """
        if amount < 0:
            raise ValueError("a counter cannot decrease")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """Return the current value for the given labels (0 if never incremented)."""
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def render_samples(self) -> list[str]:
        """Return the sample lines; called with the registry lock held."""
        return [
            f"{self.name}{_format_labels(self.label_names, key)} {_format_value(v)}"
            for key, v in sorted(self._values.items())
        ]


class Histogram(_Metric):
    """A cumulative histogram with fixed upper bounds."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str],
        lock: threading.Lock,
        buckets: Sequence[float],
    ) -> None:
        super().__init__(name, help_text, label_names, lock)
        bounds = sorted(set(float(b) for b in buckets if math.isfinite(b)))
        self.buckets: tuple[float, ...] = (*bounds, math.inf)
        self._counts: dict[LabelKey, list[int]] = {}
        self._sums: dict[LabelKey, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation.

        Args:
            value: The observed value.
            **labels: Label values.
        """
        key = self._key(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * len(self.buckets))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            self._sums[key] = self._sums.get(key, 0.0) + value

    def render_samples(self) -> list[str]:
        """Return the sample lines; called with the registry lock held."""
        lines: list[str] = []
        for key, counts in sorted(self._counts.items()):
            cumulative = 0
            for bound, count in zip(self.buckets, counts, strict=True):
                cumulative += count
                labels = _format_labels(self.label_names, key, {"le": _format_value(bound)})
                lines.append(f"{self.name}_bucket{labels} {cumulative}")
            plain = _format_labels(self.label_names, key)
            lines.append(f"{self.name}_sum{plain} {_format_value(self._sums[key])}")
            lines.append(f"{self.name}_count{plain} {cumulative}")
        return lines


class Summary(_Metric):
    """A summary with count, sum and quantiles over a sliding window of recent observations."""

    kind = "summary"

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str],
        lock: threading.Lock,
        quantiles: Sequence[float] = (0.5, 0.9, 0.99),
        window: int = 1024,
    ) -> None:
        super().__init__(name, help_text, label_names, lock)
        self.quantiles = tuple(quantiles)
        self._window = window
        self._recent: dict[LabelKey, collections.deque[float]] = {}
        self._counts: dict[LabelKey, int] = {}
        self._sums: dict[LabelKey, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation.

        Args:
            value: The observed value.
            **labels: Label values.
        """
        key = self._key(labels)
        with self._lock:
            self._recent.setdefault(key, collections.deque(maxlen=self._window)).append(value)
            self._counts[key] = self._counts.get(key, 0) + 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def render_samples(self) -> list[str]:
        """Return the sample lines; called with the registry lock held."""
        lines: list[str] = []
        for key in sorted(self._counts):
            recent = sorted(self._recent[key])
            for q in self.quantiles:
                idx = min(len(recent) - 1, max(0, math.ceil(q * len(recent)) - 1))
                labels = _format_labels(self.label_names, key, {"quantile": _format_value(q)})
                lines.append(f"{self.name}{labels} {_format_value(recent[idx])}")
            plain = _format_labels(self.label_names, key)
            lines.append(f"{self.name}_sum{plain} {_format_value(self._sums[key])}")
            lines.append(f"{self.name}_count{plain} {self._counts[key]}")
        return lines


class MetricsRegistry:
    """A small thread-safe registry rendering the Prometheus text exposition format (version 0.0.4)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: list[_Metric] = []

    def _add(self, metric: _Metric) -> None:
        with self._lock:
            if any(m.name == metric.name for m in self._metrics):
                raise ValueError(f"duplicate metric {metric.name}")
            self._metrics.append(metric)

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        """Create and register a counter.

        Args:
            name: Metric name (should end in ``_total``).
            help_text: One-line description.
            labels: Label names.

        Returns:
            The counter.
        """
        metric = Counter(name, help_text, labels, self._lock)
        self._add(metric)
        return metric

    def histogram(
        self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Histogram:
        """Create and register a histogram.

        Args:
            name: Metric name.
            help_text: One-line description.
            buckets: Finite upper bounds; ``+Inf`` is added.
            labels: Label names.

        Returns:
            The histogram.
        """
        metric = Histogram(name, help_text, labels, self._lock, buckets)
        self._add(metric)
        return metric

    def summary(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Summary:
        """Create and register a summary (quantiles 0.5, 0.9 and 0.99 over the last 1024 observations).

        Args:
            name: Metric name.
            help_text: One-line description.
            labels: Label names.

        Returns:
            The summary.
        """
        metric = Summary(name, help_text, labels, self._lock)
        self._add(metric)
        return metric

    def render(self) -> str:
        """Render every metric in the Prometheus text format.

        Returns:
            The exposition text, ending in a newline.
        """
        lines: list[str] = []
        with self._lock:
            for metric in self._metrics:
                lines.append(f"# HELP {metric.name} {metric.help.replace(chr(92), chr(92) * 2)}")
                lines.append(f"# TYPE {metric.name} {metric.kind}")
                lines.extend(metric.render_samples())
        return "\n".join(lines) + "\n"


_ENDPOINTS = ("/v1/classify", "/v1/generate", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")
_ERROR_KINDS = ("timeout", "unavailable", "internal")
_OPS = ("classify", "generate")


class ServeMetrics:
    """The service's metrics, owned by one app."""

    def __init__(self, batch_max_size: int) -> None:
        """Create the metrics.

        Args:
            batch_max_size: Largest batch the batcher forms (sets the batch-size buckets).
        """
        self.registry = MetricsRegistry()
        r = self.registry
        self.requests = r.counter(
            "latentguard_http_requests_total",
            "HTTP requests by endpoint and status code.",
            ("endpoint", "code"),
        )
        self.latency = r.summary(
            "latentguard_http_request_duration_seconds", "HTTP request latency in seconds.", ("endpoint",)
        )
        self.prompts = r.counter(
            "latentguard_prompts_classified_total",
            "Prompts the guard classified successfully, by operation.",
            ("op",),
        )
        self.harmful = r.counter(
            "latentguard_prompts_harmful_total", "Prompts the guard judged harmful, by operation.", ("op",)
        )
        self.blocked = r.counter(
            "latentguard_generations_blocked_total", "Generations withheld, by policy.", ("policy",)
        )
        self.backend_errors = r.counter(
            "latentguard_backend_errors_total",
            "Prompts that failed closed because the backend raised or returned an invalid result.",
            ("op",),
        )
        self.errors = r.counter(
            "latentguard_request_errors_total", "Requests that could not be served, by kind.", ("kind",)
        )
        buckets: list[float] = [1.0]
        while buckets[-1] < batch_max_size:
            buckets.append(buckets[-1] * 2)
        self.batch_size = r.histogram(
            "latentguard_classify_batch_size", "Prompts per backend classify batch.", buckets
        )
        self.backend_seconds = r.summary(
            "latentguard_backend_call_duration_seconds", "Duration of backend calls in seconds.", ("op",)
        )
        for op in _OPS:
            self.prompts.inc(0, op=op)
            self.harmful.inc(0, op=op)
            self.backend_errors.inc(0, op=op)
        for kind in _ERROR_KINDS:
            self.errors.inc(0, kind=kind)


# --------------------------------------------------------------------------------------------------------
# API models
# --------------------------------------------------------------------------------------------------------


class _RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifyRequest(_RequestModel):
    """Body of ``POST /v1/classify``."""

    prompts: list[StrictStr] = Field(
        description="Prompts to classify: 1 to max_prompts non-blank strings of at most max_chars characters.",
        examples=[["How do I bake bread?"]],
    )


class GenerateRequest(_RequestModel):
    """Body of ``POST /v1/generate``."""

    prompts: list[StrictStr] = Field(
        description="Prompts to answer: 1 to max_prompts non-blank strings of at most max_chars characters.",
        examples=[["How do I bake bread?"]],
    )
    max_new_tokens: StrictInt = Field(
        default=DEFAULT_MAX_NEW_TOKENS,
        ge=1,
        description="Tokens to generate per prompt, 1 to the server's max_new_tokens_limit "
        f"(default {DEFAULT_MAX_NEW_TOKENS}, capped at that limit).",
    )
    policy: Policy = Field(
        default="block",
        description="What to do with prompts the guard judges harmful: 'block' withholds the response, "
        "'flag' returns it marked as flagged, 'allow' returns it unchanged.",
    )


class ClassifyItem(BaseModel):
    """The guard's verdict on one prompt."""

    harmful: bool = Field(description="Whether the prompt is judged harmful (true when the guard failed).")
    score: float = Field(description="Harmfulness score; 1.0 when the guard failed.")
    layer_scores: dict[int, float] = Field(
        default_factory=dict, description="Per-layer scores keyed by layer index (may be empty)."
    )
    error: str | None = Field(
        default=None, description="Set when the guard failed on this prompt and the verdict failed closed."
    )


class ClassifyResponse(BaseModel):
    """Response of ``POST /v1/classify``."""

    results: list[ClassifyItem] = Field(description="One verdict per prompt, in request order.")


class GenerateItem(BaseModel):
    """The outcome of guarded generation for one prompt."""

    harmful: bool = Field(description="Whether the prompt is judged harmful (true when the guard failed).")
    score: float = Field(description="Harmfulness score; 1.0 when the guard failed.")
    blocked: bool = Field(description="Whether the response was withheld.")
    flagged: bool = Field(description="Whether the response is returned but flagged as harmful.")
    response: str | None = Field(description="The generated response; null when blocked.")
    repaired_response: str | None = Field(
        default=None, description="A safe replacement response, when the guard produced one."
    )
    error: str | None = Field(
        default=None, description="Set when generation or the guard failed; the result is then blocked."
    )


class GenerateResponse(BaseModel):
    """Response of ``POST /v1/generate``."""

    results: list[GenerateItem] = Field(description="One result per prompt, in request order.")


class ErrorResponse(BaseModel):
    """Body of every error response."""

    error: str = Field(description="What went wrong.")
    detail: list[dict[str, Any]] | None = Field(
        default=None, description="Validation errors (location, message, type), when relevant."
    )


class HealthResponse(BaseModel):
    """Body of ``GET /healthz``."""

    status: str = Field(description="Always 'ok' while the process serves requests.")


class ReadyResponse(BaseModel):
    """Body of ``GET /readyz``."""

    status: str = Field(description="'ready' when the service accepts guard requests.")
    backend: dict[str, Any] = Field(description="Backend information: model, guard threshold, layers...")


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed or undecodable body."},
    401: {
        "model": ErrorResponse,
        "description": "Missing or wrong bearer token (only when one is configured).",
    },
    413: {"model": ErrorResponse, "description": "Too many prompts, a prompt too long, or a body too large."},
    422: {"model": ErrorResponse, "description": "Invalid request (types, empty values, ranges, policy)."},
    503: {"model": ErrorResponse, "description": "Timed out or not running; retry later."},
}


# --------------------------------------------------------------------------------------------------------
# Errors and JSON
# --------------------------------------------------------------------------------------------------------


class _ApiError(Exception):
    """An error with a status code and a client-facing message."""

    def __init__(self, status_code: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = dict(headers or {})


class _Unavailable(Exception):
    """The service cannot take work: not started, or shutting down."""


class _BackendContractError(Exception):
    """The backend returned something that does not follow the protocol."""


class _JSONResponse(JSONResponse):
    """JSON response that always produces valid ASCII JSON (lone surrogates escaped, no NaN)."""

    def render(self, content: Any) -> bytes:
        """Serialise ``content``.

        Args:
            content: A JSON-compatible value.

        Returns:
            The encoded body.
        """
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error_response(
    status_code: int,
    message: str,
    detail: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> _JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return _JSONResponse(body, status_code=status_code, headers=dict(headers) if headers else None)


def _sanitize_validation_errors(errors: Iterable[Any]) -> list[dict[str, Any]]:
    """Reduce pydantic errors to short, serialisable ``loc``/``msg``/``type`` entries (never the input)."""
    out: list[dict[str, Any]] = []
    for err in list(errors)[:20]:
        if not isinstance(err, Mapping):
            continue
        loc = [x if isinstance(x, int) else str(x)[:100] for x in err.get("loc", ())][:10]
        out.append({"loc": loc, "msg": str(err.get("msg", ""))[:300], "type": str(err.get("type", ""))[:100]})
    return out


def _json_safe(value: Any, depth: int = 0) -> Any:
    """Turn backend info into something ``json.dumps(allow_nan=False)`` accepts."""
    if depth > 20:
        return repr(value)[:200]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v, depth + 1) for v in value]
    try:
        encoded = jsonable_encoder(value)
    except Exception:
        return repr(value)[:200]
    if isinstance(encoded, (type(None), bool, int, float, str, dict, list)):
        return _json_safe(encoded, depth + 1)
    return repr(value)[:200]


def _short_error(exc: BaseException) -> str:
    """Client-facing description of a backend failure (no internals beyond the exception type)."""
    return f"guard backend error ({type(exc).__name__}); failing closed"


# --------------------------------------------------------------------------------------------------------
# Backend calls (these run in the single backend thread)
# --------------------------------------------------------------------------------------------------------


def _strict_bool(value: Any, what: str) -> bool:
    if value is True or value is False:
        return bool(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        value = item()
        if value is True or value is False:
            return bool(value)
    raise _BackendContractError(f"{what} must be a bool, got {type(value).__name__}")


def _finite_float(value: Any, what: str) -> float:
    if isinstance(value, (str, bytes)):
        raise _BackendContractError(f"{what} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise _BackendContractError(f"{what} must be a number, got {type(value).__name__}") from exc
    if not math.isfinite(number):
        raise _BackendContractError(f"{what} must be finite, got {number}")
    return number


def _optional_str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _BackendContractError(f"{what} must be a str or None, got {type(value).__name__}")


def _checked_classify(result: Any) -> ClassifyItem:
    """Validate one backend classify result."""
    layer_scores = getattr(result, "layer_scores", None) or {}
    if not isinstance(layer_scores, Mapping):
        raise _BackendContractError("layer_scores must be a mapping")
    return ClassifyItem(
        harmful=_strict_bool(result.harmful, "harmful"),
        score=_finite_float(result.score, "score"),
        layer_scores={int(k): _finite_float(v, f"layer_scores[{k}]") for k, v in layer_scores.items()},
    )


def _fail_closed_classify(exc: BaseException) -> ClassifyItem:
    return ClassifyItem(harmful=True, score=1.0, layer_scores={}, error=_short_error(exc))


def _classify_isolating(backend: GuardBackend, prompts: list[str]) -> list[ClassifyItem]:
    """Classify ``prompts``; on failure retry in halves so only the failing prompts fail closed.

    Args:
        backend: The guard backend.
        prompts: Non-empty list of prompts.

    Returns:
        One item per prompt; failed prompts are harmful with score 1.0 and an error.
    """
    try:
        results = list(backend.classify(list(prompts)))
        if len(results) != len(prompts):
            raise _BackendContractError(
                f"classify returned {len(results)} results for {len(prompts)} prompts"
            )
        return [_checked_classify(r) for r in results]
    except Exception as exc:
        if len(prompts) == 1:
            logger.exception("Guard backend failed to classify a prompt; failing closed")
            return [_fail_closed_classify(exc)]
        logger.warning(
            "Guard backend failed on a batch of %d prompts (%s); retrying in halves to isolate the failure",
            len(prompts),
            type(exc).__name__,
        )
    # Retry outside the except block, so that a failure in a half is not chained to this one.
    mid = len(prompts) // 2
    return _classify_isolating(backend, prompts[:mid]) + _classify_isolating(backend, prompts[mid:])


def _checked_generate(result: Any, policy: str) -> GenerateItem:
    """Validate one backend generate result and enforce the ``block`` policy."""
    item = GenerateItem(
        harmful=_strict_bool(result.harmful, "harmful"),
        score=_finite_float(result.score, "score"),
        blocked=_strict_bool(result.blocked, "blocked"),
        flagged=_strict_bool(result.flagged, "flagged"),
        response=_optional_str(result.response, "response"),
        repaired_response=_optional_str(getattr(result, "repaired_response", None), "repaired_response"),
    )
    if policy == "block" and item.harmful and not item.blocked:
        logger.warning("Backend did not block a harmful prompt under policy 'block'; blocking it")
        item = item.model_copy(update={"blocked": True, "response": None})
    if item.blocked and item.response is not None:
        item = item.model_copy(update={"response": None})
    return item


def _fail_closed_generate(exc: BaseException) -> GenerateItem:
    return GenerateItem(
        harmful=True,
        score=1.0,
        blocked=True,
        flagged=False,
        response=None,
        repaired_response=None,
        error=_short_error(exc),
    )


def _generate_checked(
    backend: GuardBackend, prompts: list[str], max_new_tokens: int, policy: str
) -> list[GenerateItem]:
    """Run guarded generation, failing closed for the whole request if the backend misbehaves.

    Args:
        backend: The guard backend.
        prompts: Non-empty list of prompts.
        max_new_tokens: Generation budget per prompt.
        policy: Generation policy.

    Returns:
        One item per prompt.
    """
    try:
        results = list(backend.generate(list(prompts), max_new_tokens, policy))
        if len(results) != len(prompts):
            raise _BackendContractError(
                f"generate returned {len(results)} results for {len(prompts)} prompts"
            )
        return [_checked_generate(r, policy) for r in results]
    except Exception as exc:
        logger.exception("Guard backend failed to generate for %d prompts; failing closed", len(prompts))
        return [_fail_closed_generate(exc) for _ in prompts]


# --------------------------------------------------------------------------------------------------------
# Micro-batcher
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    prompt: str
    future: "asyncio.Future[ClassifyItem]"
    enqueued_at: float


class ClassifyBatcher:
    """Collects classify prompts from concurrent requests into backend batches.

    A batch is dispatched when it holds ``max_size`` prompts or when its oldest prompt has waited
    ``max_wait_s``. Batches run one at a time in the backend executor; prompts arriving meanwhile form the
    next batch. Must be started and stopped from the event loop that serves requests.
    """

    def __init__(
        self,
        backend: GuardBackend,
        executor: ThreadPoolExecutor,
        metrics: ServeMetrics,
        *,
        max_size: int,
        max_wait_s: float,
    ) -> None:
        """Create a stopped batcher.

        Args:
            backend: The guard backend.
            executor: Single-thread executor for backend calls.
            metrics: Metrics to update.
            max_size: Most prompts per backend call.
            max_wait_s: Longest a prompt waits for its batch to fill, in seconds.
        """
        self._backend = backend
        self._executor = executor
        self._metrics = metrics
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        """Whether the batcher accepts prompts."""
        return self._task is not None and not self._task.done() and not self._closed

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="latentguard-classify-batcher")

    async def stop(self) -> None:
        """Stop the worker; queued and in-flight prompts fail with 503."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(_Unavailable("the guard is shutting down"))

    async def classify(self, prompts: Sequence[str]) -> list[ClassifyItem]:
        """Queue prompts and wait for their verdicts.

        Args:
            prompts: Prompts to classify.

        Returns:
            One verdict per prompt, in order.

        Raises:
            _Unavailable: If the batcher is not running or stops before answering.
        """
        if not self.running or self._wakeup is None:
            raise _Unavailable("the guard is not running")
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Pending(p, loop.create_future(), now) for p in prompts]
        self._pending.extend(items)
        self._wakeup.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _next_batch(self) -> list[_Pending]:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while self._pending and self._pending[0].future.done():  # cancelled (timed-out) requests
                self._pending.popleft()
            if self._pending:
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._pending[0].enqueued_at + self._max_wait_s
        while len(self._pending) < self._max_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        batch: list[_Pending] = []
        while self._pending and len(batch) < self._max_size:
            item = self._pending.popleft()
            if not item.future.done():
                batch.append(item)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                self._metrics.batch_size.observe(len(batch))
                started = time.perf_counter()
                outcomes = await loop.run_in_executor(
                    self._executor, _classify_isolating, self._backend, [item.prompt for item in batch]
                )
                self._metrics.backend_seconds.observe(time.perf_counter() - started, op="classify")
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(_Unavailable("the guard is shutting down"))
                raise
            except Exception as exc:
                logger.exception("Classify batch failed outside the backend; failing closed")
                outcomes = [_fail_closed_classify(exc) for _ in batch]
            for item, outcome in zip(batch, outcomes, strict=True):
                if not item.future.done():
                    item.future.set_result(outcome)


# --------------------------------------------------------------------------------------------------------
# ASGI middleware: metrics, authentication, body-size limit
# --------------------------------------------------------------------------------------------------------


def _endpoint_label(path: str) -> str:
    return path if path in _ENDPOINTS else "other"


def _is_protected(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1" or path == "/metrics" or path.startswith("/metrics/")


def _authorization_ok(header: str | None, token: str) -> bool:
    """Check an ``Authorization`` header value against the expected bearer token in constant time."""
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode("utf-8"), token.encode("utf-8"))


def _unauthorized() -> _JSONResponse:
    return _error_response(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


class _GuardMiddleware:
    """Counts and times requests, enforces the bearer token and bounds request bodies."""

    def __init__(
        self, app: ASGIApp, *, metrics: ServeMetrics, token: str | None, max_body_bytes: int
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = _endpoint_label(scope.get("path", ""))
        status: int | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        failed = True
        try:
            await self._handle(scope, receive, send_wrapper)
            failed = False
        finally:
            if status is None:  # no response: an error, or (499, as nginx has it) the client went away
                status = 500 if failed else 499
            self.metrics.requests.inc(endpoint=endpoint, code=str(status))
            self.metrics.latency.observe(time.perf_counter() - started, endpoint=endpoint)

    def _too_large(self) -> _JSONResponse:
        return _error_response(413, f"request body larger than {self.max_body_bytes} bytes")

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(bytes(name).lower(), bytes(value))
        if self.token is not None and _is_protected(scope.get("path", "")):
            auth = headers.get(b"authorization")
            if not _authorization_ok(auth.decode("latin-1") if auth is not None else None, self.token):
                await _unauthorized()(scope, receive, send)
                return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# --------------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------------


class _ServiceState:
    """Per-app mutable state (created in the lifespan)."""

    def __init__(self) -> None:
        self.executor: ThreadPoolExecutor | None = None
        self.batcher: ClassifyBatcher | None = None


def _check_prompts(prompts: list[str], config: ServeConfig) -> list[str]:
    """Enforce the prompt limits.

    Args:
        prompts: Prompts from the request.
        config: Service settings.

    Returns:
        The prompts, unchanged.

    Raises:
        _ApiError: 422 for an empty list or a blank prompt, 413 for too many or too long prompts.
    """
    if not prompts:
        raise _ApiError(422, "prompts must not be empty")
    if len(prompts) > config.max_prompts:
        raise _ApiError(413, f"too many prompts: {len(prompts)} > {config.max_prompts}")
    for i, prompt in enumerate(prompts):
        if len(prompt) > config.max_chars:
            raise _ApiError(413, f"prompt {i} is too long: {len(prompt)} > {config.max_chars} characters")
        if not prompt.strip():
            raise _ApiError(422, f"prompt {i} is empty or whitespace")
    return prompts


def _package_version() -> str:
    try:
        return metadata.version("latentguard")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def create_app(backend: GuardBackend, config: ServeConfig) -> fastapi.FastAPI:
    """Build the FastAPI app serving ``backend``.

    The classify batcher and the backend thread are created when the app starts (ASGI lifespan) and
    stopped when it shuts down; until then the guard endpoints answer 503.

    Args:
        backend: The guard backend.
        config: Service settings.

    Returns:
        The app.
    """
    metrics = ServeMetrics(batch_max_size=config.batch_max_size)
    state = _ServiceState()
    max_body_bytes = 65536 + config.max_prompts * (12 * config.max_chars + 64)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentguard-backend")
        batcher = ClassifyBatcher(
            backend,
            executor,
            metrics,
            max_size=config.batch_max_size,
            max_wait_s=config.batch_max_wait_ms / 1000.0,
        )
        batcher.start()
        state.executor, state.batcher = executor, batcher
        logger.info("Latent Guard service ready")
        try:
            yield
        finally:
            state.batcher = None
            await batcher.stop()
            state.executor = None
            executor.shutdown(wait=False, cancel_futures=True)
            logger.info("Latent Guard service stopped")

    app = FastAPI(
        title="latentguard",
        version=_package_version(),
        description="Latent Guard: classify prompts as harmful from the language model's own hidden states, "
        "and generate under a guard policy.",
        lifespan=lifespan,
        default_response_class=_JSONResponse,
    )
    app.state.latentguard = state
    app.state.metrics = metrics
    app.add_middleware(_GuardMiddleware, metrics=metrics, token=config.token, max_body_bytes=max_body_bytes)

    bearer = HTTPBearer(auto_error=False, description="Required when the server is started with a token.")

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if config.token is None:
            return
        header = f"{credentials.scheme} {credentials.credentials}" if credentials is not None else None
        if not _authorization_ok(header, config.token):
            raise _ApiError(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})

    # ---- exception handlers: every error is JSON ------------------------------------------------------

    async def on_api_error(_request: fastapi.Request, exc: Exception) -> Response:
        assert isinstance(exc, _ApiError)
        return _error_response(exc.status_code, exc.message, headers=exc.headers)

    async def on_validation_error(_request: fastapi.Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        detail = _sanitize_validation_errors(exc.errors())
        if any(d["type"] == "json_invalid" for d in detail):
            return _error_response(400, "malformed JSON body", detail)
        return _error_response(422, "invalid request", detail)

    async def on_http_error(_request: fastapi.Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return _error_response(exc.status_code, message, headers=exc.headers)

    async def on_unavailable(_request: fastapi.Request, exc: Exception) -> Response:
        metrics.errors.inc(kind="unavailable")
        return _error_response(503, str(exc) or "the guard is not available")

    async def on_unexpected(_request: fastapi.Request, exc: Exception) -> Response:
        logger.error("Unhandled error while serving a request", exc_info=exc)
        metrics.errors.inc(kind="internal")
        return _error_response(500, "internal server error")

    app.add_exception_handler(_ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(_Unavailable, on_unavailable)
    app.add_exception_handler(Exception, on_unexpected)

    def timed_out() -> _ApiError:
        metrics.errors.inc(kind="timeout")
        return _ApiError(503, f"request timed out after {config.request_timeout_s:g} s")

    # ---- endpoints -------------------------------------------------------------------------------------

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=_ERROR_RESPONSES,
        dependencies=[Depends(require_token)],
        tags=["guard"],
        summary="Classify prompts as harmful or not",
    )
    async def classify(body: ClassifyRequest) -> ClassifyResponse:
        """Classify prompts; a prompt on which the guard fails is reported harmful (fail closed)."""
        prompts = _check_prompts(body.prompts, config)
        batcher = state.batcher
        if batcher is None or not batcher.running:
            raise _Unavailable("the guard is not running")
        try:
            results = await asyncio.wait_for(batcher.classify(prompts), timeout=config.request_timeout_s)
        except asyncio.TimeoutError:
            raise timed_out() from None
        failed = sum(r.error is not None for r in results)
        metrics.prompts.inc(len(results) - failed, op="classify")
        metrics.harmful.inc(sum(r.harmful and r.error is None for r in results), op="classify")
        metrics.backend_errors.inc(failed, op="classify")
        return ClassifyResponse(results=results)

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses=_ERROR_RESPONSES,
        dependencies=[Depends(require_token)],
        tags=["guard"],
        summary="Generate responses under a guard policy",
    )
    async def generate(body: GenerateRequest) -> GenerateResponse:
        """Generate a response per prompt; harmful prompts are blocked, flagged or allowed per ``policy``."""
        prompts = _check_prompts(body.prompts, config)
        if "max_new_tokens" in body.model_fields_set:
            max_new_tokens = body.max_new_tokens
        else:
            max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, config.max_new_tokens_limit)
        if not 1 <= max_new_tokens <= config.max_new_tokens_limit:
            raise _ApiError(422, f"max_new_tokens must be between 1 and {config.max_new_tokens_limit}")
        executor = state.executor
        if executor is None:
            raise _Unavailable("the guard is not running")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            call = loop.run_in_executor(
                executor, _generate_checked, backend, prompts, max_new_tokens, body.policy
            )
            results = await asyncio.wait_for(call, timeout=config.request_timeout_s)
        except asyncio.TimeoutError:
            raise timed_out() from None
        except RuntimeError as exc:  # executor shut down
            raise _Unavailable("the guard is shutting down") from exc
        metrics.backend_seconds.observe(time.perf_counter() - started, op="generate")
        failed = sum(r.error is not None for r in results)
        metrics.prompts.inc(len(results) - failed, op="generate")
        metrics.harmful.inc(sum(r.harmful and r.error is None for r in results), op="generate")
        metrics.backend_errors.inc(failed, op="generate")
        metrics.blocked.inc(sum(r.blocked for r in results), policy=body.policy)
        return GenerateResponse(results=results)

    @app.get("/healthz", response_model=HealthResponse, tags=["ops"], summary="Liveness")
    async def healthz() -> HealthResponse:
        """Answer 200 while the process serves requests."""
        return HealthResponse(status="ok")

    @app.get(
        "/readyz",
        response_model=ReadyResponse,
        responses={503: _ERROR_RESPONSES[503]},
        tags=["ops"],
        summary="Readiness and backend information",
    )
    async def readyz() -> ReadyResponse:
        """Answer 200 with backend information once the guard accepts requests, else 503."""
        batcher = state.batcher
        if batcher is None or not batcher.running:
            raise _ApiError(503, "the guard is not running")
        try:
            info = backend.info
        except Exception as exc:
            logger.exception("Backend info is unavailable")
            raise _ApiError(503, "backend info is unavailable") from exc
        safe = _json_safe(info)
        return ReadyResponse(status="ready", backend=safe if isinstance(safe, dict) else {"info": safe})

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4."},
            401: _ERROR_RESPONSES[401],
        },
        dependencies=[Depends(require_token)],
        tags=["ops"],
        summary="Prometheus metrics",
    )
    async def prometheus_metrics() -> Response:
        """Render the metrics in the Prometheus text format."""
        return Response(metrics.registry.render(), media_type="text/plain; version=0.0.4")

    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(backend: GuardBackend, config: ServeConfig) -> None:
    """Serve ``backend`` with uvicorn on ``config.host``:``config.port`` until interrupted.

    Args:
        backend: The guard backend.
        config: Service settings.
    """
    if not _is_loopback(config.host) and config.token is None:
        logger.warning(
            "Serving on %s without a bearer token: anyone who can reach this port can use the guard.",
            config.host,
        )
    app = create_app(backend, config)
    logger.info("Serving Latent Guard on http://%s:%d", config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, server_header=False)
