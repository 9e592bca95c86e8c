"""Settings of the HTTP service, and reading its bearer token from a file."""

import contextlib
import logging
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from latentguard.guard.serve.auth import check_token
from latentguard.guard.types import Policy

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIT_FAILURE_MODES",
    "DEFAULT_MAX_NEW_TOKENS",
    "ServeConfig",
    "TokenFileError",
    "read_token_file",
]

#: What the server does when the audit database fails: answer 503 (closed) or answer anyway (open).
AUDIT_FAILURE_MODES = ("closed", "open")

#: Default ``max_new_tokens`` of ``POST /v1/generate`` (capped by ``ServeConfig.max_new_tokens_limit``).
DEFAULT_MAX_NEW_TOKENS = 128


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
            "help": "If set, /v1/*, /metrics and the compatible APIs (/beta/*, /analyze/*, /scan/*) require "
            "'Authorization: Bearer <token>'. "
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
    served_model_name: str | None = field(
        default=None,
        metadata={
            "help": "Model id listed by GET /v1/models (default: the backend's model spec, from its info's "
            "'model', else 'latentguard')."
        },
    )
    audit_db: str | None = field(
        default=None,
        repr=False,  # a URL may hold a password
        metadata={
            "help": "Audit database URL (sqlite:///path/audit.db, postgresql://user@host/db): every decision "
            "is committed there before it is answered. Default: no audit log."
        },
    )
    audit_store_text: bool = field(
        default=False,
        metadata={"help": "Store the prompt text in the audit log (default: its SHA-256 only)."},
    )
    audit_failure: str = field(
        default="closed",
        metadata={
            "help": "When the audit database fails: 'closed' answers 503, 'open' answers and logs the "
            "decision as lost."
        },
    )

    policy: Policy = field(
        default=Policy.BLOCK,
        metadata={
            "help": "Policy of POST /v1/chat/completions for harmful input: block, flag or allow (a request "
            "may override it with its 'latentguard': {'policy': ...} field)."
        },
    )
    max_messages: int = field(
        default=64, metadata={"help": "Most messages per chat completion conversation (413 above)."}
    )
    max_conversation_chars: int = field(
        default=32000,
        metadata={"help": "Most characters (all messages together) per chat completion (413 above)."},
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
        object.__setattr__(self, "policy", Policy.parse(self.policy))
        names = ("max_prompts", "max_chars", "max_new_tokens_limit", "batch_max_size", "max_messages")
        for name in (*names, "max_conversation_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.batch_max_wait_ms) and self.batch_max_wait_ms >= 0):
            raise ValueError(f"batch_max_wait_ms must be a finite number >= 0, got {self.batch_max_wait_ms}")
        if not (math.isfinite(self.request_timeout_s) and self.request_timeout_s > 0):
            raise ValueError(f"request_timeout_s must be a finite number > 0, got {self.request_timeout_s}")
        if self.token is not None:
            check_token(self.token)
        if self.served_model_name is not None and not self.served_model_name.strip():
            raise ValueError("served_model_name must not be empty or whitespace")
        if self.audit_failure not in AUDIT_FAILURE_MODES:
            raise ValueError(
                f"audit_failure must be one of {AUDIT_FAILURE_MODES}, got {self.audit_failure!r}"
            )
        if self.audit_db is not None and not self.audit_db.strip():
            raise ValueError("audit_db must not be empty")


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
        check_token(token)
    except ValueError as exc:
        raise TokenFileError(f"token file {p}: {exc}") from exc
    with contextlib.suppress(OSError):
        if os.name == "posix" and stat.S_IMODE(p.stat().st_mode) & 0o077:
            logger.warning("Token file %s is readable by other users; consider 'chmod 600'.", p)
    return token
