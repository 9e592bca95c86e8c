"""Pydantic models of the compatible wire formats: OpenAI's model list, LiteLLM's and LLM Guard's APIs.

* ``GET /v1/models``: :class:`ModelList` of :class:`ModelCard` (the OpenAI ``list`` / ``model`` objects).
* ``POST /beta/litellm_basic_guardrail_api``: :class:`LiteLLMGuardrailRequest` and
  :class:`LiteLLMGuardrailResponse` (LiteLLM's generic guardrail API; unknown request fields are ignored).
* ``POST /analyze/prompt`` and ``POST /scan/prompt``: :class:`AnalyzePromptRequest`,
  :class:`AnalyzePromptResponse` and :class:`ScanPromptResponse` (LLM Guard's API).

The compatible request bodies ignore unknown fields (the clients send more than the guard reads), unlike
the service's own ``/v1/classify`` and ``/v1/generate`` bodies.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from latentguard.guard.types import Verdict

__all__ = [
    "LATENTGUARD_SCANNER",
    "AnalyzePromptRequest",
    "AnalyzePromptResponse",
    "ChatMessage",
    "LiteLLMGuardrailRequest",
    "LiteLLMGuardrailResponse",
    "LiteLLMVerdicts",
    "ModelCard",
    "ModelList",
    "ScanPromptResponse",
    "VerdictSummary",
]

#: The scanner name under which the Latent Guard reports in LLM Guard's ``scanners``.
LATENTGUARD_SCANNER = "LatentGuard"


class _LenientModel(BaseModel):
    """A request body of a compatible API: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")


# ---- OpenAI ------------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models`` (OpenAI's ``model`` object)."""

    id: str = Field(description="The served model name (ServeConfig.served_model_name).")
    object: Literal["model"] = Field(default="model", description="Always 'model'.")
    created: int = Field(description="When the service started, in Unix seconds.")
    owned_by: str = Field(default="latentguard", description="Always 'latentguard'.")


class ModelList(BaseModel):
    """Body of ``GET /v1/models`` (OpenAI's ``list`` object)."""

    object: Literal["list"] = Field(default="list", description="Always 'list'.")
    data: list[ModelCard] = Field(description="The one model this service serves.")


# ---- LiteLLM generic guardrail API ------------------------------------------------------------------


class ChatMessage(_LenientModel):
    """One OpenAI chat message of ``structured_messages``."""

    role: StrictStr = Field(description="'system', 'user', 'assistant', 'tool' ...")
    content: StrictStr | list[dict[str, Any]] | None = Field(
        default=None,
        description="A string, or a list of content parts whose 'text' parts are read (joined by newlines).",
    )

    def text(self) -> str:
        """The message's text: the string content, or its ``text`` parts joined by newlines.

        Returns:
            The text ("" when there is none).
        """
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = [p.get("text") for p in self.content if p.get("type", "text") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str))


class LiteLLMGuardrailRequest(_LenientModel):
    """Body of ``POST /beta/litellm_basic_guardrail_api`` (LiteLLM's generic guardrail API)."""

    texts: list[StrictStr] | None = Field(
        default=None, description="Texts to check; each is classified on its own.", examples=[["Hi there"]]
    )
    structured_messages: list[ChatMessage] | None = Field(
        default=None,
        description="OpenAI chat messages; read only when 'texts' is absent or empty, and then classified as "
        "one conversation rendered with the model's chat template (the guard reads the last user message in "
        "context; roles other than system, user and assistant are left out).",
    )
    input_type: Literal["request", "response"] = Field(
        default="request",
        description="'request' is classified; 'response' is not scanned (the guard reads requests) and "
        "always answers NONE.",
    )
    litellm_call_id: StrictStr | None = Field(default=None, description="LiteLLM's call id (logged only).")


class VerdictSummary(BaseModel):
    """The guard's verdict on one text, as the compatible APIs report it."""

    harmful: bool = Field(description="Whether the text is judged harmful (true when the guard failed).")
    score: float = Field(description="Harmfulness score; 1.0 when the guard failed.")
    normalized: bool = Field(description="Whether the guard read a normalised form of the text.")
    error: str | None = Field(
        default=None, description="Set when the guard failed and the verdict failed closed."
    )

    @classmethod
    def from_result(cls, verdict: Verdict) -> "VerdictSummary":
        """The summary of a verdict.

        Args:
            verdict: The guard's verdict.

        Returns:
            The summary.
        """
        return cls(
            harmful=verdict.harmful, score=verdict.score, normalized=verdict.normalized, error=verdict.error
        )


class LiteLLMVerdicts(BaseModel):
    """The ``latentguard`` field of a LiteLLM guardrail response."""

    verdicts: list[VerdictSummary] = Field(description="One verdict per classified text, in order.")


class LiteLLMGuardrailResponse(BaseModel):
    """Response of ``POST /beta/litellm_basic_guardrail_api``."""

    action: Literal["BLOCKED", "NONE"] = Field(
        description="'BLOCKED' if any text is judged harmful (or the guard failed), else 'NONE'."
    )
    blocked_reason: str | None = Field(description="Why the input was blocked; null unless BLOCKED.")
    latentguard: LiteLLMVerdicts = Field(description="The guard's verdicts (empty for 'response' input).")


# ---- LLM Guard -----------------------------------------------------------------------------------------


class AnalyzePromptRequest(_LenientModel):
    """Body of ``POST /analyze/prompt`` and ``POST /scan/prompt`` (LLM Guard's API)."""

    prompt: StrictStr = Field(
        description="The prompt to check (non-blank).", examples=["How do I bake bread?"]
    )
    scanners_suppress: list[StrictStr] = Field(
        default_factory=list,
        description=f"Scanners to skip; '{LATENTGUARD_SCANNER}' skips the guard (the prompt is then valid).",
    )


class ScanPromptResponse(BaseModel):
    """Response of ``POST /scan/prompt``."""

    is_valid: bool = Field(description="Whether the prompt is safe (the guard judges it harmless).")
    scanners: dict[str, float] = Field(
        description=f"Risk per scanner, in [-1, 1]: '{LATENTGUARD_SCANNER}' is negative for a harmless and "
        "positive for a harmful verdict (empty when the scanner is suppressed)."
    )


class AnalyzePromptResponse(ScanPromptResponse):
    """Response of ``POST /analyze/prompt``."""

    sanitized_prompt: str = Field(description="The prompt, unchanged (the guard does not rewrite prompts).")
