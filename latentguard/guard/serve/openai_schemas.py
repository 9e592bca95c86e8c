"""Pydantic models of the OpenAI routes: chat completions (and their stream chunks), moderations, errors.

Request bodies ignore unknown fields (OpenAI clients send more than the guard reads). Every response
carries the Latent Guard's verdict in a ``latentguard`` field; strict OpenAI parsers ignore it.

Moderation categories: the guard's category head scores the 11 CatQA risk categories
(:data:`latentguard.guard.categories.CATEGORY_KEYS`, reported under ``latentguard/<key>``), and OpenAI's 13
category keys are always present, each the maximum of the CatQA categories mapped onto it
(:data:`OPENAI_CATEGORY_MAP`), or ``false`` / ``0.0`` where no CatQA category maps:

===========================  ================================================================
OpenAI key                   CatQA categories
===========================  ================================================================
``harassment``               hate_harass_violence
``hate``                     hate_harass_violence
``illicit``                  illegal_activity, malware_viruses, economic_harm, fraud_deception,
                             privacy_violation_activity
``illicit/violent``          physical_harm
``sexual``                   adult_content
``sexual/minors``            child_abuse
``violence``                 hate_harass_violence, physical_harm
the other six                none (always ``false`` / ``0.0``)
===========================  ================================================================
"""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from latentguard.guard.types import POLICIES

__all__ = [
    "OPENAI_CATEGORIES",
    "OPENAI_CATEGORY_MAP",
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessageIn",
    "ChatMessageOut",
    "ChunkChoice",
    "ChunkDelta",
    "GuardOptions",
    "GuardVerdict",
    "ModerationRequest",
    "ModerationResponse",
    "ModerationResult",
    "OpenAIErrorBody",
    "OpenAIErrorDetail",
    "StreamOptions",
    "Usage",
]

#: OpenAI's 13 moderation category keys (``omni-moderation``), in its order.
OPENAI_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

#: Which CatQA categories (keys of the guard's category head) each OpenAI key is the maximum of.
OPENAI_CATEGORY_MAP: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "harassment": ("hate_harass_violence",),
        "hate": ("hate_harass_violence",),
        "illicit": (
            "illegal_activity",
            "malware_viruses",
            "economic_harm",
            "fraud_deception",
            "privacy_violation_activity",
        ),
        "illicit/violent": ("physical_harm",),
        "sexual": ("adult_content",),
        "sexual/minors": ("child_abuse",),
        "violence": ("hate_harass_violence", "physical_harm"),
    }
)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---- chat completions ---------------------------------------------------------------------------------


class ChatMessageIn(_Lenient):
    """One message of a chat completion request."""

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="'system' (or 'developer', read as 'system'), 'user' or 'assistant'."
    )
    content: StrictStr | list[dict[str, Any]] | None = Field(
        default=None, description="A string, or a list of content parts of type 'text'."
    )


class GuardOptions(_Lenient):
    """The ``latentguard`` field of a request (``extra_body`` in the ``openai`` client)."""

    policy: Literal[POLICIES] | None = Field(  # type: ignore[valid-type]
        default=None, description="Override the server's policy for this request: 'block', 'flag' or 'allow'."
    )


class StreamOptions(_Lenient):
    """``stream_options``."""

    include_usage: StrictBool = Field(default=False, description="Send a last chunk with the usage.")


class ChatCompletionRequest(_Lenient):
    """Body of ``POST /v1/chat/completions`` (OpenAI's schema; unknown fields are ignored)."""

    model: StrictStr | None = Field(default=None, description="Any name; the served model answers.")
    messages: list[ChatMessageIn] = Field(
        description="The conversation; the guard reads its last user message."
    )
    max_tokens: StrictInt | None = Field(default=None, ge=1, description="Generation budget (tokens).")
    max_completion_tokens: StrictInt | None = Field(
        default=None, ge=1, description="Generation budget; wins over max_tokens."
    )
    temperature: StrictFloat | StrictInt | None = Field(
        default=None, ge=0, le=2, description="0 (the default) is greedy; above 0 samples."
    )
    top_p: StrictFloat | StrictInt | None = Field(default=None, gt=0, le=1, description="Nucleus mass.")
    seed: StrictInt | None = Field(
        default=None, description="Sampling seed: the same seed gives the same text."
    )
    stop: StrictStr | list[StrictStr] | None = Field(default=None, description="Up to 4 stop strings.")
    stream: StrictBool | None = Field(
        default=False, description="Send chat.completion.chunk server-sent events."
    )
    stream_options: StreamOptions | None = Field(default=None, description="Streaming options.")
    n: StrictInt | None = Field(default=1, description="Only 1 is supported (anything else is a 400).")
    latentguard: GuardOptions | None = Field(default=None, description="Latent Guard options.")


class GuardVerdict(BaseModel):
    """The Latent Guard's verdict, carried by every chat and moderation response."""

    harmful: bool = Field(description="Whether the guard judges the (last user) input harmful.")
    score: float = Field(description="The guard's score; 1.0 when the guard failed.")
    threshold: float | None = Field(description="The guard's threshold (harmful when score > threshold).")
    policy: str | None = Field(default=None, description="The policy applied (chat completions).")
    blocked: bool = Field(default=False, description="Whether the answer was withheld.")
    flagged: bool = Field(default=False, description="Whether the answer is returned but flagged harmful.")
    repaired: bool = Field(default=False, description="Whether the answer is an over-refusal repair.")
    normalized: bool = Field(default=False, description="Whether the guard read a normalised input.")
    error: str | None = Field(default=None, description="Set when the guard failed and this failed closed.")


class Usage(BaseModel):
    """Token counts."""

    prompt_tokens: int = Field(description="Tokens of the templated conversation.")
    completion_tokens: int = Field(description="Tokens generated for the answer.")
    total_tokens: int = Field(description="Their sum.")


class ChatMessageOut(BaseModel):
    """The assistant's message."""

    role: Literal["assistant"] = "assistant"
    content: str = Field(description="The answer, or a short refusal when blocked.")
    refusal: str | None = Field(default=None, description="The refusal, when the guard blocked the answer.")


class ChatChoice(BaseModel):
    """The one choice of a chat completion."""

    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    """Response of ``POST /v1/chat/completions`` (``object: "chat.completion"``)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage
    latentguard: GuardVerdict


class ChunkDelta(BaseModel):
    """What a chunk adds to the message."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None


class ChunkChoice(BaseModel):
    """The one choice of a chunk."""

    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length", "content_filter"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion (``object: "chat.completion.chunk"``)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None
    latentguard: GuardVerdict | None = None


# ---- moderations ---------------------------------------------------------------------------------------


class ModerationRequest(_Lenient):
    """Body of ``POST /v1/moderations``."""

    input: Any = Field(description="A string or a list of strings (other items are a 400).")
    model: StrictStr | None = Field(default=None, description="Any name; the Latent Guard answers.")


class ModerationResult(BaseModel):
    """The moderation of one input."""

    flagged: bool = Field(description="The Latent Guard's verdict (true when the guard failed).")
    categories: dict[str, bool] = Field(
        description="OpenAI's 13 keys and 'latentguard/<CatQA key>': true when flagged and in the category."
    )
    category_scores: dict[str, float] = Field(description="The same keys, with probabilities in [0, 1].")
    category_applied_input_types: dict[str, list[str]] = Field(description="['text'] for every key.")
    latentguard: GuardVerdict


class ModerationResponse(BaseModel):
    """Response of ``POST /v1/moderations``."""

    id: str
    model: str
    results: list[ModerationResult]


# ---- errors --------------------------------------------------------------------------------------------


class OpenAIErrorDetail(BaseModel):
    """The ``error`` object of an OpenAI-shaped error."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """Body of every error on the OpenAI routes."""

    error: OpenAIErrorDetail
