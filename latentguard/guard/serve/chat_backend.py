"""What ``POST /v1/chat/completions`` needs from a backend (:class:`ChatBackend`), called so that it fails closed.

A backend with a ``chat`` method (:class:`~latentguard.guard.guarded.LatentGuardBackend`) answers a whole
conversation in one prefill and can stream. A backend with only ``generate`` (the plain
:class:`~latentguard.guard.serve.backend.GuardBackend`) still serves chat completions: it is asked for the
last user message, and a stream then carries the answer in one piece.

:func:`chat_checked` runs in the service's backend thread. Input the model cannot take (a conversation the
chat template rejects, a prompt longer than the context) raises :class:`ChatInputError`, which the route
answers with a 400; any other failure, or a malformed result, gives a blocked reply with an ``error``
(fail closed: ``finish_reason: "content_filter"``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Protocol

from latentguard.conversation import Conversation, ConversationError, last_user_text
from latentguard.generation import Sampling
from latentguard.guard.serve.backend import GuardBackend, generate_checked
from latentguard.guard.types import GuardedReply, Policy, Verdict
from latentguard.positions import PositionError

logger = logging.getLogger(__name__)

__all__ = ["ChatBackend", "ChatCall", "ChatInputError", "chat_checked", "fail_closed_chat"]


class ChatBackend(Protocol):
    """A backend that answers a conversation (see :meth:`LatentGuardBackend.chat`)."""

    def chat(
        self,
        messages: Conversation,
        *,
        max_new_tokens: int,
        policy: Policy,
        sampling: Sampling | None = None,
        on_verdict: Callable[[Verdict], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> GuardedReply:
        """Answer ``messages`` under ``policy``; stream the verdict and the text through the callbacks."""
        ...


class ChatInputError(ValueError):
    """The conversation cannot be answered as given (answered 400)."""


@dataclasses.dataclass(frozen=True)
class ChatCall:
    """One chat completion for the backend thread.

    Attributes:
        messages: The conversation.
        max_new_tokens: Generation budget.
        policy: The guard policy.
        sampling: Temperature, top-p, seed and stop strings.
        on_verdict: Streaming: called with the verdict after the prefill.
        on_text: Streaming: called with each piece of the answer.
    """

    messages: Conversation
    max_new_tokens: int
    policy: Policy
    sampling: Sampling
    on_verdict: Callable[[Verdict], None] | None = None
    on_text: Callable[[str], None] | None = None


def fail_closed_chat(exc: BaseException) -> GuardedReply:
    """The reply to a chat the backend failed on: harmful, blocked, with an error."""
    return GuardedReply(
        harmful=True,
        score=1.0,
        blocked=True,
        flagged=False,
        response=None,
        error=f"guard backend error ({type(exc).__name__}); failing closed",
        finish_reason="content_filter",
    )


def _checked(reply: Any, policy: Policy) -> GuardedReply:
    """Validate a chat reply; a harmful reply under ``block`` is blocked whatever the backend said."""
    if not isinstance(reply, GuardedReply):
        raise TypeError(f"chat returned {type(reply).__name__}, not a GuardedReply")
    if not (isinstance(reply.harmful, bool) and isinstance(reply.score, (int, float))):
        raise TypeError("chat returned a reply without a boolean verdict and a numeric score")
    if reply.response is not None and not isinstance(reply.response, str):
        raise TypeError("chat returned a non-text response")
    if policy is Policy.BLOCK and reply.harmful and not reply.blocked:
        logger.warning("Backend did not block a harmful conversation under policy 'block'; blocking it")
        reply = dataclasses.replace(reply, blocked=True)
    if reply.blocked:
        reply = dataclasses.replace(
            reply, response=None, repaired_response=None, finish_reason="content_filter"
        )
    return reply


def _via_generate(backend: GuardBackend, call: ChatCall) -> GuardedReply:
    """A chat answered by ``generate`` on the last user message (backends without ``chat``)."""
    (reply,) = generate_checked(backend, [last_user_text(call.messages)], call.max_new_tokens, call.policy)
    if call.on_verdict is not None:
        call.on_verdict(Verdict(harmful=reply.harmful, score=reply.score, error=reply.error))
    text = reply.repaired_response or reply.response
    if call.on_text is not None and not reply.blocked and text:
        call.on_text(text)
    return dataclasses.replace(reply, finish_reason=reply.finish_reason or "stop")


def chat_checked(backend: GuardBackend | ChatBackend, call: ChatCall) -> GuardedReply:
    """Answer one chat completion, failing closed when the backend misbehaves.

    Args:
        backend: A backend with ``chat`` (preferred) or ``generate``.
        call: The chat.

    Returns:
        The checked reply (blocked, with an ``error``, when the backend failed).

    Raises:
        ChatInputError: If the conversation cannot be rendered or is too long for the model.
    """
    chat = getattr(backend, "chat", None)
    try:
        if not callable(chat):
            return _checked(_via_generate(backend, call), call.policy)  # type: ignore[arg-type]
        reply = chat(
            call.messages,
            max_new_tokens=call.max_new_tokens,
            policy=call.policy,
            sampling=call.sampling,
            on_verdict=call.on_verdict,
            on_text=call.on_text,
        )
        return _checked(reply, call.policy)
    except (PositionError, ConversationError) as exc:
        raise ChatInputError(str(exc)) from exc
    except Exception as exc:
        logger.exception("Guard backend failed on a chat completion; failing closed")
        return fail_closed_chat(exc)
