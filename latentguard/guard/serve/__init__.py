"""HTTP service for a Latent Guard.

This package serves any object that implements :class:`GuardBackend` over a small JSON API:

* ``POST /v1/classify``: is each prompt harmful, according to the model's own hidden states?
* ``POST /v1/generate``: generate a response for each prompt under a guard policy
  (``block``, ``flag`` or ``allow``).
* ``GET /v1/models`` (OpenAI's model list), ``POST /beta/litellm_basic_guardrail_api`` (LiteLLM's generic
  guardrail API), ``POST /analyze/prompt`` and ``POST /scan/prompt`` (LLM Guard's API): the guard in
  other services' wire formats (:mod:`~latentguard.guard.serve.compat`).
* ``POST /v1/chat/completions`` (guarded generation on a conversation, streamed or not) and
  ``POST /v1/moderations`` in OpenAI's schema, with OpenAI-shaped errors
  (:mod:`~latentguard.guard.serve.openai_routes`).
* ``GET /healthz`` (liveness), ``GET /readyz`` (readiness plus backend info) and ``GET /metrics``
  (Prometheus text format).
* ``GET /dashboard`` (with ``audit_db``): a live page over the audit log.

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
* **Decisions on record.** With ``ServeConfig.audit_db`` every decision is committed to the audit log
  before its response is sent (group commits; 503 when the database fails, unless ``audit_failure`` is
  ``open``). Every response carries an ``X-Request-ID``, the id its decisions are recorded under.
* **Optional bearer token** for ``/v1/*``, ``/metrics`` and the compatible routes; ``/healthz`` and
  ``/readyz`` stay open.

Modules, one idea each:

* :mod:`~latentguard.guard.serve.app`: :func:`create_app` (lifespan and routes) and :func:`run`.
* :mod:`~latentguard.guard.serve.config`: :class:`ServeConfig` and :func:`read_token_file`.
* :mod:`~latentguard.guard.serve.schemas`: the pydantic request and response models.
* :mod:`~latentguard.guard.serve.compat`: the OpenAI, LiteLLM and LLM Guard compatible routes;
  :mod:`~latentguard.guard.serve.compat_schemas`: their pydantic models.
* :mod:`~latentguard.guard.serve.openai_routes`: chat completions and moderations;
  :mod:`~latentguard.guard.serve.openai_schemas`: their pydantic models and the moderation categories;
  :mod:`~latentguard.guard.serve.chat_backend`: what chat completions need from a backend, failing closed.
* :mod:`~latentguard.guard.serve.errors`: JSON error responses and exception handlers.
* :mod:`~latentguard.guard.serve.backend`: the :class:`GuardBackend` protocol and fail-closed calls.
* :mod:`~latentguard.guard.serve.batcher`: the classify micro-batcher.
* :mod:`~latentguard.guard.serve.middleware`: request metrics, authentication and the body-size limit.
* :mod:`~latentguard.guard.serve.auth`: bearer-token checking.
* :mod:`~latentguard.guard.serve.metrics`: the Prometheus metrics, one ``prometheus_client`` registry per app.
* :mod:`~latentguard.guard.serve.audit`: recording decisions in the audit log (``await audit.record(request,
  route=..., decisions=...)``, one line per route); :mod:`~latentguard.guard.serve.dashboard`: ``/dashboard``
  (its page, script and style are in ``static/``). The store itself is :mod:`latentguard.audit`.

The result types are :class:`~latentguard.guard.types.Verdict` (also named :data:`ClassifyResult`) and
:class:`~latentguard.guard.types.GuardedReply` (also named :data:`GenerateResult`).
"""

from latentguard.guard.serve.app import create_app, run
from latentguard.guard.serve.backend import GuardBackend
from latentguard.guard.serve.batcher import ClassifyBatcher
from latentguard.guard.serve.config import (
    DEFAULT_MAX_NEW_TOKENS,
    ServeConfig,
    TokenFileError,
    read_token_file,
)
from latentguard.guard.serve.errors import ServiceUnavailable
from latentguard.guard.serve.metrics import ServeMetrics
from latentguard.guard.types import POLICIES, ClassifyResult, GenerateResult, GuardedReply, Policy, Verdict

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "POLICIES",
    "ClassifyBatcher",
    "ClassifyResult",
    "GenerateResult",
    "GuardBackend",
    "GuardedReply",
    "Policy",
    "ServeConfig",
    "ServeMetrics",
    "ServiceUnavailable",
    "TokenFileError",
    "Verdict",
    "create_app",
    "read_token_file",
    "run",
]
