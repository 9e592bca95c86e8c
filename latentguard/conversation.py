"""Conversations: OpenAI-style message lists, checked once and read the same way everywhere.

A conversation is a list of ``{"role": "system" | "user" | "assistant", "content": str}`` messages. A
*prompt* (:data:`Prompt`) is either one user instruction (a ``str``) or such a conversation; positions,
extraction, the guard, guarded generation and the server all take either. The guard reads ``t_inst`` of
the **last user message**, located in the whole conversation as the chat template renders it
(:func:`latentguard.positions.locate`).

``content`` may also be a list of OpenAI content parts; its ``text`` parts are joined by newlines.

Example:
    >>> msgs = as_conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
    ...                         {"role": "user", "content": "Bake bread?"}])
    >>> last_user_index(msgs), last_user_text(msgs)
    (2, 'Bake bread?')
    >>> prompt_key("Bake bread?")
    'Bake bread?'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

__all__ = [
    "ROLES",
    "Conversation",
    "ConversationError",
    "Prompt",
    "as_conversation",
    "as_prompt",
    "is_conversation",
    "last_user_index",
    "last_user_text",
    "map_contents",
    "prompt_key",
    "total_chars",
]

#: The roles a conversation may use.
ROLES: tuple[str, ...] = ("system", "user", "assistant")

#: A checked conversation: plain ``{"role", "content"}`` dicts with string contents.
Conversation: TypeAlias = list[dict[str, str]]
#: One user instruction, or a conversation (see :func:`as_prompt`).
Prompt: TypeAlias = str | Sequence[Mapping[str, Any]]


class ConversationError(ValueError):
    """A message list is not a usable conversation (the message says which message and why)."""


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        parts = []
        for k, part in enumerate(content):
            if not isinstance(part, Mapping):
                raise ConversationError(f"{where}: content part {k} is not an object")
            if part.get("type", "text") != "text":
                raise ConversationError(
                    f"{where}: content part {k} has type {part.get('type')!r}; only text is supported"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise ConversationError(f"{where}: content part {k} has no text")
            parts.append(text)
        return "\n".join(parts)
    raise ConversationError(f"{where}: content must be a string or a list of text parts")


def is_conversation(value: Any) -> bool:
    """Whether ``value`` looks like a message list (a sequence that is not a string)."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def as_conversation(messages: Any, *, require_text: bool = True) -> Conversation:
    """Check a message list and return it as plain ``{"role", "content"}`` dicts.

    Args:
        messages: A sequence of mappings with ``role`` (one of :data:`ROLES`) and ``content`` (a string, or
            a list of text parts). Other keys (``name`` ...) are dropped.
        require_text: Raise when the last user message is empty or whitespace.

    Returns:
        A new list of dicts with string contents.

    Raises:
        ConversationError: If it is not a list of such messages, has no user message, or its last user
            message is empty or whitespace.
    """
    if not is_conversation(messages):
        raise ConversationError("a conversation must be a list of messages")
    out: Conversation = []
    for i, msg in enumerate(messages):
        where = f"message {i}"
        if not isinstance(msg, Mapping):
            raise ConversationError(f"{where} is not an object with 'role' and 'content'")
        role = msg.get("role")
        if role not in ROLES:
            raise ConversationError(f"{where}: role must be one of {ROLES}, got {role!r}")
        content = msg.get("content")
        if content is None:
            content = ""
        out.append({"role": str(role), "content": _content_text(content, where)})
    if not out:
        raise ConversationError("the conversation has no messages")
    index = last_user_index(out)
    if require_text and not out[index]["content"].strip():
        raise ConversationError(f"the last user message (message {index}) is empty or whitespace")
    return out


def last_user_index(messages: Sequence[Mapping[str, Any]]) -> int:
    """Index of the last ``user`` message.

    Raises:
        ConversationError: If there is none.
    """
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    raise ConversationError("the conversation has no user message")


def last_user_text(prompt: Prompt) -> str:
    """The instruction the guard reads: the prompt itself, or the content of the last user message."""
    if isinstance(prompt, str):
        return prompt
    msgs = as_conversation(prompt)
    return msgs[last_user_index(msgs)]["content"]


def as_prompt(value: Any) -> str | Conversation:
    """A prompt, checked: a string as it is, a message list through :func:`as_conversation`.

    Raises:
        ConversationError: For a bad message list.
        TypeError: For anything else.
    """
    if isinstance(value, str):
        return value
    if is_conversation(value):
        return as_conversation(value)
    raise TypeError(f"a prompt is a string or a list of messages, not {type(value).__name__}")


def prompt_key(prompt: Prompt) -> str:
    """A string that identifies a prompt: the instruction itself, or the conversation as compact JSON.

    Used to hash prompts (activation caches) and to store them as text (``ActivationSet.instructions``).
    """
    if isinstance(prompt, str):
        return prompt
    return json.dumps(as_conversation(prompt), ensure_ascii=False, separators=(",", ":"))


def map_contents(messages: Sequence[Mapping[str, Any]], fn: Any) -> Conversation:
    """A copy of a conversation with ``fn`` applied to every message's content."""
    return [{"role": m["role"], "content": fn(m["content"])} for m in as_conversation(messages)]


def total_chars(prompt: Prompt) -> int:
    """Characters of a prompt: its length, or the summed length of the messages' contents."""
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(m["content"]) for m in as_conversation(prompt))
