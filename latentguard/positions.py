"""Locate ``t_inst`` and ``t_post_inst`` from a model's own chat template.

The prompt is rendered with ``apply_chat_template`` (generation prompt on) and tokenised with
``add_special_tokens=False``, so the token ids are exactly what the model sees. The instruction's
character span inside the rendered text is found by rendering a sentinel instruction first: what
precedes the sentinel is the template's prefix (system prompt included) and what follows it is the
post-instruction suffix. No per-family strings are written anywhere.

A prompt is one instruction or a conversation (:mod:`latentguard.conversation`). In a conversation the
sentinel takes the place of the **last user message**, so the prefix holds the whole history and
``t_inst`` is the last non-whitespace token of that message, as the template renders the full
conversation. A template that rejects the ``system`` role (Gemma, Mistral) gets the system text folded
into the first user turn (:func:`fold_system`).

* ``t_inst``: the token holding the last non-whitespace character of the instruction.
* ``t_post_inst``: the last token of the prompt (end of the post-instruction tokens).
* ``post_inst``: the token indices after ``t_inst`` up to and including ``t_post_inst``.
* ``before_question``: for the reply-inversion form (instruction + appended question), the last
  token before the question starts (steering stops there).

Example:
    >>> from latentguard.positions import locate
    >>> pos = locate(tokenizer, "How do I bake bread?")          # doctest: +SKIP
    >>> pos.tokens[pos.t_inst], pos.tokens[pos.t_post_inst]     # doctest: +SKIP
    ('?', 'Ċ')
    >>> chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
    ...         {"role": "user", "content": "How do I bake bread?"}]
    >>> locate(tokenizer, chat).tokens[-6:]                     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from latentguard.conversation import (
    Conversation,
    ConversationError,
    Prompt,
    as_conversation,
    last_user_index,
)
from latentguard.models import require_chat_template

if TYPE_CHECKING:
    from latentguard.models import LoadedModel

SENTINEL = "LGSENTINELq7x"
POSITION_NAMES = ("t_inst", "t_post_inst")


class PositionError(ValueError):
    """The instruction could not be located in the rendered prompt."""


class EmptyPromptError(PositionError):
    """The instruction is empty or whitespace only."""


class PromptTooLongError(PositionError):
    """The rendered prompt is longer than the model's context."""


@dataclass(frozen=True)
class Positions:
    """Token positions of one templated prompt.

    Attributes:
        input_ids: Token ids of the whole rendered prompt.
        tokens: Their string forms.
        t_inst: Index of the last instruction token.
        t_post_inst: Index of the last prompt token.
        post_inst: Indices after ``t_inst`` up to ``t_post_inst``.
        before_question: Index of the last token before the appended question, if any.
        text: The rendered prompt.
    """

    input_ids: list[int]
    tokens: list[str]
    t_inst: int
    t_post_inst: int
    post_inst: list[int]
    before_question: int | None = None
    text: str = ""
    inst_span: tuple[int, int] = (0, 0)
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def index(self, name: str) -> int:
        """Return the index of a named position (``t_inst``, ``t_post_inst``, ``before_question``)."""
        if name == "t_inst":
            return self.t_inst
        if name == "t_post_inst":
            return self.t_post_inst
        if name == "before_question":
            if self.before_question is None:
                raise PositionError("this prompt has no appended question")
            return self.before_question
        if name.startswith("t_post_inst-"):  # e.g. t_post_inst-1: one before the last
            k = int(name.split("-", 1)[1])
            return max(self.t_inst, self.t_post_inst - k)
        raise PositionError(f"unknown position {name!r}; use t_inst, t_post_inst or before_question")

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON view."""
        out: dict[str, Any] = {
            "tokens": self.tokens,
            "t_inst": self.t_inst,
            "t_post_inst": self.t_post_inst,
            "post_inst": self.post_inst,
        }
        if self.before_question is not None:
            out["before_question"] = self.before_question
        return out

    def as_dict(self) -> dict[str, Any]:
        """All fields as a plain dict."""
        return asdict(self)


def _messages(content: str, system: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    msgs.append({"role": "user", "content": content})
    return msgs


def fold_system(messages: Conversation) -> Conversation:
    """The conversation without system messages: their text opens the first user turn.

    For templates without a system role. The system contents (joined by blank lines) and a blank line
    are put before the first user message's content.

    Raises:
        ConversationError: If there is no user message.
    """
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    first = next((i for i, m in enumerate(rest) if m["role"] == "user"), None)
    if first is None:
        raise ConversationError("the conversation has no user message")
    rest[first]["content"] = f"{system}\n\n{rest[first]['content']}"
    return rest


def render_messages(tokenizer: Any, messages: Conversation) -> str:
    """Render a conversation with the chat template and the generation prompt.

    If the template rejects the conversation and it has a system message, it is rendered again with
    the system text folded into the first user turn (:func:`fold_system`).

    Raises:
        PositionError: If the template rejects the conversation (e.g. roles that do not alternate).
    """
    from jinja2 import TemplateError

    require_chat_template(tokenizer)

    def apply(msgs: Conversation) -> Any:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    try:
        try:
            text = apply(messages)
        except TemplateError:
            if not any(m["role"] == "system" for m in messages):
                raise
            text = apply(fold_system(messages))
    except TemplateError as exc:
        raise PositionError(f"the chat template rejected this conversation: {exc}") from exc
    if not isinstance(text, str):
        raise PositionError("apply_chat_template did not return text")
    return text


def render(tokenizer: Any, content: str, system: str | None = None) -> str:
    """Render one user turn with the tokenizer's chat template and the generation prompt."""
    return render_messages(tokenizer, _messages(content, system))


def conversation_of(prompt: Prompt, system: str | None = None) -> Conversation:
    """The messages a prompt is rendered from.

    An instruction becomes ``[system?, user]``; a conversation is checked, and ``system`` (if given) is
    put first when it has no system message of its own.

    Raises:
        PositionError: If the message list is not a conversation.
    """
    if isinstance(prompt, str):
        return _messages(prompt, system)
    try:
        msgs = as_conversation(prompt, require_text=False)
    except ConversationError as exc:
        raise PositionError(str(exc)) from exc
    if system is not None and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


@dataclass(frozen=True)
class TemplateFrame:
    """The prefix and suffix that a chat template puts around a user instruction."""

    prefix: str
    suffix: str

    @property
    def digest(self) -> str:
        """Stable hash of the frame."""
        return hashlib.sha256((self.prefix + "\x00" + self.suffix).encode()).hexdigest()[:16]


def _frame_of(text: str) -> TemplateFrame:
    count = text.count(SENTINEL)
    if count != 1:
        raise PositionError(f"the chat template repeats the instruction {count} times; cannot locate t_inst")
    i = text.index(SENTINEL)
    return TemplateFrame(prefix=text[:i], suffix=text[i + len(SENTINEL) :])


def template_frame(tokenizer: Any, system: str | None = None) -> TemplateFrame:
    """Find what the chat template writes before and after the instruction, via a sentinel."""
    return _frame_of(render(tokenizer, SENTINEL, system))


def conversation_frame(tokenizer: Any, messages: Conversation) -> TemplateFrame:
    """What the template writes before and after the last user message of ``messages`` (via a sentinel).

    The prefix holds the whole history before that message; the suffix its end and the generation prompt.
    """
    turn = last_user_index(messages)
    probe = [dict(m) for m in messages]
    probe[turn]["content"] = SENTINEL
    return _frame_of(render_messages(tokenizer, probe))


def _token_at_char(offsets: Sequence[tuple[int, int]], char: int) -> int:
    """Index of the token whose span covers ``char`` (the last such, for overlapping byte tokens)."""
    found = -1
    for i, (start, end) in enumerate(offsets):
        if start <= char < end:
            found = i
        elif start > char and found >= 0:
            break
    if found < 0:
        # tokens with empty spans (e.g. merged bytes): take the last token starting at or before char
        for i, (start, _end) in enumerate(offsets):
            if start <= char:
                found = i
    if found < 0:
        raise PositionError(f"no token covers character {char}")
    return found


def _last_non_space(text: str, start: int, end: int) -> int:
    j = end - 1
    while j >= start and text[j].isspace():
        j -= 1
    return j


def locate(
    tokenizer: Any,
    instruction: Prompt,
    *,
    question: str | None = None,
    separator: str = "\n\n",
    system: str | None = None,
    max_length: int | None = None,
    frame: TemplateFrame | None = None,
) -> Positions:
    """Render ``instruction`` with the chat template and locate its positions.

    Args:
        tokenizer: A fast tokenizer with a chat template.
        instruction: The user's instruction, or a conversation (``t_inst`` is then in its last user
            message; see :mod:`latentguard.conversation`).
        question: Optional question appended after the instruction (reply inversion); in a conversation,
            after the last user message.
        separator: Text between the instruction and the question.
        system: Optional system prompt (otherwise the template's default, if it has one); a conversation
            that has a system message keeps its own.
        max_length: Raise :class:`PromptTooLongError` if the prompt has more tokens.
        frame: A precomputed :func:`template_frame` (for speed over many instructions; ignored for a
            conversation, whose frame depends on its history).

    Raises:
        EmptyPromptError: If the instruction is empty or whitespace.
        PromptTooLongError: If the prompt exceeds ``max_length``.
        PositionError: If the instruction cannot be located.
    """
    messages = conversation_of(instruction, system)
    turn = last_user_index(messages)
    user = messages[turn]["content"]
    if not user.strip():
        raise EmptyPromptError("empty instruction: give a non-empty, non-whitespace prompt")
    if not getattr(tokenizer, "is_fast", False):
        raise PositionError("locating positions needs a fast tokenizer (offset mapping)")
    if not isinstance(instruction, str):
        frame = conversation_frame(tokenizer, messages)
    frame = frame or template_frame(tokenizer, system)
    messages[turn]["content"] = user if question is None else f"{user}{separator}{question}"
    text = render_messages(tokenizer, messages)
    if not (text.startswith(frame.prefix) and text.endswith(frame.suffix)) or len(text) < len(
        frame.prefix
    ) + len(frame.suffix):
        raise PositionError("the chat template changed its frame for this instruction; cannot locate t_inst")
    lo, hi = len(frame.prefix), len(text) - len(frame.suffix)
    body = text[lo:hi]
    q_start = hi
    if question is not None:
        k = body.rfind(question.strip())
        if k < 0:
            raise PositionError("the appended question was not found in the rendered prompt")
        q_start = lo + k
        inst_end = _last_non_space(text, lo, q_start)
    else:
        inst_end = _last_non_space(text, lo, hi)
    if inst_end < lo:
        raise EmptyPromptError("empty instruction after the chat template stripped it")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    if not ids:
        raise PositionError("the rendered prompt tokenised to nothing")
    if max_length is not None and len(ids) > max_length:
        raise PromptTooLongError(
            f"prompt has {len(ids)} tokens, more than the model's context of {max_length}"
        )
    t_inst = _token_at_char(offsets, inst_end)
    before_q: int | None = None
    if question is not None:
        # the token just before the one where the question starts (the separator, if it is a token)
        before_q = max(t_inst, _token_at_char(offsets, q_start) - 1)
    t_post = len(ids) - 1
    return Positions(
        input_ids=ids,
        tokens=tokenizer.convert_ids_to_tokens(ids),
        t_inst=t_inst,
        t_post_inst=t_post,
        post_inst=list(range(t_inst + 1, t_post + 1)),
        before_question=before_q,
        text=text,
        inst_span=(lo, inst_end + 1),
    )


def locate_for(
    lm: LoadedModel,
    instructions: Sequence[Prompt],
    *,
    question: str | None = None,
    system: str | None = None,
) -> list[Positions]:
    """:func:`locate_many` with ``lm``'s tokenizer, limited to ``lm``'s context length."""
    return locate_many(
        lm.tokenizer,
        instructions,
        question=question,
        system=system,
        max_length=model_max_length(lm.model, lm.tokenizer),
    )


def locate_many(
    tokenizer: Any,
    instructions: Sequence[Prompt],
    *,
    question: str | None = None,
    separator: str = "\n\n",
    system: str | None = None,
    max_length: int | None = None,
) -> list[Positions]:
    """:func:`locate` for many prompts, rendering the instructions' sentinel frame once."""
    frame = template_frame(tokenizer, system) if any(isinstance(p, str) for p in instructions) else None
    out = []
    for i, inst in enumerate(instructions):
        try:
            out.append(
                locate(
                    tokenizer,
                    inst,
                    question=question,
                    separator=separator,
                    system=system,
                    max_length=max_length,
                    frame=frame,
                )
            )
        except PositionError as exc:
            raise type(exc)(f"prompt #{i}: {exc}") from exc
    return out


def model_max_length(model: Any, tokenizer: Any) -> int | None:
    """The context length from the model config (falls back to the tokenizer's, if sane)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**7:
        return value
    return None
