"""The JSON API's pydantic models: request bodies, responses and the documented error responses.

The result models are the wire form of :mod:`latentguard.guard.types`: :meth:`ClassifyItem.from_result`
and :meth:`GenerateItem.from_result` convert a :class:`~latentguard.guard.types.Verdict` and a
:class:`~latentguard.guard.types.GuardedReply` (a reply's ``refused`` is not sent).
"""

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from latentguard.guard.serve.config import DEFAULT_MAX_NEW_TOKENS
from latentguard.guard.types import POLICIES, GuardedReply, Policy, Verdict

__all__ = [
    "ClassifyItem",
    "ClassifyRequest",
    "ClassifyResponse",
    "ErrorResponse",
    "GenerateItem",
    "GenerateRequest",
    "GenerateResponse",
    "HealthResponse",
    "ReadyResponse",
    "error_responses",
]

if TYPE_CHECKING:
    _PolicyField = Policy
else:
    # A request's ``policy``: validated (and documented in OpenAPI) as ``Literal["block", "flag", "allow"]``,
    # built from Policy (``Literal[("a", "b")]`` is ``Literal["a", "b"]``), then held as a Policy.
    _PolicyField = Annotated[Literal[POLICIES], AfterValidator(Policy)]


class _RequestModel(BaseModel):
    """A request body: unknown fields are rejected."""

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
    policy: _PolicyField = Field(
        default=Policy.BLOCK,
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
    normalized: bool = Field(
        default=False,
        description="Whether the guard read a normalised form of the prompt (zero-width characters removed, "
        "look-alike letters folded, letter spacing collapsed ...).",
    )

    @classmethod
    def from_result(cls, verdict: Verdict) -> "ClassifyItem":
        """The wire form of a verdict.

        Args:
            verdict: The guard's verdict.

        Returns:
            The item.
        """
        return cls(
            harmful=verdict.harmful,
            score=verdict.score,
            layer_scores=dict(verdict.layer_scores),
            error=verdict.error,
            normalized=verdict.normalized,
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
    normalized: bool = Field(
        default=False, description="Whether the prompt was normalised before the guard and the model read it."
    )

    @classmethod
    def from_result(cls, reply: GuardedReply) -> "GenerateItem":
        """The wire form of a guarded reply (without ``refused``).

        Args:
            reply: The outcome of guarded generation.

        Returns:
            The item.
        """
        return cls(
            harmful=reply.harmful,
            score=reply.score,
            blocked=reply.blocked,
            flagged=reply.flagged,
            response=reply.response,
            repaired_response=reply.repaired_response,
            error=reply.error,
            normalized=reply.normalized,
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


_ERROR_DESCRIPTIONS: Mapping[int, str] = MappingProxyType(
    {
        400: "Malformed or undecodable body.",
        401: "Missing or wrong bearer token (only when one is configured).",
        413: "Too many prompts, a prompt too long, or a body too large.",
        422: "Invalid request (types, empty values, ranges, policy).",
        503: "Timed out or not running; retry later.",
    }
)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting error statuses with :class:`ErrorResponse`.

    Args:
        *codes: Status codes among 400, 401, 413, 422 and 503; none means all of them.

    Returns:
        A new ``{code: {"model": ErrorResponse, "description": ...}}`` mapping.
    """
    return {
        code: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[code]}
        for code in (codes or tuple(_ERROR_DESCRIPTIONS))
    }
