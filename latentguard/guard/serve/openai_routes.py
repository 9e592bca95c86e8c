"""OpenAI routes: ``POST /v1/chat/completions`` and ``POST /v1/moderations``, with OpenAI-shaped errors.

**Chat completions.** The conversation is answered by guarded generation: the guard reads ``t_inst`` of
the last user message in the same prefill as the answer (:meth:`LatentGuardBackend.chat`). Greedy at
temperature 0 (the default), seeded sampling otherwise. The policy is the server's (``--policy``, default
``block``) unless the body's ``latentguard.policy`` overrides it. Blocked: ``finish_reason:
"content_filter"`` and :data:`~latentguard.guard.types.BLOCKED_REPLY` as the content. Every response has a
``latentguard`` field (harmful, score, threshold ...). With ``stream: true`` the answer comes as
``chat.completion.chunk`` server-sent events ending with ``data: [DONE]``; the verdict is known after the
prefill, so a blocked stream is one ``content_filter`` chunk. At temperature 0 the streamed text equals
the non-streamed one. A configured refusal direction repairs over-refusals (the repaired answer is the
content; streamed in one piece once final).

**Moderations.** Each input is classified through the classify micro-batcher; ``flagged`` is the guard's
verdict and the categories come from the guard's category head (see
:mod:`~latentguard.guard.serve.openai_schemas` for the keys).

**Errors and limits.** Errors on these routes (and ``GET /v1/models``) are ``{"error": {"message", "type",
"param", "code"}}``: 401 for a wrong key, 400 / 413 / 422 for bad input (never a 5xx), 503 when the guard is
not running or timed out. At most ``max_messages`` messages and ``max_conversation_chars`` characters per
conversation, ``max_new_tokens_limit`` tokens per answer. A backend failure fails closed: the chat is
blocked (``content_filter``, ``latentguard.error`` set), a moderation input is flagged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fastapi
from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentguard.conversation import Conversation, ConversationError, as_conversation, prompt_key
from latentguard.generation import Sampling
from latentguard.guard.serve import audit
from latentguard.guard.serve.backend import GuardBackend
from latentguard.guard.serve.chat_backend import ChatCall, ChatInputError, chat_checked, fail_closed_chat
from latentguard.guard.serve.compat import ClassifyFn, backend_threshold, served_model_name
from latentguard.guard.serve.config import DEFAULT_MAX_NEW_TOKENS, ServeConfig
from latentguard.guard.serve.errors import ApiError, ServiceUnavailable
from latentguard.guard.serve.metrics import ServeMetrics
from latentguard.guard.serve.openai_schemas import (
    OPENAI_CATEGORIES,
    OPENAI_CATEGORY_MAP,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessageOut,
    ChunkChoice,
    ChunkDelta,
    GuardVerdict,
    ModerationRequest,
    ModerationResponse,
    ModerationResult,
    OpenAIErrorBody,
    Usage,
)
from latentguard.guard.types import BLOCKED_REPLY, GuardedReply, Policy, Verdict

logger = logging.getLogger(__name__)

__all__ = ["OPENAI_PATHS", "OpenAIErrorMiddleware", "add_openai_routes", "moderation_result", "openai_error"]

#: Paths whose errors take OpenAI's shape.
OPENAI_PATHS = ("/v1/chat/completions", "/v1/moderations", "/v1/models")
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "service_unavailable",
}
_CODES = {401: "invalid_api_key", 413: "request_too_large", 503: "guard_unavailable"}
ExecutorFn = Callable[[], ThreadPoolExecutor | None]


def openai_error(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error body for a status and message."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"message": message, "type": kind, "param": param, "code": _CODES.get(status)}
    return {"error": body}


def _error_documentation(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Bad input (n != 1, non-text moderation input, a conversation the template rejects ...).",
        401: "Missing or wrong API key (the bearer token).",
        413: "Too many messages, too many characters, or a body too large.",
        422: "Invalid request (types, ranges, max_tokens above the limit).",
        503: "The guard is not running, or timed out.",
    }
    return {c: {"model": OpenAIErrorBody, "description": text[c]} for c in codes or tuple(text)}


class OpenAIErrorMiddleware:
    """Rewrites the service's JSON errors (``{"error": "..."}``) into OpenAI's shape on :data:`OPENAI_PATHS`."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap ``app``."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one connection."""
        if scope["type"] != "http" or scope.get("path") not in OPENAI_PATHS:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def wrapped(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and int(message["status"]) >= 400:
                start = message
                return
            if start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await self._send_error(start, b"".join(chunks), send)

        await self.app(scope, receive, wrapped)

    @staticmethod
    async def _send_error(start: Message, body: bytes, send: Send) -> None:
        status = int(start["status"])
        try:
            old = json.loads(body)
        except ValueError:
            old = None
        if isinstance(old, dict) and isinstance(old.get("error"), dict):
            new = old  # already OpenAI-shaped
        else:
            message = old.get("error") if isinstance(old, dict) else None
            new = openai_error(status, message if isinstance(message, str) else "request failed")
            detail = old.get("detail") if isinstance(old, dict) else None
            if isinstance(detail, list) and detail and isinstance(detail[0], dict):
                loc = [str(x) for x in detail[0].get("loc", []) if x != "body"]
                new["error"]["param"] = ".".join(loc) or None
                new["error"]["message"] += f": {detail[0].get('msg', '')}".rstrip(": ")
        payload = json.dumps(new, ensure_ascii=True, allow_nan=False).encode("ascii")
        headers = [
            (k, v)
            for k, v in start.get("headers", [])
            if k.lower() not in (b"content-length", b"content-type")
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _verdict(reply: GuardedReply | Verdict, threshold: float | None, policy: Policy | None) -> GuardVerdict:
    out = GuardVerdict(
        harmful=reply.harmful,
        score=reply.score,
        threshold=threshold,
        policy=str(policy) if policy is not None else None,
        normalized=reply.normalized,
        error=reply.error,
    )
    if isinstance(reply, GuardedReply):
        out.blocked, out.flagged = reply.blocked, reply.flagged
        out.repaired = bool(reply.repaired_response) and not reply.blocked
    return out


def moderation_result(verdict: Verdict, threshold: float | None) -> ModerationResult:
    """The moderation of one input from the guard's verdict (and category scores, when it has a head).

    ``flagged`` is the verdict. A CatQA category is true when the input is flagged and its probability is
    at least 0.5, or it is the most probable one (so a flagged input always has a category). Each OpenAI
    key is the maximum of its CatQA categories (:data:`OPENAI_CATEGORY_MAP`); unmapped keys are 0.0.
    """
    cats = dict(verdict.category_scores)
    top = max(cats, key=lambda k: cats[k]) if cats else None
    on = {k: verdict.harmful and (v >= 0.5 or k == top) for k, v in cats.items()}
    categories: dict[str, bool] = {}
    scores: dict[str, float] = {}
    for key in OPENAI_CATEGORIES:
        mapped = [k for k in OPENAI_CATEGORY_MAP.get(key, ()) if k in cats]
        categories[key] = any(on[k] for k in mapped)
        scores[key] = max((cats[k] for k in mapped), default=0.0)
    for k, v in cats.items():
        categories[f"latentguard/{k}"] = on[k]
        scores[f"latentguard/{k}"] = v
    return ModerationResult(
        flagged=verdict.harmful,
        categories=categories,
        category_scores=scores,
        category_applied_input_types={k: ["text"] for k in categories},
        latentguard=_verdict(verdict, threshold, None),
    )


def _check_conversation(body: ChatCompletionRequest, config: ServeConfig) -> Conversation:
    if body.n not in (None, 1):
        raise ApiError(400, f"n must be 1 (got {body.n}): this server returns one choice")
    if len(body.messages) > config.max_messages:
        raise ApiError(413, f"too many messages: {len(body.messages)} > {config.max_messages}")
    raw = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in body.messages
    ]
    try:
        messages = as_conversation(raw)
    except ConversationError as exc:
        raise ApiError(400, str(exc)) from exc
    total = sum(len(m["content"]) for m in messages)
    if total > config.max_conversation_chars:
        raise ApiError(413, f"conversation too long: {total} > {config.max_conversation_chars} characters")
    return messages


def _sampling(body: ChatCompletionRequest) -> Sampling:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    try:
        return Sampling(
            temperature=float(body.temperature or 0.0),
            top_p=float(body.top_p if body.top_p is not None else 1.0),
            seed=body.seed,
            stop=stop,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc


def _budget(body: ChatCompletionRequest, config: ServeConfig) -> int:
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if asked is None:
        return min(DEFAULT_MAX_NEW_TOKENS, config.max_new_tokens_limit)
    if asked > config.max_new_tokens_limit:
        raise ApiError(422, f"max_tokens must be at most {config.max_new_tokens_limit}, got {asked}")
    return asked


def _sse(chunk: ChatCompletionChunk | str) -> bytes:
    data = (
        chunk
        if isinstance(chunk, str)
        else json.dumps(chunk.model_dump(), ensure_ascii=True, allow_nan=False)
    )
    return f"data: {data}\n\n".encode("ascii")


def add_openai_routes(
    app: FastAPI,
    backend: GuardBackend,
    config: ServeConfig,
    metrics: ServeMetrics,
    *,
    classify: ClassifyFn,
    executor: ExecutorFn,
    require_token: Callable[..., Awaitable[None]],
) -> None:
    """Register ``POST /v1/chat/completions`` and ``POST /v1/moderations``, and OpenAI-shaped errors.

    Args:
        app: The app.
        backend: The guard backend (``chat`` when it has it, else ``generate``).
        config: Service settings (policy, limits, timeout).
        metrics: The app's metrics.
        classify: Classifies prompts like ``POST /v1/classify``.
        executor: Returns the backend thread's executor (``None`` when the service is not running).
        require_token: The bearer-token dependency.
    """
    app.add_middleware(OpenAIErrorMiddleware)
    protected = [Depends(require_token)]

    def meta() -> tuple[str, float | None, str | None]:
        info_fp: str | None = None
        try:
            info = backend.info
            info_fp = (
                str(info.get("fingerprint")) if isinstance(info, dict) and info.get("fingerprint") else None
            )
        except Exception:
            logger.warning("Backend info is unavailable", exc_info=True)
        return served_model_name(backend, config), backend_threshold(backend), info_fp

    def running() -> ThreadPoolExecutor:
        pool = executor()
        if pool is None:
            raise ServiceUnavailable("the guard is not running")
        return pool

    def observe(reply: GuardedReply, policy: Policy, seconds: float) -> None:
        metrics.observe_backend_call("generate", seconds)
        metrics.observe_results("generate", [reply])
        metrics.observe_blocked(policy, int(reply.blocked))

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "With stream: chunks as SSE."},
            **_error_documentation(),
        },
        dependencies=protected,
        tags=["openai"],
        summary="Chat completion under the Latent Guard (OpenAI format)",
    )
    async def chat_completions(body: ChatCompletionRequest, request: fastapi.Request) -> Any:
        """Answer a conversation; the guard reads the last user message in the same prefill."""
        messages = _check_conversation(body, config)
        policy = (
            Policy(body.latentguard.policy) if body.latentguard and body.latentguard.policy else config.policy
        )
        sampling, budget = _sampling(body), _budget(body, config)
        model, threshold, fingerprint = meta()
        # the id carries the X-Request-ID (the audit log's key)
        ident, created = f"chatcmpl-{audit.request_id(request)}", int(time.time())
        pool = running()
        loop = asyncio.get_running_loop()
        if not body.stream:
            started = time.perf_counter()
            call = ChatCall(messages, budget, policy, sampling)
            try:
                reply = await asyncio.wait_for(
                    loop.run_in_executor(pool, chat_checked, backend, call), timeout=config.request_timeout_s
                )
            except asyncio.TimeoutError:
                metrics.count_error("timeout")
                raise ApiError(503, f"request timed out after {config.request_timeout_s:g} s") from None
            except ChatInputError as exc:
                raise ApiError(400, str(exc)) from exc
            except RuntimeError as exc:  # executor shut down
                raise ServiceUnavailable("the guard is shutting down") from exc
            observe(reply, policy, time.perf_counter() - started)
            await audit.record(
                request,
                route="/v1/chat/completions",
                decisions=audit.from_replies([messages], [reply], policy.value),
            )
            content = BLOCKED_REPLY if reply.blocked else (reply.repaired_response or reply.response or "")
            return ChatCompletion(
                id=ident,
                created=created,
                model=model,
                system_fingerprint=fingerprint,
                choices=[
                    ChatChoice(
                        message=ChatMessageOut(
                            content=content, refusal=BLOCKED_REPLY if reply.blocked else None
                        ),
                        finish_reason=reply.finish_reason or "stop",  # type: ignore[arg-type]
                    )
                ],
                usage=Usage(
                    prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens,
                    total_tokens=reply.prompt_tokens + reply.completion_tokens,
                ),
                latentguard=_verdict(reply, threshold, policy),
            )
        return await _stream(
            body,
            messages,
            policy,
            sampling,
            budget,
            (model, threshold, fingerprint),
            ident,
            created,
            pool,
            request,
        )

    async def _stream(
        body: ChatCompletionRequest,
        messages: Conversation,
        policy: Policy,
        sampling: Sampling,
        budget: int,
        about: tuple[str, float | None, str | None],
        ident: str,
        created: int,
        pool: ThreadPoolExecutor,
        request: fastapi.Request,
    ) -> StreamingResponse:
        model, threshold, fingerprint = about
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def push(kind: str, value: Any) -> None:
            if cancelled.is_set():
                raise RuntimeError("the client went away")  # ends generation in the backend thread
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        def work() -> None:
            call = ChatCall(
                messages,
                budget,
                policy,
                sampling,
                on_verdict=lambda v: push("verdict", v),
                on_text=lambda t: push("text", t),
            )
            started = time.perf_counter()
            try:
                reply = chat_checked(backend, call)
            except ChatInputError as exc:
                loop.call_soon_threadsafe(events.put_nowait, ("input_error", exc))
                return
            except BaseException as exc:  # never leave the stream waiting
                reply = fail_closed_chat(exc)
            loop.call_soon_threadsafe(events.put_nowait, ("done", (reply, time.perf_counter() - started)))

        try:
            future = loop.run_in_executor(pool, work)
        except RuntimeError as exc:
            raise ServiceUnavailable("the guard is shutting down") from exc
        deadline = loop.time() + config.request_timeout_s

        async def next_event() -> tuple[str, Any]:
            try:
                return await asyncio.wait_for(events.get(), timeout=max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                cancelled.set()
                metrics.count_error("timeout")
                return "done", (fail_closed_chat(TimeoutError("timed out")), config.request_timeout_s)

        first = await next_event()  # the verdict (or an input error) comes before any text
        if first[0] == "input_error":
            raise ApiError(400, str(first[1]))
        # on record before the first byte: the verdict, or the (failed-closed) reply
        if first[0] == "verdict":
            v = first[1]
            harmful_action = "block" if policy is Policy.BLOCK else "flag"
            decision = audit.Decision(
                prompt=prompt_key(messages),
                score=v.score,
                harmful=v.harmful,
                action=harmful_action if v.harmful else "allow",
                policy=policy.value,
                error=getattr(v, "error", None),
            )
            decisions = [decision]
        else:
            decisions = audit.from_replies([messages], [first[1][0]], policy.value)
        try:
            await audit.record(request, route="/v1/chat/completions", decisions=decisions)
        except BaseException:
            cancelled.set()
            raise

        def chunk(
            delta: ChunkDelta, finish: str | None, verdict: GuardVerdict | None, usage: Usage | None = None
        ) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=ident,
                created=created,
                model=model,
                system_fingerprint=fingerprint,
                choices=[ChunkChoice(delta=delta, finish_reason=finish)],  # type: ignore[arg-type]
                usage=usage,
                latentguard=verdict,
            )

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events_out() -> AsyncIterator[bytes]:
            event = first
            verdict: GuardVerdict | None = None
            started = False
            try:
                while True:
                    kind, value = event
                    if kind == "verdict":
                        verdict = _verdict(value, threshold, policy)
                        verdict.blocked = policy is Policy.BLOCK and value.harmful
                    elif kind == "text":
                        delta = ChunkDelta(role=None if started else "assistant", content=value)
                        started = True
                        yield _sse(chunk(delta, None, verdict))
                    elif kind == "done":
                        reply, seconds = value
                        observe(reply, policy, seconds)
                        final = _verdict(reply, threshold, policy)
                        usage = Usage(
                            prompt_tokens=reply.prompt_tokens,
                            completion_tokens=reply.completion_tokens,
                            total_tokens=reply.prompt_tokens + reply.completion_tokens,
                        )
                        if reply.blocked:
                            delta = ChunkDelta(role="assistant", content=BLOCKED_REPLY, refusal=BLOCKED_REPLY)
                            yield _sse(chunk(delta, "content_filter", final))
                        else:
                            delta = ChunkDelta() if started else ChunkDelta(role="assistant", content="")
                            yield _sse(chunk(delta, reply.finish_reason or "stop", final))
                        if include_usage:
                            last = chunk(ChunkDelta(), None, final, usage)
                            last.choices = []
                            yield _sse(last)
                        yield _sse("[DONE]")
                        return
                    event = await next_event()
            finally:
                if not future.done():
                    cancelled.set()

        return StreamingResponse(
            events_out(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.post(
        "/v1/moderations",
        response_model=ModerationResponse,
        responses=_error_documentation(),
        dependencies=protected,
        tags=["openai"],
        summary="Moderate texts with the Latent Guard (OpenAI format)",
    )
    async def moderations(body: ModerationRequest, request: fastapi.Request) -> ModerationResponse:
        """Flag each input with the guard's verdict; score the CatQA categories from the model's states."""
        texts = body.input if isinstance(body.input, list) else [body.input]
        if not texts:
            raise ApiError(400, "input must not be empty")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ApiError(
                    400, f"input {i} is {type(t).__name__}: only text inputs (strings) are supported"
                )
        model, threshold, _fp = meta()
        verdicts = await classify(texts)
        await audit.record(request, route="/v1/moderations", decisions=audit.from_verdicts(texts, verdicts))
        return ModerationResponse(
            id=f"modr-{audit.request_id(request)}",
            model=body.model or model,
            results=[moderation_result(v, threshold) for v in verdicts],
        )
